"""Run arm64 programs of a rootfs on this x86_64 host: proot + qemu-aarch64-static, no binfmt_misc.

binfmt_misc is never registered (shared hosts): proot's ``-q`` runs every arm64 executable of the
rootfs through the user-mode emulator, and ``-r`` makes the rootfs look like ``/`` without chroot or
mounts. qemu-aarch64-static is taken out of Debian's qemu-user-static .deb with ``dpkg-deb -x`` (the
package itself is not installed: its postinst would register binfmt handlers) and kept in the cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from .cache import Cache
from .steps import BuildError, Runner

__all__ = ["Emulator", "qemu_user"]

_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def qemu_user(cache: Cache, runner: Runner) -> Path:
    """The cached qemu-aarch64-static, extracted from Debian's qemu-user-static on first use."""
    target = cache.tools / "qemu-aarch64-static"
    if target.exists() or runner.dry_run:
        return target
    cache.miss("qemu-aarch64-static")
    runner.need_tools("apt-get", "dpkg-deb")
    cache.tools.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kimage-qemu-", dir=cache.tools) as tmp:
        runner.run(["apt-get", "download", "qemu-user-static"], cwd=tmp,
                   what="download Debian's qemu-user-static (for its qemu-aarch64-static only)")
        (deb,) = Path(tmp).glob("qemu-user-static_*.deb")
        runner.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], what="unpack qemu-user-static (not installed)")
        shutil.copy2(f"{tmp}/x/usr/bin/qemu-aarch64-static", f"{target}.tmp")
        os.replace(f"{target}.tmp", target)
    return target


class Emulator:
    """Runs commands inside ``rootfs`` as root under proot + qemu-user (arm64 binaries work)."""

    def __init__(self, rootfs: Path, *, qemu: Path, runner: Runner, binds: Sequence[tuple[Path, str]] = ()) -> None:
        self.rootfs, self.qemu, self.runner, self.binds = rootfs, qemu, runner, tuple(binds)

    def argv(self, cmd: Sequence[str], *, env: dict[str, str] | None = None) -> list[str]:
        # /proc, /sys and /dev are the host's: enough for dpkg, pip and mkinitramfs (nothing is mounted).
        out = ["proot", "-q", str(self.qemu), "-r", str(self.rootfs), "-w", "/",
               "-b", "/dev", "-b", "/proc", "-b", "/sys"]
        for host, guest in self.binds:
            out += ["-b", f"{host}:{guest}"]
        full_env = {"PATH": _PATH, "HOME": "/root", "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
                    **(env or {})}
        return [*out, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in sorted(full_env.items())), *cmd]

    def run(self, cmd: Sequence[str], *, what: str, env: dict[str, str] | None = None) -> None:
        self.runner.need_tools("proot")
        self.runner.run(["nice", "-n", "10", *self.argv(cmd, env=env)], what=what)

    def output(self, cmd: Sequence[str], *, what: str) -> str:
        if self.runner.dry_run:
            self.runner.run(self.argv(cmd), what=what)
            return ""
        proc = subprocess.run(self.argv(cmd), capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"cannot {what}: exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        return proc.stdout
