"""Stage ``rootfs``: Debian bookworm arm64 + the Kestrel overlay + the /opt/kestrel venv.

No binfmt_misc, no chroot, no mounts: ``debootstrap --foreign`` unpacks the base system on the
host, and its second stage, pip and every other arm64 program run under proot + qemu-aarch64-static
(``emu.py``). The configured base system is cached as a tarball keyed by suite, package list and
build hooks (``cache.py``), so a rebuild starts from it in seconds. Finished: ``.rootfs-done``
holds the overlay manifest hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from . import packages
from .boards import BASE_PACKAGES, ImageBoard, get_board
from .cache import Cache
from .emu import QEMU_FILE, Emulator, no_mounts, private_apt, qemu_user
from .kmod import RECIPES, install_modules
from .overlay import MANIFEST
from .raspi import missing_sd_driver, newest_kernel, write_boot_files
from .steps import BuildError, Runner
from .wheels import ensure_wheels

__all__ = ["build_rootfs", "DEFAULT_MIRROR", "UPDATE_HOLD", "apply_updates", "apt_install", "base_packages"]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
_COMPONENTS = "main,non-free-firmware"
_NO_DAEMONS = "#!/bin/sh\n# no service starts inside the image build\nexit 101\n"
_TMPFILES = "/bin/systemd-tmpfiles"
_REAL = _TMPFILES + ".kestrel-real"
# systemd-tmpfiles (252) crashes proot (an empty path in its *at() calls), and systemd's postinst runs
# it: a local dpkg diversion, written before the second stage as debootstrap itself does for
# fakechroot, puts the real binary aside and a no-op in its place for the build; first boot's
# systemd-tmpfiles-setup creates everything the postinsts would have. Undone before the image is made.
_DIVERSION = f"{_TMPFILES}\n{_REAL}\n:\n"
_NOOP = (
    "#!/bin/sh\n# kestrel image build: systemd-tmpfiles is a no-op under proot (see image/kimage/rootfs.py)\nexit 0\n"
)
_FIXUPS = _DIVERSION + _NOOP  # part of the base system's cache key
_DPKG_CFG = "force-unsafe-io\n"


def initramfs_hook(board: ImageBoard) -> str:
    """The initramfs-tools hook that adds ``board.initramfs_list`` (MODULES=list: nothing else)."""
    return f"""#!/bin/sh
# Kestrel image: the modules the initramfs needs to find the root file system ({board.initramfs_why})
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in prereqs) prereqs; exit 0;; esac
. /usr/share/initramfs-tools/hook-functions
for m in {" ".join(board.initramfs_list)}; do manual_add_modules "$m"; done
"""


def initrd_kmods(board: ImageBoard) -> tuple[str, ...]:
    """The board's out-of-tree modules that its initrd needs (the root file system is behind them)."""
    return tuple(n for n in board.kmods if RECIPES[n].initramfs)


def kmods_hook(board: ImageBoard) -> str:
    """The initramfs-tools hook that adds ``initrd_kmods(board)``: written in the rootfs stage with
    the modules (the cached base system has neither), next to the base system's hook."""
    return f"""#!/bin/sh
# Kestrel image: out-of-tree modules (lib/modules/KVER/extra) the initramfs needs to find the root file system
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in prereqs) prereqs; exit 0;; esac
. /usr/share/initramfs-tools/hook-functions
for m in {" ".join(initrd_kmods(board))}; do manual_add_modules "$m"; done
"""


def base_packages(board: ImageBoard) -> tuple[str, ...]:
    if board.derive:  # the parent's packages; the kernel from extra_suites replaces its kernel after
        return base_packages(get_board(board.derive))
    kernel = () if board.extra_suites else board.kernel_packages  # backports kernels come after
    return tuple(dict.fromkeys((*BASE_PACKAGES, *kernel, *board.packages)))


