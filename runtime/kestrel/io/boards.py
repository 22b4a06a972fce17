"""Board profiles: header pin map, GPIO chip, TPM TCTI, onnxruntime settings, memory budget.

Pure core: :func:`parse_profile` (YAML text in, frozen :class:`BoardProfile` out) and
:func:`detect_board` (model string in, profile name out). Shell: :func:`load_profile`,
which finds the files. The format is specified in docs/board-profiles.md.

Profiles are found in, in order: ``search_paths``, ``$KESTREL_BOARD_PROFILES``
(colon-separated), the package copy (``kestrel/io/board_profiles``, a link to the
repository's ``board_profiles/`` that setuptools copies into the wheel), and the
repository's ``board_profiles/`` beside ``runtime/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .._internal.yamlnode import Fields, Node, load
from ..errors import ConfigError
from .errors import PinConfigError

__all__ = [
    "BoardProfile",
    "PinRef",
    "parse_profile",
    "detect_board",
    "load_profile",
    "profile_dirs",
    "available_profiles",
    "DEFAULT_MODEL_PATH",
]

DEFAULT_MODEL_PATH = "/proc/device-tree/model"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_CHIP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BACKENDS = ("gpiod", "sim")
_TOP_KEYS = {"name", "description", "model_match", "gpio", "tpm", "onnxruntime", "memory_budget_mb", "state_dir"}
_GPIO_KEYS = {"backend", "chips", "lines", "header"}
_ORT_KEYS = {"intra_op_threads", "inter_op_threads", "providers"}
_MAX_PROFILE_BYTES = 256 * 1024


@dataclass(frozen=True)
class PinRef:
    """One GPIO line: chip device name (``gpiochip0``), line offset, the name it was asked by."""

    chip: str
    line: int
    name: str
    chip_label: str | None = None  # expected chip label; the gpiod backend finds the chip by it

    def __str__(self) -> str:
        return f"{self.name} ({self.chip}:{self.line})"


@dataclass(frozen=True)
class BoardProfile:
    name: str
    description: str
    model_match: tuple[str, ...]
    gpio_backend: str
    chips: Mapping[str, str | None]  # chip device name -> expected label
    pins: Mapping[str, PinRef]  # every accepted name (GPIOn, PINn, SoC names) -> line
    tpm_tcti: str | None
    ort_intra_threads: int
    ort_inter_threads: int
    ort_providers: tuple[str, ...]
    memory_budget_mb: int
    state_dir: str | None
    source: str = field(default="<profile>", compare=False)

    def resolve_pin(self, pin: str) -> PinRef:
        """``GPIO17`` / ``PIN11`` / ``gpiochip0:17`` -> :class:`PinRef`; PinConfigError if unknown."""
        ref = self.pins.get(pin) or self.pins.get(pin.upper())
        if ref is not None:
            return ref
        chip, sep, line = pin.rpartition(":")
        if sep and _CHIP_RE.match(chip) and line.isdigit():
            return PinRef(chip=chip, line=int(line), name=pin, chip_label=self.chips.get(chip))
        known = ", ".join(sorted(self.pins)[:8])
        raise PinConfigError(
            f"unknown pin {pin!r} on board {self.name}",
            hint=f"use a header name from {self.source} (e.g. {known}, ...) or 'gpiochipN:LINE'",
        )


# --------------------------------------------------------------------------- pure core


def parse_profile(text: str, *, source: str = "<profile>") -> BoardProfile:
    """Parse and validate one profile. ConfigError names the file, line and key."""
    root = load(text, source=source)
    if root.is_null:
        raise root.error("a board profile must be a YAML mapping")
    doc = Fields(root, _TOP_KEYS)
    name = doc.get("name", Node.as_str)
    if not _NAME_RE.match(name):
        raise doc.node_of("name").error("must be lower-case letters, digits and '-'")
    if not doc.has("gpio"):
        raise doc.node_of("gpio").error("is required")
    gpio = Fields(doc.node_of("gpio"), _GPIO_KEYS)
    backend = gpio.get("backend", Node.as_str, "gpiod", choices=_BACKENDS)
    chips = _parse_chips(gpio)
    pins = _parse_pins(gpio, chips)
    tpm, ort = Fields(doc.node_of("tpm"), {"tcti"}), Fields(doc.node_of("onnxruntime"), _ORT_KEYS)
    return BoardProfile(
        name=name,
        description=doc.get("description", Node.as_str, name),
        model_match=tuple(doc.get("model_match", _strings, [])),
        gpio_backend=backend,
        chips=MappingProxyType(chips),
        pins=MappingProxyType(pins),
        tpm_tcti=tpm.get("tcti", Node.as_str, None),
        ort_intra_threads=ort.get("intra_op_threads", Node.as_int, 1, min=1),
        ort_inter_threads=ort.get("inter_op_threads", Node.as_int, 1, min=1),
        ort_providers=tuple(ort.get("providers", _strings, ["CPUExecutionProvider"])),
        memory_budget_mb=doc.get("memory_budget_mb", Node.as_int, min=16),
        state_dir=doc.get("state_dir", Node.as_str, None),
        source=source,
    )


def detect_board(model: str, profiles: Iterable[BoardProfile]) -> str | None:
    """The profile whose longest ``model_match`` substring occurs in ``model``; None if none."""
    best: tuple[int, str] | None = None
    for p in profiles:
        for m in p.model_match:
            if m and m in model and (best is None or len(m) > best[0]):
                best = (len(m), p.name)
    return best[1] if best else None


def _strings(node: Node) -> list[str]:
    return [item.as_str() for item in node.sequence()]


def _parse_chips(gpio: Fields) -> dict[str, str | None]:
    entries = gpio.get("chips", Node.mapping)
    if not entries:
        raise gpio.node_of("chips").error("at least one chip is required")
    chips: dict[str, str | None] = {}
    for chip, label in entries.items():
        if not _CHIP_RE.match(chip):
            raise label.error("chip name must look like 'gpiochip0'")
        chips[chip] = label.value()
        if chips[chip] is not None and not isinstance(chips[chip], str):
            raise label.error("chip label must be a string or null")
    return chips


def _parse_pins(gpio: Fields, chips: Mapping[str, str | None]) -> dict[str, PinRef]:
    pins: dict[str, PinRef] = {}
    for name, spec in gpio.get("lines", Node.mapping).items():
        if not name:
            raise spec.error("line names must be strings")
        chip, line = next(iter(chips)), spec.value()
        if isinstance(line, str):
            chip, _, line_s = line.rpartition(":")
            if chip not in chips or not line_s.isdigit():
                raise spec.error(f"must be a line number or 'CHIP:LINE' with CHIP one of {list(chips)}")
            line = int(line_s)
        if isinstance(line, bool) or not isinstance(line, int) or not 0 <= line < 1024:
            raise spec.error("line offset must be an integer 0..1023")
        pins[name] = PinRef(chip=chip, line=line, name=name, chip_label=chips[chip])
    header: dict[str, Node] = gpio.get("header", Node.mapping, {})
    for pin, node in header.items():
        if not re.match(r"^PIN\d{1,2}$", pin):
            raise node.error("header pins are named PIN1..PIN40")
        target = node.value()
        if not isinstance(target, str) or target not in pins:
            raise node.error(f"must name a line from gpio.lines, got {target!r}")
        pins[pin] = PinRef(chip=pins[target].chip, line=pins[target].line, name=pin, chip_label=pins[target].chip_label)
    return pins


# --------------------------------------------------------------------------- shell


def profile_dirs(search_paths: Sequence[str | os.PathLike[str]] = ()) -> list[Path]:
    """Directories searched for ``NAME.yaml``, first match wins."""
    dirs = [Path(p) for p in search_paths]
    env = os.environ.get("KESTREL_BOARD_PROFILES")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    dirs.append(here / "board_profiles")  # package copy (wheel) / link to the repo's directory
    if (here.parents[2] / "pyproject.toml").is_file():  # a source checkout without the link
        dirs.append(here.parents[2] / "board_profiles")
    seen: set[Path] = set()
    out = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def _read_profile(path: Path) -> BoardProfile:
    from .._internal.fsutil import read_bytes

    data = read_bytes(path, what="board profile", max_size=_MAX_PROFILE_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("board profile is not UTF-8 text", path=str(path)) from None
    return parse_profile(text, source=str(path))


def available_profiles(*, search_paths: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Path]:
    """Profile name -> file, over all search directories (earlier directories win)."""
    found: dict[str, Path] = {}
    for d in profile_dirs(search_paths):
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def load_profile(
    name: str = "auto",
    *,
    search_paths: Sequence[str | os.PathLike[str]] = (),
    model_path: str | os.PathLike[str] = DEFAULT_MODEL_PATH,
) -> BoardProfile:
    """Load a profile by name, by file path (``./my-board.yaml``), or ``auto``.

    ``auto`` reads ``model_path`` (the device-tree model string) and picks the
    profile whose ``model_match`` fits; with no device tree or no match it is ``sim``.
    """
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return _read_profile(Path(name))
    if name == "auto":
        name = _auto_name(search_paths, model_path)
    if not _NAME_RE.match(name):
        raise ConfigError(f"invalid board name {name!r}", hint="use e.g. rpi4, rpi5, jetson-nano, sim or auto")
    files = available_profiles(search_paths=search_paths)
    if name not in files:
        raise ConfigError(
            f"no board profile named {name!r}",
            hint=f"known boards: {', '.join(sorted(files)) or 'none'}; or pass a path to a profile file",
        )
    profile = _read_profile(files[name])
    if profile.name != name:
        raise ConfigError(
            f"profile file declares name {profile.name!r}, expected {name!r}", path=str(files[name]), key="name"
        )
    return profile


def _auto_name(search_paths: Sequence[str | os.PathLike[str]], model_path: str | os.PathLike[str]) -> str:
    try:
        with open(model_path, "rb") as fh:
            model = fh.read(4096).rstrip(b"\0\n").decode("utf-8", "replace")
    except OSError:
        return "sim"
    profiles = [_read_profile(p) for p in available_profiles(search_paths=search_paths).values()]
    return detect_board(model, profiles) or "sim"
