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
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError
from ._yaml import LineDict, load_yaml
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
    doc = load_yaml(text, source=source)
    if not isinstance(doc, LineDict):
        raise ConfigError("a board profile must be a YAML mapping", path=source, line=1)
    v = _Validator(source)
    for key in doc:
        if key not in _TOP_KEYS:
            v.fail(doc, key, f"unknown key (expected one of: {', '.join(sorted(_TOP_KEYS))})")
    name = v.string(doc, "name")
    if not _NAME_RE.match(name):
        v.fail(doc, "name", "must be lower-case letters, digits and '-'")
    gpio = v.mapping(doc, "gpio")
    backend = v.string(gpio, "backend", default="gpiod")
    if backend not in _BACKENDS:
        v.fail(gpio, "backend", f"must be one of {', '.join(_BACKENDS)}")
    chips = _parse_chips(v, gpio)
    default_chip = next(iter(chips))
    pins = _parse_pins(v, gpio, chips, default_chip)
    tpm = v.mapping(doc, "tpm", default=LineDict())
    ort = v.mapping(doc, "onnxruntime", default=LineDict())
    providers = v.string_list(ort, "providers", default=["CPUExecutionProvider"])
    return BoardProfile(
        name=name,
        description=v.string(doc, "description", default=name),
        model_match=tuple(v.string_list(doc, "model_match", default=[])),
        gpio_backend=backend,
        chips=MappingProxyType(chips),
        pins=MappingProxyType(pins),
        tpm_tcti=v.string(tpm, "tcti", default=None, nullable=True),
        ort_intra_threads=v.integer(ort, "intra_op_threads", default=1, minimum=1),
        ort_inter_threads=v.integer(ort, "inter_op_threads", default=1, minimum=1),
        ort_providers=tuple(providers),
        memory_budget_mb=v.integer(doc, "memory_budget_mb", minimum=16),
        state_dir=v.string(doc, "state_dir", default=None, nullable=True),
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


def _parse_chips(v: "_Validator", gpio: LineDict) -> dict[str, str | None]:
    raw = v.mapping(gpio, "chips")
    if not raw:
        v.fail(gpio, "chips", "at least one chip is required")
    chips: dict[str, str | None] = {}
    for chip, label in raw.items():
        if not isinstance(chip, str) or not _CHIP_RE.match(chip):
            v.fail(raw, chip, "chip name must look like 'gpiochip0'")
        if label is not None and not isinstance(label, str):
            v.fail(raw, chip, "chip label must be a string or null")
        chips[chip] = label
    return chips


def _parse_pins(v: "_Validator", gpio: LineDict, chips: Mapping[str, str | None], default_chip: str) -> dict:
    lines = v.mapping(gpio, "lines")
    pins: dict[str, PinRef] = {}
    for name, spec in lines.items():
        if not isinstance(name, str) or not name:
            v.fail(lines, name, "line names must be strings")
        chip, line = default_chip, spec
        if isinstance(spec, str):
            chip, _, line_s = spec.rpartition(":")
            if chip not in chips or not line_s.isdigit():
                v.fail(lines, name, f"must be a line number or 'CHIP:LINE' with CHIP one of {list(chips)}")
            line = int(line_s)
        if isinstance(line, bool) or not isinstance(line, int) or not 0 <= line < 1024:
            v.fail(lines, name, "line offset must be an integer 0..1023")
        pins[name] = PinRef(chip=chip, line=line, name=name, chip_label=chips[chip])
    header = v.mapping(gpio, "header", default=LineDict())
    for pin, target in header.items():
        if not isinstance(pin, str) or not re.match(r"^PIN\d{1,2}$", pin):
            v.fail(header, pin, "header pins are named PIN1..PIN40")
        if not isinstance(target, str) or target not in pins:
            v.fail(header, pin, f"must name a line from gpio.lines, got {target!r}")
        pins[pin] = PinRef(chip=pins[target].chip, line=pins[target].line, name=pin, chip_label=pins[target].chip_label)
    return pins


class _Validator:
    """Typed getters that raise ConfigError(path, line, key)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, d: LineDict, key: Any, message: str) -> None:
        line = d.lines.get(key, d.line) if isinstance(d, LineDict) else None
        raise ConfigError(message, path=self.source, line=line, key=str(key))

    def _get(self, d: LineDict, key: str, default: Any) -> Any:
        if key in d:
            return d[key]
        if default is _REQUIRED:
            raise ConfigError("missing required key", path=self.source, line=d.line or None, key=key)
        return default

    def string(self, d: LineDict, key: str, *, default: Any = None, nullable: bool = False) -> Any:
        val = self._get(d, key, _REQUIRED if default is None and not nullable else default)
        if val is None and nullable:
            return None
        if not isinstance(val, str) or not val:
            self.fail(d, key, "must be a non-empty string")
        return val

    def integer(self, d: LineDict, key: str, *, default: Any = None, minimum: int = 0) -> int:
        val = self._get(d, key, _REQUIRED if default is None else default)
        if isinstance(val, bool) or not isinstance(val, int) or val < minimum:
            self.fail(d, key, f"must be an integer >= {minimum}")
        return val

    def mapping(self, d: LineDict, key: str, *, default: Any = None) -> LineDict:
        val = self._get(d, key, _REQUIRED if default is None else default)
        if not isinstance(val, LineDict):
            self.fail(d, key, "must be a mapping")
        return val

    def string_list(self, d: LineDict, key: str, *, default: Sequence[str]) -> list[str]:
        val = self._get(d, key, list(default))
        if not isinstance(val, list) or not all(isinstance(x, str) and x for x in val):
            self.fail(d, key, "must be a list of strings")
        return val


_REQUIRED = object()


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
        raise ConfigError(f"profile file declares name {profile.name!r}, expected {name!r}", path=str(files[name]), key="name")
    return profile


def _auto_name(search_paths: Sequence[str | os.PathLike[str]], model_path: str | os.PathLike[str]) -> str:
    try:
        with open(model_path, "rb") as fh:
            model = fh.read(4096).rstrip(b"\0\n").decode("utf-8", "replace")
    except OSError:
        return "sim"
    profiles = [_read_profile(p) for p in available_profiles(search_paths=search_paths).values()]
    return detect_board(model, profiles) or "sim"