def _base_key(board: ImageBoard, *, suite: str, mirror: str) -> str:
    spec = {
        "suite": suite,
        "mirror": mirror,
        "packages": base_packages(board),
        "extra": board.extra_suites,
        "kernel": board.kernel_packages,
        "initramfs": board.initramfs_modules,
        "hook": initramfs_hook(board),
        "fixups": _FIXUPS,
        "qemu": QEMU_FILE,
        "format": 3,
    }
    if board.derive:
        spec["parent"] = _base_key(get_board(board.derive), suite=suite, mirror=mirror)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _sources(board: ImageBoard | None, *, suite: str, mirror: str) -> str:
    """sources.list: the suite, its -updates and -security, and ``board``'s extra suites."""
    comps = _COMPONENTS.replace(",", " ")
    lines = [
        f"deb {mirror} {suite} {comps}",
        f"deb {mirror} {suite}-updates {comps}",
        f"deb http://security.debian.org/debian-security {suite}-security {comps}",
    ]
    lines += [f"deb {mirror} {extra} {comps}" for extra in (board.extra_suites if board else ())]
    return "\n".join(lines) + "\n"


def _put(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def base_tar(cache: Cache, board: ImageBoard, *, suite: str, mirror: str) -> Path:
    """The cached base system's path; boards with the same ``base`` and key share it."""
    return cache.rootfs / f"base-{board.base or board.name}-{suite}-{_base_key(board, suite=suite, mirror=mirror)}.tar"


def build_base(cache: Cache, board: ImageBoard, *, runner: Runner, suite: str, mirror: str) -> Path:
    """The configured Debian base system for ``board`` as a cached tarball (built when missing)."""
    tar = base_tar(cache, board, suite=suite, mirror=mirror)
    if tar.exists():
        runner.say(f"base system from the cache: {tar}")
        return tar
    cache.miss(f"the configured base system {tar.name}")
    if board.derive:
        parent = build_base(cache, get_board(board.derive), runner=runner, suite=suite, mirror=mirror)
        return _derive_base(cache, board, parent, tar, runner=runner, suite=suite, mirror=mirror)
    runner.need_tools("debootstrap", "proot", "tar")
    qemu = qemu_user(cache, runner)
    work = cache.rootfs / f"{tar.stem}.work"
    if not runner.dry_run:
        cache.ensure()
        shutil.rmtree(work, ignore_errors=True)
    runner.say(f"bootstrapping Debian {suite} arm64 for {board.name} (first stage on the host)")
    runner.run(
        [
            "nice",
            "-n",
            "10",
            "debootstrap",
            "--foreign",
            "--arch=arm64",
            "--variant=minbase",
            f"--components={_COMPONENTS}",
            f"--cache-dir={cache.debs}",
            f"--include={','.join(base_packages(board))}",
            suite,
            str(work),
            mirror,
        ],
        what="bootstrap Debian (first stage: download and unpack)",
    )
    if not runner.dry_run:
        proc = work / "proc"
        if proc.is_symlink():  # debootstrap's container mode links it to the host's /proc
            proc.unlink()
        proc.mkdir(exist_ok=True)
        with open(work / "var/lib/dpkg/diversions", "a") as fh:
            fh.write(_DIVERSION)
        _put(work / _TMPFILES.lstrip("/"), _NOOP, 0o755)
        _put(work / "etc/dpkg/dpkg.cfg.d/kestrel-build", _DPKG_CFG)
        _put(
            work / "etc/initramfs-tools/conf.d/kestrel.conf",
            f"# Kestrel image ({board.base or board.name})\nMODULES={board.initramfs_modules}\nCOMPRESS=zstd\n",
        )
        if board.initramfs_modules == "list":
            _put(work / "etc/initramfs-tools/hooks/kestrel", initramfs_hook(board), 0o755)
    emu = Emulator(work, qemu=qemu, runner=runner)
    runner.say("configuring the base system under proot + qemu-user (the long step of a first build)")
    with no_mounts(work) if not runner.dry_run else contextlib.nullcontext():  # never the host's mounts
        emu.run(
            ["/debootstrap/debootstrap", "--second-stage"],
            env={"DEBOOTSTRAP_DIR": "/debootstrap"},
            what="bootstrap Debian (second stage, under proot + qemu-aarch64-static)",
        )
    # The kernel's postinst only defers update-initramfs to a trigger that updates existing initrds
    # (-u): under debootstrap none exists yet. Make it once here (cached with the base system).
    emu.run(["sh", "-c", _MAKE_INITRDS], what="make the initramfs (once)")
    _store(cache, work, tar, runner)
    return tar


_MAKE_INITRDS = (
    "for k in /boot/vmlinuz-*; do v=${k#/boot/vmlinuz-}; [ -e /boot/initrd.img-$v ] || update-initramfs -c -k $v; done"
)


def _derive_base(
    cache: Cache, board: ImageBoard, parent: Path, tar: Path, *, runner: Runner, suite: str, mirror: str
) -> Path:
    """``parent`` (a configured base system) with the kernel from ``board.extra_suites[0]``; the
    parent's kernels purged. Minutes, where a second stage of its own takes most of an hour."""
    runner.need_tools("proot", "tar")
    qemu = qemu_user(cache, runner)
    work = _work_from(cache, parent, tar, runner=runner, what="unpack the parent base system")
    old: list[str] = []
    if not runner.dry_run:
        old = sorted(k.name.removeprefix("vmlinuz-") for k in (work / "boot").glob("vmlinuz-*"))
    extra = board.extra_suites[0]
    apt = private_apt(
        cache, runner, name=f"apt-{extra}", arch="arm64", sources=_sources(board, suite=suite, mirror=mirror)
    )
    kernel = [p for p in board.kernel_packages if p.startswith("linux-image")]
    apt_install(cache, work, kernel, apt=apt, qemu=qemu, runner=runner, release=extra, what=f"the kernel from {extra}")
    emu = Emulator(work, qemu=qemu, runner=runner)
    with no_mounts(work) if not runner.dry_run else contextlib.nullcontext():
        if old:
            emu.run(
                ["dpkg", "--purge", *(f"linux-image-{v}" for v in old)],
                what=f"remove the parent's kernel {', '.join(old)}",
            )
        emu.run(["sh", "-c", _MAKE_INITRDS], what="make the initramfs (once)")
    if not runner.dry_run:
        (work / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
        if not any((work / "boot").glob("vmlinuz-*")):
            raise BuildError(f"no kernel from {extra} in {work}/boot", hint=f"check the {extra} suite on the mirror")
    _store(cache, work, tar, runner)
    return tar


_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[([^\]\s]+)\]\)", re.M)
_CONF = re.compile(r"^Conf (\S+) ", re.M)


