"""Run arm64 programs of a rootfs on this x86_64 host: proot + qemu-aarch64-static, no binfmt_misc.

binfmt_misc is never registered (shared hosts): proot's ``-q`` runs every arm64 executable of the
rootfs through the user-mode emulator, and ``-r`` makes the rootfs look like ``/`` without chroot or
mounts. qemu-aarch64-static is taken out of Debian's qemu-user-static .deb with ``dpkg-deb -x`` (the
package itself is not installed: its postinst would register binfmt handlers) and kept in the cache.

It is Debian 11's (qemu 5.2, linked statically with glibc 2.31), not bookworm's (qemu 7.2, glibc
2.36): glibc 2.33 and later implement ``faccessat()`` with the ``faccessat2`` system call, which
proot 5.3 does not know, so it passes the path through untranslated and every ``access()`` of an
arm64 program looks at the host's file system instead of the rootfs: gcc cannot find ``cc1``,
``[ -x ... ]`` in maintainer scripts is false (the kernel's postinst skipped ``update-initramfs``).
``statx`` has the same flaw in both, so ``ls`` and ``stat`` inside the rootfs are unreliable: the
recipe does not use them there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .cache import Cache
from .steps import BuildError, Runner

__all__ = ["Emulator", "qemu_user"]

_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
QEMU_SUITE = "bullseye"  # see the module docstring
QEMU_FILE = f"qemu-aarch64-static-{QEMU_SUITE}"


def qemu_user(cache: Cache, runner: Runner) -> Path:
    """The cached qemu-aarch64-static, extracted from Debian's qemu-user-static on first use."""
    target = cache.tools / QEMU_FILE
    if target.exists() or runner.dry_run:
        return target
    cache.miss("qemu-aarch64-static")
    runner.need_tools("apt-get", "dpkg-deb")
    cache.tools.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kimage-qemu-", dir=cache.tools) as tmp:
        apt = private_apt(
            cache,
            runner,
            name=f"apt-{QEMU_SUITE}",
            arch="amd64",
            sources=f"deb http://deb.debian.org/debian {QEMU_SUITE} main\n",
        )
        runner.run(
            ["apt-get", *apt, "download", "qemu-user-static"],
            cwd=tmp,
            what=f"download Debian {QEMU_SUITE}'s qemu-user-static (for its qemu-aarch64-static only)",
        )
        (deb,) = Path(tmp).glob("qemu-user-static_*.deb")
        runner.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], what="unpack qemu-user-static (not installed)")
        shutil.copy2(f"{tmp}/x/usr/bin/qemu-aarch64-static", f"{target}.tmp")
        os.replace(f"{target}.tmp", target)
    return target


def private_apt(cache: Cache, runner: Runner, *, name: str, arch: str, sources: str) -> list[str]:
    """apt-get options for a private package index in the cache (the host's apt is left untouched).
    Updated (signatures checked by the host's apt), except with --cached-only, which takes the
    cached index as it is."""
    d = cache.root / name
    if not runner.dry_run:  # a dry run writes nothing
        for sub in ("lists/partial", "archives/partial", "etc"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "etc/sources.list").write_text(sources)
        (d / "status").touch()
    opts = [
        "-o",
        f"Dir::Etc::SourceList={d}/etc/sources.list",
        "-o",
        "Dir::Etc::SourceParts=/nonexistent",
        "-o",
        f"Dir::State::Lists={d}/lists",
        "-o",
        f"Dir::State::status={d}/status",
        "-o",
        f"Dir::Cache={d}",
        "-o",
        f"APT::Architecture={arch}",
        "-o",
        f"APT::Architectures::={arch}",
        "-o",
        "Debug::NoLocking=1",
    ]
    if cache.cached_only and any((d / "lists").glob("*_Packages*")):
        runner.say(f"private package index {name} from the cache (--cached-only: not updated)")
        return opts
    cache.miss(f"the package index {name}")
    runner.run(["apt-get", *opts, "update", "-qq"], what=f"update the private package index {name}")
    return opts


class Emulator:
    """Runs commands inside ``rootfs`` as root under proot + qemu-user (arm64 binaries work)."""

    def __init__(self, rootfs: Path, *, qemu: Path, runner: Runner, binds: Sequence[tuple[Path, str]] = ()) -> None:
        self.rootfs, self.qemu, self.runner, self.binds = rootfs, qemu, runner, tuple(binds)

    def argv(self, cmd: Sequence[str], *, env: dict[str, str] | None = None) -> list[str]:
        # /proc, /sys and /dev are the host's: enough for dpkg, pip and mkinitramfs. We run as root and
        # proot passes mount(2)/umount(2) to the kernel, so everything runs in a private mount namespace:
        # debootstrap's `umount /dev/pts` on exit once unmounted the host's (every pty failed, ENODEV).
        out = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "proot",
            "-q",
            str(self.qemu),
            "-r",
            str(self.rootfs),
            "-w",
            "/",
            "-b",
            "/dev",
            "-b",
            "/proc",
            "-b",
            "/sys",
        ]
        for host, guest in self.binds:
            out += ["-b", f"{host}:{guest}"]
        full_env = {
            "PATH": _PATH,
            "HOME": "/root",
            "LC_ALL": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
            **(env or {}),
        }
        return [*out, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in sorted(full_env.items())), *cmd]

    def run(self, cmd: Sequence[str], *, what: str, env: dict[str, str] | None = None) -> None:
        self.runner.need_tools("proot", "unshare")
        self.runner.run(["nice", "-n", "10", *self.argv(cmd, env=env)], what=what)

    def output(self, cmd: Sequence[str], *, what: str) -> str:
        if self.runner.dry_run:
            self.runner.run(self.argv(cmd), what=what)
            return ""
        proc = subprocess.run(self.argv(cmd), capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"cannot {what}: exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        return proc.stdout


_STUB = "#!/bin/sh\n# kestrel-image: mount/umount are no-ops while this rootfs is configured under proot\nexit 0\n"


@contextlib.contextmanager
def no_mounts(rootfs: Path) -> Iterator[None]:
    """Make ``mount`` and ``umount`` no-ops inside ``rootfs`` for the duration (restored after).

    Under proot the guest's /dev, /proc and /sys are the host's, and we run as root: debootstrap's
    second stage registers ``umount /dev/pts``, ``/dev/shm``, ``/proc`` and ``/sys`` on exit, which
    unmounted the *host's* /dev/pts (seen on 2026-12-05: every pty on the machine failed with ENODEV).
    With the binaries stubbed, nothing the configuration scripts do can touch the host's mounts.
    """
    saved = []
    seen: set[Path] = set()
    try:
        for rel in ("usr/bin/mount", "usr/bin/umount", "bin/mount", "bin/umount"):
            path = rootfs / rel
            if path.is_symlink() or not path.is_file() or path.resolve() in seen:
                continue  # merged /usr: bin/mount is usr/bin/mount
            seen.add(path.resolve())
            real = path.with_name(path.name + ".kestrel-real")
            os.replace(path, real)
            saved.append((path, real))
            path.write_text(_STUB)
            path.chmod(0o755)
        yield
    finally:
        for path, real in saved:
            os.replace(real, path)
