"""The image's package manifest: every Debian package and every wheel in it, with hashes.

Format ``kestrel-image-packages/1`` (docs/image.md), written to ``usr/share/kestrel/packages.json``
in the image and beside it as ``kestrel-BOARD.packages.json``: JSON, sorted keys, one-space indent.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .boards import ImageBoard
from .cache import Cache

__all__ = [
    "PACKAGES_FILE",
    "Update",
    "compare_versions",
    "deb_file",
    "installed_packages",
    "pending_updates",
    "read_index",
    "stanzas",
    "write_manifest",
]

PACKAGES_FILE = "usr/share/kestrel/packages.json"
FORMAT = "kestrel-image-packages/1"


def stanzas(text: str) -> list[dict[str, str]]:
    """The fields of each stanza of a dpkg status file or an apt Packages index (continuation lines dropped)."""
    out = []
    for stanza in text.split("\n\n"):
        f = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] not in " \t")
        if f:
            out.append(f)
    return out


def _installed(status: str) -> list[dict[str, str]]:
    return [
        {"package": f["Package"], "version": f["Version"], "architecture": f["Architecture"]}
        for f in stanzas(status)
        if f.get("Status", "").endswith(" installed")
    ]


def installed_packages(rootfs: Path) -> list[dict[str, str]]:
    """name, version, architecture of each installed package (the rootfs's dpkg status file)."""
    return sorted(_installed((rootfs / "var/lib/dpkg/status").read_text()), key=lambda p: p["package"])


def _order(c: str) -> int:
    """dpkg's character order in a version's non-digit part: ~ first, then the end, letters, the rest."""
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """Debian version order (as ``dpkg --compare-versions``): negative, 0 or positive."""
    (ea, ua, ra), (eb, ub, rb) = _split(a), _split(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


@dataclass(frozen=True)
class Update:
    package: str
    architecture: str
    installed: str
    candidate: str

    @property
    def spec(self) -> str:
        """apt-get's ``name=version`` for exactly this candidate (the image's packages are arm64 or all)."""
        return f"{self.package}={self.candidate}"


def pending_updates(status: str, index: str, *, hold: Iterable[str] = ()) -> list[Update]:
    """The installed packages of a dpkg ``status`` with a newer version in a Packages ``index`` (the
    newest one, same architecture), sorted by name. Packages whose names start with a prefix in
    ``hold`` are left as they are. Pure: text in, no I/O."""
    held = tuple(hold)
    newest: dict[tuple[str, str], str] = {}
    for f in stanzas(index):
        if "Package" not in f or "Version" not in f:
            continue
        key = (f["Package"], f.get("Architecture", ""))
        if key not in newest or compare_versions(f["Version"], newest[key]) > 0:
            newest[key] = f["Version"]
    out = []
    for p in _installed(status):
        if held and p["package"].startswith(held):
            continue
        candidate = newest.get((p["package"], p["architecture"]))
        if candidate is not None and compare_versions(candidate, p["version"]) > 0:
            out.append(Update(p["package"], p["architecture"], p["version"], candidate))
    return sorted(out, key=lambda u: (u.package, u.architecture))


def read_index(lists: Path, suites: Iterable[str]) -> str:
    """The Packages indexes of ``suites`` in an apt lists directory, decompressed (apt-helper), joined."""
    texts = []
    for suite in suites:
        for f in sorted(lists.glob(f"*_dists_{suite}_*_Packages*")):
            raw = subprocess.run(
                ["/usr/lib/apt/apt-helper", "cat-file", str(f)], capture_output=True, text=True, check=True
            ).stdout
            texts.append(raw.strip("\n"))
    return "\n\n".join(texts) + "\n"


def deb_file(p: dict[str, str]) -> str:
    """The file name apt and debootstrap give a package's .deb (an epoch's colon as %3a)."""
    return f"{p['package']}_{p['version'].replace(':', '%3a')}_{p['architecture']}.deb"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _installed_wheels(rootfs: Path, wheel_dirs: tuple[Path, ...]) -> list[dict[str, str]]:
    """The wheels pip installed (its --report), each with the SHA-256 of the file it came from."""
    report = json.loads((rootfs / "opt/kestrel/pip-report.json").read_text())
    out = []
    for item in report["install"]:
        name = item["download_info"]["url"].rsplit("/", 1)[-1]
        path = next((d / name for d in wheel_dirs if (d / name).exists()), None)
        if path is None:
            path = rootfs / "opt/kestrel/wheels" / name
        out.append(
            {
                "name": item["metadata"]["name"],
                "version": item["metadata"]["version"],
                "file": name,
                "sha256": _sha256(path) if path.exists() else None,
            }
        )
    return sorted(out, key=lambda w: w["name"].lower())


def write_manifest(rootfs: Path, out: Path, *, board: ImageBoard, cache: Cache, wheel_dirs: tuple[Path, ...]) -> dict:
    debs = []
    for p in installed_packages(rootfs):
        deb = cache.debs / deb_file(p)
        debs.append({**p, "sha256": _sha256(deb) if deb.exists() else None})
    modules = sorted((rootfs / "lib/modules").glob("*/extra/*.ko"))
    doc = {
        "format": FORMAT,
        "board": board.name,
        "debian": debs,
        "wheels": _installed_wheels(rootfs, wheel_dirs),
        "modules": [{"path": m.relative_to(rootfs).as_posix(), "sha256": _sha256(m)} for m in modules],
    }
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    target = rootfs / PACKAGES_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    (out / f"kestrel-{board.name}.packages.json").write_text(text)
    return doc