def simulated_debs(simulation: str) -> list[str]:
    """The .deb file names (as apt names them in its archive directory) of the ``Inst`` lines of
    ``apt-get -s install``'s output."""
    return [
        packages.deb_file({"package": name.split(":")[0], "version": version, "architecture": arch})
        for name, version, arch in _INST.findall(simulation)
    ]


def dpkg_steps(simulation: str, *, debs: str) -> list[list[str]]:
    """The dpkg commands that do what ``apt-get -s install`` printed, in apt's order: each run of
    ``Inst`` lines one ``dpkg --unpack`` (of the .debs in the directory ``debs``), each run of ``Conf``
    lines one ``dpkg --configure``. One ``dpkg -i`` of everything would unpack a package before its
    Pre-Depends are configured (libpam-modules on libpam-modules-bin) and fail."""
    steps: list[list[str]] = []
    for line in simulation.splitlines():
        if m := _INST.match(line):
            kind, arg = "--unpack", f"{debs}/{simulated_debs(m.group(0))[0]}"
        elif m := _CONF.match(line + " "):
            kind, arg = "--configure", m.group(1)
        else:
            continue
        if steps and steps[-1][1] == kind:
            steps[-1].append(arg)
        else:
            steps.append(["dpkg", kind, arg])
    return steps


