"""The parts of the rootfs and image stages that run without root, network or qemu."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kimage.__main__ import split_boot
from kimage.boards import BOARDS
from kimage.cache import Cache
from kimage.overlay import MANIFEST
from kimage.rootfs import (
    _date_the_clock,
    _scrub,
    _sources,
    base_packages,
    build_rootfs,
    clamp_mtimes,
    packaged_files,
)
from kimage.steps import BuildError, Runner


def _rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for d in ("etc/ssh", "var/lib/dbus", "var/lib/systemd", "var/lib/apt/lists", "var/lib/kestrel", "usr/sbin"):
        (root / d).mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("PRIVATE")
    (root / "var/lib/systemd/random-seed").write_bytes(b"seed")
    (root / "var/lib/apt/lists/deb.debian.org_dists").write_text("x")
    (root / "usr/sbin/policy-rc.d").write_text("exit 101")
    (root / "etc/resolv.conf").write_text("nameserver 10.0.0.1\n")
    for d in ("var/cache/ldconfig", "var/log"):
        (root / d).mkdir(parents=True)
    (root / "var/cache/ldconfig/aux-cache").write_bytes(b"inodes of the build host")
    for log in ("dpkg", "alternatives", "bootstrap"):
        (root / f"var/log/{log}.log").write_text("2026-12-05 17:30:00 status installed\n")
    return root


def test_scrub_leaves_nothing_machine_specific(tmp_path: Path) -> None:
    root = _rootfs(tmp_path)
    _scrub(root)
    assert (root / "etc/machine-id").read_text() == ""
    for gone in (
        "var/lib/dbus/machine-id",
        "etc/ssh/ssh_host_ed25519_key",
        "var/lib/systemd/random-seed",
        "usr/sbin/policy-rc.d",
        "var/lib/apt/lists/deb.debian.org_dists",
        "var/cache/ldconfig/aux-cache",
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/log/bootstrap.log",
    ):
        assert not (root / gone).exists(), gone
    assert (root / "etc/resolv.conf").read_text() == ""


def test_scrub_refuses_a_baked_in_identity(tmp_path: Path) -> None:
    root = _rootfs(tmp_path)
    (root / "var/lib/kestrel/identity").mkdir()
    with pytest.raises(BuildError, match="never be baked"):
        _scrub(root)


def test_finished_rootfs_is_skipped_only_for_the_same_overlay(tmp_path: Path, capsys) -> None:
    overlay = tmp_path / "overlay"
    (overlay / MANIFEST).parent.mkdir(parents=True)
    (overlay / MANIFEST).write_text('{"entries": []}\n')
    (tmp_path / ".rootfs-done").write_text(hashlib.sha256(b'{"entries": []}\n').hexdigest() + "\n")
    cache = Cache(tmp_path / "cache")
    build_rootfs(tmp_path, overlay=overlay, board=BOARDS["rpi4"], runner=Runner(), cache=cache)
    assert "up to date" in capsys.readouterr().out
    (overlay / MANIFEST).write_text('{"build": {"extras": ["tpm"]}, "entries": [1]}\n')  # changed: rebuild (dry run)
    runner = Runner(dry_run=True)
    build_rootfs(tmp_path, overlay=overlay, board=BOARDS["rpi4"], runner=runner, cache=cache)
    assert any("debootstrap --foreign --arch=arm64" in line for line in runner.log)
    assert any(" proot -q " in line and "--second-stage" in line for line in runner.log)  # no binfmt_misc
    assert not any(line.startswith("chroot") or line.startswith("mount") for line in runner.log)
    assert any("pip install --no-index" in line for line in runner.log)
    # the security updates: the host's apt downloads against the rootfs's dpkg status, dpkg installs under proot
    assert any("apt-bookworm-updates" in line and "--download-only" in line for line in runner.log)
    assert any("unshare --mount --propagation private proot" in line and "dpkg --unpack" in line for line in runner.log)


def test_cached_only_build_refuses_to_download(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    (overlay / MANIFEST).parent.mkdir(parents=True)
    (overlay / MANIFEST).write_text('{"build": {"extras": ["tpm"]}, "entries": []}\n')
    with pytest.raises(BuildError, match="not in the cache") as ei:
        build_rootfs(
            tmp_path,
            overlay=overlay,
            board=BOARDS["qemu-arm64"],
            runner=Runner(dry_run=True),
            cache=Cache(tmp_path / "cache", cached_only=True),
        )
    assert ei.value.exit_code == 75


def test_lab_base_system_has_the_kernel_and_the_vtpm() -> None:
    pkgs = base_packages(BOARDS["qemu-arm64"])
    assert {"linux-image-arm64", "initramfs-tools", "swtpm", "systemd"} <= set(pkgs)
    assert "raspi-firmware" not in pkgs and "swtpm" not in base_packages(BOARDS["rpi4"])
    # The Pi 5 extends the Pi base system (same packages; its kernel from backports replaces 6.1).
    assert base_packages(BOARDS["rpi5"]) == base_packages(BOARDS["rpi4"])


def test_sources_add_backports_for_the_pi5() -> None:
    assert "bookworm-backports main non-free-firmware" in _sources(
        BOARDS["rpi5"], suite="bookworm", mirror="http://m/debian"
    )
    assert "backports" not in _sources(BOARDS["rpi4"], suite="bookworm", mirror="http://m/debian")


def test_split_boot_moves_firmware_once(tmp_path: Path) -> None:
    rootfs, bootfs = tmp_path / "rootfs", tmp_path / "bootfs"
    (rootfs / "boot/firmware/kestrel").mkdir(parents=True)
    (rootfs / "boot/firmware/config.txt").write_text("arm_64bit=1\n")
    split_boot(rootfs, bootfs, Runner())
    assert (bootfs / "config.txt").read_text() == "arm_64bit=1\n" and (bootfs / "kestrel").is_dir()
    assert (rootfs / "boot/firmware").is_dir() and not any((rootfs / "boot/firmware").iterdir())
    split_boot(rootfs, bootfs, Runner())  # idempotent
    assert (bootfs / "config.txt").exists()


def test_split_boot_without_firmware_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "rootfs/boot/firmware").mkdir(parents=True)
    with pytest.raises(BuildError, match="raspi-firmware"):
        split_boot(tmp_path / "rootfs", tmp_path / "bootfs", Runner())


def test_build_written_files_get_the_epoch_and_packaged_files_keep_their_time(tmp_path: Path) -> None:
    """Reproducible whenever the cached base system was made: a file dpkg unpacked keeps the
    archive's (earlier) time; a file the build wrote, and every directory, gets the epoch."""
    root = tmp_path / "rootfs"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "var/lib/dpkg/info/tool.list").write_text("/.\n/usr\n/usr/bin\n/usr/bin/tool\n")
    for rel, t in (("usr/bin/tool", 1000), ("usr/bin/written", 2000), ("usr/bin", 3000)):
        (root / rel).touch()
        os.utime(root / rel, (t, t))
    packaged = packaged_files(root)
    assert "/usr/bin/tool" in packaged and "/usr/bin/written" not in packaged
    clamp_mtimes(root, 5000, packaged=packaged)
    assert (root / "usr/bin/tool").stat().st_mtime == 1000  # from the .deb, before the epoch
    assert (root / "usr/bin/written").stat().st_mtime == 5000  # written by the build, even earlier
    assert (root / "usr/bin").stat().st_mtime == 5000
    (root / "bin").symlink_to("usr/bin")  # usrmerge's links are not in any .list
    os.utime(root / "bin", (1500, 1500), follow_symlinks=False)
    clamp_mtimes(root, 5000, packaged=packaged)
    assert (root / "bin").lstat().st_mtime == 5000
    os.utime(root / "usr/bin/tool", (9000, 9000))
    clamp_mtimes(root, 5000, packaged=packaged)
    assert (root / "usr/bin/tool").stat().st_mtime == 5000  # later than the epoch: clamped


def test_fake_hwclock_starts_at_the_source_date(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/fake-hwclock.data").write_text("2026-12-05 17:31:02\n")
    _date_the_clock(tmp_path, 1796492735)
    assert (tmp_path / "etc/fake-hwclock.data").read_text() == "2026-12-05 17:45:35\n"
    _date_the_clock(tmp_path / "nothing", 1796492735)  # no fake-hwclock: nothing to do
