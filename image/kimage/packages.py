"""The image's package manifest: every Debian package and every wheel in it, with hashes.

Format ``kestrel-image-packages/1`` (docs/image.md), written to ``usr/share/kestrel/packages.json``
in the image and beside it as ``kestrel-BOARD.packages.json``: JSON, sorted keys, one-space indent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .boards import ImageBoard
from .cache import Cache

__all__ = ["write_manifest", "installed_packages", "PACKAGES_FILE"]

PACKAGES_FILE = "usr/share/kestrel/packages.json"
FORMAT = "kestrel-image-packages/1"


def installed_packages(rootfs: Path) -> list[dict[str, str]]:
    """name, version, architecture of each installed package (the rootfs's dpkg status file)."""
    out = []
    for stanza in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        f = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if f.get("Status", "").endswith(" installed"):
            out.append({"package": f["Package"], "version": f["Version"], "architecture": f["Architecture"]})
    return sorted(out, key=lambda p: p["package"])


def _deb_file(p: dict[str, str]) -> str:
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
        deb = cache.debs / _deb_file(p)
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