def apt_install(
    cache: Cache,
    rootfs: Path,
    specs: list[str],
    *,
    apt: list[str],
    qemu: Path,
    runner: Runner,
    what: str,
    release: str | None = None,
) -> list[str]:
    """Install ``specs`` (apt-get's ``name`` or ``name=version``) and what they need into ``rootfs``.

    apt cannot verify the archive's signatures under proot ("Couldn't execute /usr/bin/apt-key"): the
    host's apt, with the private index ``apt`` (``private_apt``), resolves them against the rootfs's
    dpkg status and downloads the .debs into the cache's debs/ (checked with the host's keyring; a .deb
    already there is checked against the index's hash, not fetched again: --cached-only needs no
    network), and dpkg installs them under proot. Returns the .deb file names installed."""
    opts = [
        *apt,
        "-o",
        f"Dir::State::status={rootfs}/var/lib/dpkg/status",
        "-o",
        f"Dir::Cache::archives={cache.debs}",
    ]
    args = ["install", "-y", "-q", "--no-install-recommends", *(["-t", release] if release else []), *specs]
    debs: list[str] = []
    steps = [["dpkg", "--unpack", "/run/kestrel-debs/*.deb"], ["dpkg", "--configure", "-a"]]
    if not runner.dry_run:
        (cache.debs / "partial").mkdir(parents=True, exist_ok=True)
        sim = subprocess.run(["apt-get", *opts, "-s", *args], capture_output=True, text=True)
        if sim.returncode != 0:
            raise BuildError(
                f"cannot resolve {what} against {rootfs}'s packages: {sim.stderr.strip()[-800:]}",
                hint="update the package indexes (a build without --cached-only) and rerun",
            )
        debs = simulated_debs(sim.stdout)
        steps = dpkg_steps(sim.stdout, debs="/run/kestrel-debs")
        missing = [d for d in debs if not (cache.debs / d).exists()]
        if missing:
            cache.miss(f"{len(missing)} package(s) of {what} ({', '.join(missing[:4])})")
    runner.run(
        ["apt-get", *opts, "--download-only", *args],
        what=f"download {what} (host apt, signatures checked with the host's keyring)",
    )
    if not runner.dry_run and not debs:
        return debs
    emu = Emulator(rootfs, qemu=qemu, runner=runner, binds=[(cache.debs, "/run/kestrel-debs")])
    with no_mounts(rootfs) if not runner.dry_run else contextlib.nullcontext():
        emu.run(
            ["sh", "-ec", "; ".join(shlex.join(step) for step in steps)],
            what=f"install {what} (dpkg under proot, in apt's order)",
        )
    return debs


# Not updated at build time: a new kernel ABI needs the out-of-tree modules built for it (kmod.py) and
# the boot files made again; the kernel is updated with the recipe (docs/image.md, "Security updates").
UPDATE_HOLD = ("linux-image-", "linux-headers-", "linux-kbuild-")


def _updates_apt(cache: Cache, runner: Runner, *, suite: str, mirror: str) -> tuple[list[str], str]:
    """The private index of ``suite``, -updates and -security (updated, but not with --cached-only),
    and its -security and -updates Packages indexes, decompressed."""
    name = f"apt-{suite}-updates"
    apt = private_apt(cache, runner, name=name, arch="arm64", sources=_sources(None, suite=suite, mirror=mirror))
    index = "" if runner.dry_run else packages.read_index(cache.root / name / "lists", _update_suites(suite))
    return apt, index


def _update_suites(suite: str) -> tuple[str, str]:
    return (f"{suite}-security", f"{suite}-updates")


def apply_updates(
    cache: Cache, rootfs: Path, *, apt: list[str], index: str, qemu: Path, runner: Runner, suite: str
) -> list[packages.Update]:
    """Bring the rootfs's packages to the newest versions of ``suite``-security and -updates (except
    ``UPDATE_HOLD``), with ``apt_install``; ``index`` is their Packages indexes (``_updates_apt``).
    A step after the cached base system, which stays valid: the same base and indexes, the same rootfs."""
    if runner.dry_run:
        runner.say(f"(on the host) pick the packages with newer versions in {', '.join(_update_suites(suite))}")
        apt_install(cache, rootfs, ["PACKAGE=VERSION"], apt=apt, qemu=qemu, runner=runner, what="the updates")
        return []
    updates = packages.pending_updates((rootfs / "var/lib/dpkg/status").read_text(), index, hold=UPDATE_HOLD)
    runner.say(
        f"{len(updates)} package(s) with newer versions in {' and '.join(_update_suites(suite))}: "
        + (", ".join(f"{u.package} {u.installed} -> {u.candidate}" for u in updates) or "none")
    )
    if updates:
        apt_install(
            cache,
            rootfs,
            [u.spec for u in updates],
            apt=apt,
            qemu=qemu,
            runner=runner,
            what=f"{len(updates)} update(s) from {' and '.join(_update_suites(suite))}",
        )
        left = packages.pending_updates((rootfs / "var/lib/dpkg/status").read_text(), index, hold=UPDATE_HOLD)
        if left:
            raise BuildError(
                f"after the updates, {', '.join(u.package for u in left)} still older than {suite}-security/-updates",
                hint="see the dpkg output above",
            )
    return updates


