"""The host cache of the image recipe: everything downloaded or compiled once, outside the repository.

Default ``/var/cache/kestrel-image`` (``KESTREL_IMAGE_CACHE`` or ``--cache`` to move it). Layout:

    debs/                 Debian packages (debootstrap --cache-dir and apt's archive dir)
    wheels/cp311-aarch64/ wheels downloaded from PyPI for CPython 3.11 on aarch64
    wheels/built/         wheels compiled from sdists under emulation (tpm2-pytss, hnswlib), by version
    sdist/                those sdists
    rootfs/               configured base root file systems (tar), keyed by suite, packages and hooks
    kmod/                 kernel module builds (gpio-sim for the lab kernel), by kernel version
    tools/                qemu-aarch64-static (from Debian's qemu-user-static .deb)
    out/                  built images (./dev image-test boots out/qemu-arm64/kestrel-qemu-arm64.img)

Every entry is written under a temporary name and renamed when complete, so an interrupted build
never leaves a half entry that a later build would trust.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cache", "DEFAULT_CACHE"]

DEFAULT_CACHE = Path("/var/cache/kestrel-image")


@dataclass(frozen=True)
class Cache:
    root: Path
    cached_only: bool = False  # build only from what is cached: no downloads, no compiling

    @classmethod
    def from_env(cls, override: Path | None = None, *, cached_only: bool = False) -> Cache:
        root = Path(override or os.environ.get("KESTREL_IMAGE_CACHE") or DEFAULT_CACHE).resolve()
        return cls(root, cached_only)

    def miss(self, what: str) -> None:
        """Called before downloading or compiling ``what``: refused in cached-only mode."""
        if self.cached_only:
            from .steps import BuildError

            raise BuildError(
                f"{what} is not in the cache {self.root}",
                exit_code=75,
                hint="build once with network: ./dev image --board qemu-arm64 (or ./dev image-test)",
            )

    debs = property(lambda self: self.root / "debs")
    wheels = property(lambda self: self.root / "wheels" / "cp311-aarch64")
    built = property(lambda self: self.root / "wheels" / "built")
    sdist = property(lambda self: self.root / "sdist")
    rootfs = property(lambda self: self.root / "rootfs")
    kmod = property(lambda self: self.root / "kmod")
    tools = property(lambda self: self.root / "tools")
    out = property(lambda self: self.root / "out")

    def ensure(self) -> None:
        for d in (self.debs, self.wheels, self.built, self.sdist, self.rootfs, self.kmod, self.tools):
            d.mkdir(parents=True, exist_ok=True)
