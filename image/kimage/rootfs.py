"""Stage ``rootfs``: Debian bookworm arm64 + the Kestrel overlay + the /opt/kestrel venv.

Bootstraps with mmdebstrap when present, else ``debootstrap --foreign`` and a second stage under
qemu-user-static; either way foreign binaries run through binfmt_misc. Needs root and network
(the Debian mirror and PyPI). Starts from scratch on every run that is not already complete:
a half-built rootfs is never reused. Finished: ``.rootfs-done`` holds the overlay manifest hash.
"""

from __future__ import annotations

import hashlib
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .boards import BASE_PACKAGES, BUILD_PACKAGES, ImageBoard
from .overlay import MANIFEST
from .steps import BuildError, Runner

__all__ = ["build_rootfs", "DEFAULT_MIRROR"]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
_COMPONENTS = "main,non-free-firmware"
_NO_DAEMONS = "#!/bin/sh\n# no service starts inside the image build\nexit 101\n"


def _binfmt_ready(runner: Runner) -> None:
    if runner.dry_run or Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return
    raise BuildError("arm64 binaries cannot run here: binfmt_misc has no qemu-aarch64 entry", exit_code=64,
                     hint="apt-get install qemu-user-static binfmt-support (a container needs the host's "
                     "binfmt_misc registration)")


@contextmanager
def _chroot_mounts(rootfs: Path, runner: Runner) -> Iterator[None]:
    mounted: list[Path] = []
    try:
        for fstype, src, target in (("proc", "proc", "proc"), ("sysfs", "sys", "sys"), (None, "/dev", "dev"),
                                    ("devpts", "devpts", "dev/pts")):
            path = rootfs / target
            cmd = ["mount", "--bind", src, str(path)] if fstype is None else ["mount", "-t", fstype, src, str(path)]
            runner.run(cmd, what=f"mount {target} in the rootfs")
            mounted.append(path)
        yield
    finally:
        for path in reversed(mounted):
            runner.run(["umount", "-l", str(path)], what=f"unmount {path}")


def _bootstrap(rootfs: Path, *, board: ImageBoard, runner: Runner, suite: str, mirror: str) -> None:
    base = ",".join(BASE_PACKAGES)
    if shutil.which("mmdebstrap") or (runner.dry_run and not shutil.which("debootstrap")):
        runner.run(["mmdebstrap", "--arch=arm64", "--variant=minbase", f"--components={_COMPONENTS}",
                    f"--include={base}", suite, str(rootfs), mirror], what="bootstrap Debian with mmdebstrap")
        return
    runner.need_tools("debootstrap", "qemu-aarch64-static")
    runner.run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", f"--components={_COMPONENTS}",
                f"--include={base}", suite, str(rootfs), mirror], what="bootstrap Debian (first stage)")
    runner.run(["cp", shutil.which("qemu-aarch64-static") or "/usr/bin/qemu-aarch64-static",
                str(rootfs / "usr/bin/")], what="copy qemu-aarch64-static into the rootfs")
    runner.run(["chroot", str(rootfs), "/debootstrap/debootstrap", "--second-stage"],
               what="bootstrap Debian (second stage, under qemu)")


def _sources(board: ImageBoard, *, suite: str, mirror: str) -> str:
    comps = _COMPONENTS.replace(",", " ")
    lines = [f"deb {mirror} {suite} {comps}", f"deb {mirror} {suite}-updates {comps}",
             f"deb http://security.debian.org/debian-security {suite}-security {comps}"]
    lines += [f"deb {mirror} {extra} {comps}" for extra in board.extra_suites]
    return "\n".join(lines) + "\n"


def build_rootfs(out: Path, *, overlay: Path, board: ImageBoard, runner: Runner, suite: str = "bookworm",
                 mirror: str = DEFAULT_MIRROR) -> Path:
    """Build ``out/rootfs`` for ``board`` from ``overlay``; skipped when already built from it."""
    rootfs, stamp = out / "rootfs", out / ".rootfs-done"
    manifest = overlay / MANIFEST
    key = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else "dry-run"
    if stamp.exists() and stamp.read_text().strip() == key:
        runner.say(f"stage rootfs: {rootfs} is up to date")
        return rootfs
    runner.say(f"stage rootfs: Debian {suite} arm64 for {board.name} -> {rootfs}")
    runner.need_root("rootfs")
    runner.need_tools("chroot", "mount")
    _binfmt_ready(runner)
    if not runner.dry_run:
        stamp.unlink(missing_ok=True)
        if rootfs.exists():
            runner.say(f"removing the unfinished rootfs of an earlier run ({rootfs})")
            shutil.rmtree(rootfs)
    _bootstrap(rootfs, board=board, runner=runner, suite=suite, mirror=mirror)
    runner.run(["cp", "-a", "--no-preserve=ownership", f"{overlay}/.", str(rootfs)],
               what="copy the Kestrel overlay into the rootfs")
    if not runner.dry_run:
        (rootfs / "etc/apt/sources.list").write_text(_sources(board, suite=suite, mirror=mirror))
        (rootfs / "usr/sbin/policy-rc.d").write_text(_NO_DAEMONS)
        (rootfs / "usr/sbin/policy-rc.d").chmod(0o755)
        shutil.copy2("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    chroot = ["chroot", str(rootfs)]
    apt = [*chroot, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-o", "Dpkg::Use-Pty=0"]
    kernel = [f"{p}/{board.extra_suites[0]}" if board.extra_suites and p.startswith("linux-image") else p
              for p in board.kernel_packages]
    with _chroot_mounts(rootfs, runner):
        runner.run([*apt, "update"], what="update the package lists")
        runner.run([*apt, "install", "--no-install-recommends", *kernel, *BUILD_PACKAGES],
                   what="install the kernel, boot firmware and wheel build tools")
        runner.run([*chroot, "python3", "-m", "venv", "/opt/kestrel"], what="create the /opt/kestrel venv")
        runner.run([*chroot, "env", "HNSWLIB_NO_NATIVE=1", "PIP_NO_CACHE_DIR=1", "/opt/kestrel/bin/pip", "install",
                    "-r", "/opt/kestrel/requirements.txt"], what="install Kestrel and its wheels into /opt/kestrel")
        runner.run([*chroot, "/opt/kestrel/bin/kestrel", "--version"], what="check the installed kestrel command")
        runner.run([*chroot, "systemd-sysusers"], what="create the kestrel user and groups")
        runner.run([*chroot, "systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/kestrel.conf"],
                   what="create /var/lib/kestrel (0700, kestrel)")
        runner.run([*apt, "purge", "--autoremove", *BUILD_PACKAGES], what="remove the build tools")
        runner.run([*apt, "clean"], what="clean the package cache")
    if not runner.dry_run:
        _scrub(rootfs)
        stamp.write_text(key + "\n")
    return rootfs


def _scrub(rootfs: Path) -> None:
    """Nothing machine-specific may be baked in: every flashed card is its own machine."""
    (rootfs / "etc/machine-id").write_text("")  # systemd makes a new one on first boot
    for path in [rootfs / "var/lib/dbus/machine-id", rootfs / "usr/sbin/policy-rc.d",
                 rootfs / "usr/bin/qemu-aarch64-static", rootfs / "var/lib/systemd/random-seed",
                 *rootfs.glob("etc/ssh/ssh_host_*")]:
        path.unlink(missing_ok=True)
    (rootfs / "etc/resolv.conf").write_text("")
    shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
    if any((rootfs / "var/lib/kestrel").iterdir()):
        raise BuildError(f"{rootfs}/var/lib/kestrel is not empty: an identity must never be baked into the image")