def updated_base(
    cache: Cache, base: Path, *, apt: list[str], index: str, qemu: Path, runner: Runner, suite: str
) -> Path:
    """``base`` with ``apply_updates``, cached beside it as ``BASE-uDIGEST.tar`` (DIGEST: the
    -security and -updates indexes'), so that a rebuild from the cache with the same indexes takes
    the same packages in seconds. ``base`` itself stays valid; older update tarballs of it are removed."""
    tar = base.with_name(f"{base.stem}-u{_digest(index)}.tar")
    if tar.exists():
        runner.say(f"updated base system from the cache: {tar}")
        return tar
    work = _work_from(cache, base, tar, runner=runner, what="unpack the cached base system (for its updates)")
    apply_updates(cache, work, apt=apt, index=index, qemu=qemu, runner=runner, suite=suite)
    if not runner.dry_run:
        (work / "usr/sbin/policy-rc.d").unlink()
        for old in base.parent.glob(f"{base.stem}-u*.tar"):
            old.unlink()
    _store(cache, work, tar, runner)
    return tar


def _work_from(cache: Cache, src: Path, tar: Path, *, runner: Runner, what: str) -> Path:
    """A fresh work tree for the base tarball ``tar``, unpacked from the base tarball ``src``, ready
    for dpkg under proot (unsafe-io, no daemon starts)."""
    work = cache.rootfs / f"{tar.stem}.work"
    if not runner.dry_run:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    runner.run(["tar", "--numeric-owner", "--xattrs", "-C", str(work), "-xf", str(src)], what=what)
    if not runner.dry_run:
        _put(work / "etc/dpkg/dpkg.cfg.d/kestrel-build", _DPKG_CFG)
        _put(work / "usr/sbin/policy-rc.d", _NO_DAEMONS, 0o755)
    return work


def _store(cache: Cache, work: Path, tar: Path, runner: Runner) -> None:
    """Move the downloaded .debs to the cache and store ``work`` as the base tarball ``tar``."""
    if not runner.dry_run:
        for deb in (work / "var/cache/apt/archives").glob("*.deb"):
            if not (cache.debs / deb.name).exists():
                shutil.move(deb, cache.debs / deb.name)
            else:
                deb.unlink()
        shutil.rmtree(work / "debootstrap", ignore_errors=True)
    runner.run(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(work), "-cf", f"{tar}.tmp", "."],
        what="store the base system in the cache",
    )
    if not runner.dry_run:
        os.replace(f"{tar}.tmp", tar)
        shutil.rmtree(work)


