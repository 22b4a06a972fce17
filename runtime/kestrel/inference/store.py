"""The model store: verified models installed under ``STATE/models/`` (the I/O shell).

Layout (docs/models.md)::

    STATE/models/<name>/<manifest-sha256[:16]>/   manifest.json + every file it lists (0600)
    STATE/models/<name>/current                   the folder name of the active version

Install copies into a temporary folder, fsyncs, re-measures every file, renames the folder into
place and then atomically replaces ``current``: a crash leaves the old or the new model active.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._internal.fsutil import atomic_write, ensure_private_dir, fsync_dir, read_bytes
from .._internal.paths import StateLayout
from ..errors import DataError, TransportError
from .manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    VerifiedManifest,
    parse_manifest,
    verify_digests,
)

if TYPE_CHECKING:
    from ..ledger.recorder import Recorder

__all__ = ["InstalledModel", "ModelStore", "ModelNotFoundError", "load_model_dir", "hash_file"]

_CHUNK = 1 << 20


class ModelNotFoundError(DataError):
    """No model of that name is installed (or no model folder at that path)."""


@dataclass(frozen=True)
class InstalledModel:
    """A verified model in a folder: its manifest and where its files are."""

    verified: VerifiedManifest
    path: Path

    @property
    def manifest(self) -> Manifest:
        return self.verified.manifest

    def file(self, name: str) -> Path:
        self.manifest.file(name)  # raises if the manifest does not list it
        return self.path / name

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file


def hash_file(path: Path) -> tuple[str, int]:
    """sha256 hex and size of a file, streamed."""
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TransportError(f"cannot read {path}: {exc.strerror or exc}") from None
    return h.hexdigest(), size


def _measure(folder: Path, manifest: Manifest) -> dict[str, tuple[str, int]]:
    measured = {}
    for entry in manifest.files:
        try:
            measured[entry.path] = hash_file(folder / entry.path)
        except FileNotFoundError:
            pass  # verify_digests names the missing file
    return measured


def load_model_dir(folder: str | os.PathLike[str]) -> InstalledModel:
    """Read ``folder/manifest.json``, measure every file it lists and return the verified model."""
    folder = Path(folder)
    if folder.is_file() and folder.name == MANIFEST_NAME:
        folder = folder.parent
    mpath = folder / MANIFEST_NAME
    if not mpath.exists():
        raise ModelNotFoundError(
            f"no {MANIFEST_NAME} in {folder}",
            hint="pass a folder made by `kestrel models build NAME` (models/NAME/build/)",
        )
    manifest = parse_manifest(read_bytes(mpath, what="model manifest"), source=str(mpath))
    return InstalledModel(verified=verify_digests(manifest, _measure(folder, manifest)), path=folder)


class ModelStore:
    """Installed models of one state directory."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = StateLayout(state_dir).models

    def install(self, source: str | os.PathLike[str], *, ledger: Recorder | None = None) -> InstalledModel:
        """Verify the model folder ``source``, copy it in, make it current and record ``model.deployed``."""
        src = load_model_dir(source)
        man = src.manifest
        ensure_private_dir(self.root)
        home = ensure_private_dir(self.root / man.name)
        version_dir = home / man.digest[:16]
        if not version_dir.exists():
            tmp = home / f".tmp-{man.digest[:16]}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(mode=0o700)
            try:
                for name in [MANIFEST_NAME] + [e.path for e in man.files]:
                    _copy_private(src.path / name, tmp / name)
                fsync_dir(tmp)
                # measure the copies, not the source: a bad copy must never become current
                verify_digests(man, _measure(tmp, man))
                os.rename(tmp, version_dir)
                fsync_dir(home)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        atomic_write(home / "current", (version_dir.name + "\n").encode())
        installed = InstalledModel(verified=verify_digests(man, _measure(version_dir, man)), path=version_dir)
        if ledger is not None:
            ledger.append(
                "model.deployed",
                {
                    "name": man.name,
                    "version": man.version,
                    "runtime": man.runtime,
                    "manifest_sha256": man.digest,
                    "files": {e.path: e.sha256 for e in man.files},
                },
            )
        self._prune(home, keep=version_dir.name)
        return installed

    def _prune(self, home: Path, *, keep: str) -> None:
        for child in home.iterdir():
            if child.is_dir() and child.name != keep:
                shutil.rmtree(child, ignore_errors=True)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "current").is_file())

    def get(self, name: str) -> InstalledModel:
        """The current version of ``name``, re-verified against its manifest (catches flash rot)."""
        home = self.root / name
        pointer = home / "current"
        if not pointer.is_file():
            raise ModelNotFoundError(
                f"model {name!r} is not installed in {self.root}",
                hint=f"deploy it: kestrel deploy --model {name}",
            )
        version = read_bytes(pointer, what="model pointer").decode("ascii", "replace").strip()
        if not version or "/" in version or version.startswith("."):
            raise ManifestError(
                f"{pointer}: corrupt pointer {version!r}", hint=f"redeploy: kestrel deploy --model {name}"
            )
        model = load_model_dir(home / version)
        if model.manifest.name != name:
            raise ManifestError(f"{home / version}: manifest names {model.manifest.name!r}, not {name!r}")
        return model

    def list(self) -> list[Manifest]:
        """Manifests of installed models (parsed only: use :meth:`get` to verify)."""
        out = []
        for name in self.names():
            home = self.root / name
            version = (home / "current").read_text().strip()
            mpath = home / version / MANIFEST_NAME
            out.append(parse_manifest(read_bytes(mpath, what="model manifest"), source=str(mpath)))
        return out


def _copy_private(src: Path, dst: Path) -> None:
    try:
        with open(src, "rb") as fin:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
                fout.flush()
                os.fsync(fout.fileno())
    except OSError as exc:
        raise TransportError(f"cannot copy {src} to {dst}: {exc.strerror or exc}") from None