def build_rootfs(
    out: Path,
    *,
    overlay: Path,
    board: ImageBoard,
    runner: Runner,
    suite: str = "bookworm",
    mirror: str = DEFAULT_MIRROR,
    cache: Cache | None = None,
) -> Path:
    """Build ``out/rootfs`` for ``board`` from ``overlay``; skipped when already built from it."""
    cache = cache or Cache.from_env()
    rootfs, stamp = out / "rootfs", out / ".rootfs-done"
    manifest = overlay / MANIFEST
    key = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else "dry-run"
    lists = cache.root / f"apt-{suite}-updates" / "lists"
    if stamp.exists() and _up_to_date(stamp.read_text().splitlines(), key, lists, suite):
        runner.say(f"stage rootfs: {rootfs} is up to date")
        return rootfs
    apt, index = _updates_apt(cache, runner, suite=suite, mirror=mirror)
    runner.say(f"stage rootfs: Debian {suite} arm64 for {board.name} -> {rootfs}")
    runner.need_root("rootfs")
    base = build_base(cache, board, runner=runner, suite=suite, mirror=mirror)
    qemu = qemu_user(cache, runner)
    updated = updated_base(cache, base, apt=apt, index=index, qemu=qemu, runner=runner, suite=suite)
    if not runner.dry_run:
        stamp.unlink(missing_ok=True)
        for leftover in (rootfs, out / "bootfs"):
            if leftover.exists():
                runner.say(f"removing {leftover} of an earlier run")
                shutil.rmtree(leftover)
        rootfs.mkdir(parents=True)
    runner.run(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-xf", str(updated)],
        what="unpack the cached base system (with its updates)",
    )
    runner.run(
        ["cp", "-a", "--no-preserve=ownership", f"{overlay}/.", str(rootfs)],
        what="copy the Kestrel overlay into the rootfs",
    )
    build = json.loads(manifest.read_text())["build"] if manifest.exists() else {"extras": ["tpm"]}
    extras = tuple(build["extras"])
    epoch = int(build.get("source_date_epoch", 0)) or None
    wheels = ensure_wheels(cache, runner=runner, base=base, qemu=qemu, extras=extras)
    emu = Emulator(
        rootfs, qemu=qemu, runner=runner, binds=[(d, f"/run/kestrel-wheels/{i}") for i, d in enumerate(wheels.dirs)]
    )
    if not runner.dry_run:
        _put(rootfs / "usr/sbin/policy-rc.d", _NO_DAEMONS, 0o755)
        (rootfs / "run/kestrel-wheels").mkdir(parents=True, exist_ok=True)
    emu.run(["python3", "-m", "venv", "/opt/kestrel"], what="create the /opt/kestrel venv")
    links = [a for i in range(len(wheels.dirs)) for a in ("--find-links", f"/run/kestrel-wheels/{i}")]
    reqs = ["-r", "/opt/kestrel/requirements.txt"]
    emu.run(
        [
            "/opt/kestrel/bin/pip",
            "install",
            "--no-index",
            *links,
            "--no-compile",
            "--disable-pip-version-check",
            "--report",
            "/opt/kestrel/pip-report.json",
            *reqs,
        ],
        what="install Kestrel and its wheels into /opt/kestrel (offline, from the cache)",
    )
    if epoch and not runner.dry_run:  # before compiling: a .pyc records its source's mtime
        clamp_mtimes(rootfs, epoch, packaged=packaged_files(rootfs))
    _compile(rootfs, runner)
    emu.run(["/opt/kestrel/bin/kestrel", "--version"], what="check the installed kestrel command")
    # The compiled modules load (their shared libraries are in the image): a missing libtss2-* would
    # otherwise surface only at first boot, as "TPM support is not installed".
    probes = [
        m
        for extra, m in (
            ("tpm", "from tpm2_pytss import ESAPI"),
            ("gpio", "import gpiod"),
            ("inference", "import hnswlib, onnxruntime"),
        )
        if extra in extras
    ]
    if probes:
        emu.run(
            ["/opt/kestrel/bin/python3", "-B", "-c", "; ".join(probes)],
            what="load the compiled modules (tpm2-pytss, gpiod, hnswlib, onnxruntime)",
        )
    install_modules(rootfs, board.kmods, cache=cache, runner=runner, emu=emu)
    if initrd_kmods(board) and not runner.dry_run:
        _put(rootfs / "etc/initramfs-tools/hooks/kestrel-kmods", kmods_hook(board), 0o755)
    # the cached base system's initrd has the times of its build (made again, reproducibly), and
    # lacks the out-of-tree modules
    if epoch or initrd_kmods(board):
        emu.run(
            ["sh", "-c", "for k in /boot/vmlinuz-*; do update-initramfs -u -k ${k#/boot/vmlinuz-}; done"],
            env={"SOURCE_DATE_EPOCH": str(epoch)} if epoch else None,
            what="make the initramfs again with SOURCE_DATE_EPOCH (mkinitramfs then writes the same bytes)",
        )
    if board.boot_files == "raspi" and runner.dry_run:
        runner.say("(on the host) write the Raspberry Pi boot files: raspi-firmware's firmware, DTBs, kernel, initrd")
    elif board.boot_files == "raspi":  # on the host: see raspi.py
        runner.say(f"writing the Raspberry Pi boot files: {', '.join(write_boot_files(rootfs, board))}")
        warning = missing_sd_driver(rootfs, board, newest_kernel(rootfs))
        if warning:
            runner.say(f"warning: {warning}")
    runner.need_tools("systemd-sysusers")
    runner.run(  # SOURCE_DATE_EPOCH: the shadow entries' "last changed" day is the source's, not today
        ["systemd-sysusers", f"--root={rootfs}"],
        what="create the kestrel user and groups",
        env={"SOURCE_DATE_EPOCH": str(epoch)} if epoch else None,
    )
    if not runner.dry_run:
        packages.write_manifest(rootfs, out, board=board, cache=cache, wheel_dirs=wheels.dirs)
        _finish(rootfs, board, suite=suite, mirror=mirror)
        _scrub(rootfs)
        if epoch:
            _date_the_clock(rootfs, epoch)
            clamp_mtimes(rootfs, epoch, packaged=packaged_files(rootfs))
        stamp.write_text(f"{key}\nupdates {_digest(index)}\n")
    return rootfs


def _digest(index: str) -> str:
    return hashlib.sha256(index.encode()).hexdigest()[:16]


def _up_to_date(stamp: list[str], key: str, lists: Path, suite: str) -> bool:
    """The rootfs was built from this overlay and from the cached -security/-updates indexes (a
    stamp without their digest only where none is cached). The indexes are updated when the stage runs."""
    if not stamp or stamp[0].strip() != key:
        return False
    cached = lists.is_dir() and any(lists.glob("*_Packages*"))
    if len(stamp) < 2:
        return not cached
    return cached and stamp[1].strip() == f"updates {_digest(packages.read_index(lists, _update_suites(suite)))}"


def clamp_mtimes(tree: Path, epoch: int, *, packaged: frozenset[str] | None = None) -> int:
    """Set every mtime (and atime) in ``tree`` later than ``epoch`` to ``epoch``, links not followed
    (reproducible builds). With ``packaged`` (``packaged_files``), every directory, link and file not
    shipped by a Debian package gets ``epoch`` too, even an earlier time: what the build wrote then
    has the same time whenever the cached base system was made. Returns how many were changed."""
    changed = 0
    for top, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            path = os.path.join(top, name)
            st = os.lstat(path)
            force = packaged is not None and (
                not stat.S_ISREG(st.st_mode) or "/" + os.path.relpath(path, tree) not in packaged
            )
            if st.st_mtime > epoch or (force and st.st_mtime != epoch):
                os.utime(path, (epoch, epoch), follow_symlinks=False)
                changed += 1
    return changed


def packaged_files(rootfs: Path) -> frozenset[str]:
    """The paths dpkg unpacked from .debs (``/var/lib/dpkg/info/*.list``): they keep the archive's times."""
    info = rootfs / "var/lib/dpkg/info"
    return frozenset(
        line for lst in sorted(info.glob("*.list")) for line in lst.read_text(errors="replace").splitlines() if line
    )


def _compile(rootfs: Path, runner: Runner) -> None:
    """Byte-compile the venv and first-boot code on the host (same CPython 3.11 bytecode, native speed):
    the daemon runs as a user that cannot write __pycache__ below /opt, so this saves every start."""
    host = sys.executable if sys.version_info[:2] == (3, 11) else shutil.which("python3.11")
    if host is None:
        runner.say("warning: no python3.11 on the host; the image's Python files are compiled on the device")
        return
    for top in ("opt/kestrel/lib/python3.11/site-packages", "usr/lib/kestrel"):
        runner.run(
            # timestamp mode, whatever SOURCE_DATE_EPOCH says (hash-checked .pycs would hash each source
            # at every import): the sources' mtimes are clamped, so the .pycs are the same bytes each build
            [
                host,
                "-m",
                "compileall",
                "-q",
                "-j",
                "2",
                "--invalidation-mode",
                "timestamp",
                "-d",
                f"/{top}",
                str(rootfs / top),
            ],
            what=f"byte-compile /{top}",
        )


def _finish(rootfs: Path, board: ImageBoard, *, suite: str, mirror: str) -> None:
    """Undo the build-only changes; keep the kernel's initrd next to it for the boot partition."""
    real = rootfs / _REAL.lstrip("/")
    if real.exists():
        os.replace(real, rootfs / _TMPFILES.lstrip("/"))
    diversions = rootfs / "var/lib/dpkg/diversions"
    if diversions.exists():
        diversions.write_text(diversions.read_text().replace(_DIVERSION, ""))
    for path in ("etc/dpkg/dpkg.cfg.d/kestrel-build", "opt/kestrel/pip-report.json"):
        (rootfs / path).unlink(missing_ok=True)
    shutil.rmtree(rootfs / "run/kestrel-wheels", ignore_errors=True)
    _put(rootfs / "etc/apt/sources.list", _sources(board, suite=suite, mirror=mirror))
    kver = newest_kernel(rootfs)
    initrd = check_initrd(rootfs, board, kver)
    if board.boot_files != "direct":
        return  # raspi.py wrote the boot partition's files
    fw = rootfs / "boot/firmware"
    shutil.copy2(rootfs / "boot" / f"vmlinuz-{kver}", fw / "vmlinuz")
    shutil.copy2(initrd, fw / "initrd.img")
    _put(fw / "cmdline.txt", f"root=LABEL=KESTREL_ROOT rw rootwait console={board.console.split(',')[0]}\n")


def _module_files(rootfs: Path, kver: str) -> dict[str, str]:
    """Module name (``-`` as ``_``) -> its file name, for the kernel ``kver``'s loadable modules."""
    tops = [rootfs / "lib/modules" / kver / d for d in ("kernel", "extra")]  # extra: kmod.py's
    return {
        f.name.split(".ko")[0].replace("-", "_"): f.name for top in tops if top.is_dir() for f in top.rglob("*.ko*")
    }


def check_initrd(rootfs: Path, board: ImageBoard, kver: str) -> Path:
    """The initrd exists and holds init, a shell, every module of ``board.initramfs_list`` that
    the kernel builds as a module (the others are built in, or absent from this kernel) and the
    board's out-of-tree modules for the initrd (``initrd_kmods``)."""
    initrd = rootfs / "boot" / f"initrd.img-{kver}"
    if not initrd.exists():
        raise BuildError(
            f"{initrd} is missing (update-initramfs did not run)",
            hint="remove the cached base tarball (cache rootfs/) and rebuild",
        )
    names = initramfs_names(initrd)
    files = _module_files(rootfs, kver)
    needed = {"init": "init" in names, "a shell": any(n.endswith("bin/sh") for n in names)}
    for mod in (*board.initramfs_list, *initrd_kmods(board)):
        ko = files.get(mod.replace("-", "_")) or (f"{mod}.ko" if mod in board.kmods else None)
        if ko:
            needed[ko] = any(n.rsplit("/", 1)[-1] == ko for n in names)
    missing = [what for what, ok in needed.items() if not ok]
    if missing:
        raise BuildError(
            f"{initrd} lacks {', '.join(missing)}: the initramfs cannot mount the root file system",
            hint="remove the cached base tarball (cache rootfs/) and rebuild",
        )
    return initrd


def _date_the_clock(rootfs: Path, epoch: int) -> None:
    """fake-hwclock's saved time (restored on a boot without a real-time clock) is the source's date,
    not the day the cached base system was built (fake-hwclock's postinst saved that)."""
    saved = rootfs / "etc/fake-hwclock.data"
    if saved.exists():
        saved.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n", time.gmtime(epoch)))


def _scrub(rootfs: Path) -> None:
    """Nothing machine-specific may be baked in: every flashed card is its own machine."""
    (rootfs / "etc/machine-id").write_text("")  # systemd makes a new one on first boot
    for path in [
        rootfs / "var/lib/dbus/machine-id",
        rootfs / "usr/sbin/policy-rc.d",
        rootfs / "usr/bin/qemu-aarch64-static",
        rootfs / "var/lib/systemd/random-seed",
        # build logs and ldconfig's aux cache (inode numbers and times of the build host's files)
        rootfs / "var/cache/ldconfig/aux-cache",
        *(rootfs / "var/log" / f"{log}.log" for log in ("dpkg", "alternatives", "bootstrap")),
        *rootfs.glob("etc/ssh/ssh_host_*"),
    ]:
        path.unlink(missing_ok=True)
    (rootfs / "etc/resolv.conf").write_text("")
    shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
    for d in ("var/lib/kestrel", "var/lib/kestrel-vtpm"):
        if (rootfs / d).is_dir() and any((rootfs / d).iterdir()):
            raise BuildError(f"{rootfs}/{d} is not empty: an identity must never be baked into the image")


def kernel_version(rootfs: Path) -> str:
    versions = sorted(p.name for p in (rootfs / "lib/modules").iterdir()) if (rootfs / "lib/modules").is_dir() else []
    if not versions:
        raise BuildError(f"{rootfs} has no kernel modules", hint="the base system lacks linux-image-arm64")
    return versions[-1]


def initramfs_names(path: Path) -> set[str]:
    """The file names in an initramfs (zstd, gzip or plain newc cpio; concatenated archives too)."""
    import gzip

    raw = path.read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    elif raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    names, pos = set(), 0
    while pos + 110 <= len(raw):
        if raw[pos : pos + 6] != b"070701":
            break
        size, namesize = int(raw[pos + 54 : pos + 62], 16), int(raw[pos + 94 : pos + 102], 16)
        name = raw[pos + 110 : pos + 110 + namesize - 1].decode(errors="replace")
        if name == "TRAILER!!!":
            break
        names.add(name.lstrip("./"))
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + size + 3) & ~3
    return names
