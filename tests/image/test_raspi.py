"""The Raspberry Pi boot files and initramfs settings of the recipe (pure: no root, no image)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kimage.boards import BOARDS
from kimage.cache import Cache
from kimage.raspi import DTBS, cmdline_txt, config_txt, missing_sd_driver, newest_kernel, write_boot_files
from kimage.rootfs import DEFAULT_MIRROR, base_tar, check_initrd, initramfs_hook
from kimage.steps import BuildError

PIS = ("rpi4", "rpi-zero-2w", "rpi5")
# The SD host controller driver each board's root file system is behind (Debian arm64 kernels).
SD_DRIVER = {"rpi4": "sdhci-iproc", "rpi-zero-2w": "bcm2835", "rpi5": "sdhci-brcmstb"}


def _tar(board: str, tmp_path: Path) -> str:
    return base_tar(Cache(tmp_path), BOARDS[board], suite="bookworm", mirror=DEFAULT_MIRROR).name


@pytest.mark.parametrize("board", PIS)
def test_pi_initramfs_is_a_short_list_with_the_sd_path(board: str) -> None:
    b = BOARDS[board]
    assert b.initramfs_modules == "list"  # MODULES=most took most of an hour under emulation
    assert {SD_DRIVER[board], "ext4", "fixed", "gpio-regulator"} <= set(b.initramfs_list)
    hook = initramfs_hook(b)
    assert 'manual_add_modules "$m"' in hook and SD_DRIVER[board] in hook and "virtio" not in hook


def test_lab_initramfs_hook_is_the_virtio_one() -> None:
    hook = initramfs_hook(BOARDS["qemu-arm64"])
    assert "for m in virtio_pci virtio_mmio virtio_blk ext4; do" in hook and "sdhci" not in hook


def test_pi4_and_zero_share_one_base_system_and_the_pi5_extends_it(tmp_path: Path) -> None:
    assert _tar("rpi4", tmp_path) == _tar("rpi-zero-2w", tmp_path)
    assert _tar("rpi4", tmp_path).startswith("base-rpi-bookworm-")
    assert _tar("rpi5", tmp_path).startswith("base-rpi5-") and _tar("rpi5", tmp_path) != _tar("rpi4", tmp_path)
    assert _tar("qemu-arm64", tmp_path).startswith("base-qemu-arm64-")
    # The key covers the module list: a different list is a different base system.
    other = base_tar(
        Cache(tmp_path),
        BOARDS["rpi4"].__class__(**{**BOARDS["rpi4"].__dict__, "initramfs_list": ("ext4",)}),
        suite="bookworm",
        mirror=DEFAULT_MIRROR,
    )
    assert other.name != _tar("rpi4", tmp_path)


def test_config_txt_names_kernel_initrd_and_the_custom_settings() -> None:
    text = config_txt(kernel="vmlinuz-6.1.0-50-arm64", initrd="initrd.img-6.1.0-50-arm64", custom="dtparam=spi=on\n")
    lines = text.splitlines()
    for want in (
        "arm_64bit=1",
        "enable_uart=1",
        "upstream_kernel=1",
        "kernel=vmlinuz-6.1.0-50-arm64",
        "initramfs initrd.img-6.1.0-50-arm64",
        "dtparam=spi=on",
    ):
        assert want in lines, want


@pytest.mark.parametrize("board", PIS)
def test_cmdline_mounts_root_by_label_on_the_board_console(board: str) -> None:
    line = cmdline_txt(BOARDS[board])
    assert line.endswith("\n") and line.count("\n") == 1
    args = line.split()
    assert "root=LABEL=KESTREL_ROOT" in args and "rootwait" in args and "rw" in args
    assert f"console={BOARDS[board].console}" in args
    assert ("cma=64M" in args) == (board != "rpi4")


def test_newest_kernel_sorts_versions_not_strings(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    for v in ("6.1.0-9-arm64", "6.12.9+bpo-arm64", "6.1.0-50-arm64"):
        (tmp_path / "boot" / f"vmlinuz-{v}").write_text("")
    assert newest_kernel(tmp_path) == "6.12.9+bpo-arm64"
    with pytest.raises(BuildError, match="no kernel"):
        newest_kernel(tmp_path / "nothing")


def _newc(names: list[str]) -> bytes:
    """A minimal newc cpio archive (what mkinitramfs writes) holding empty files ``names``."""
    out = b""
    for i, name in enumerate([*names, "TRAILER!!!"]):
        raw = name.encode() + b"\0"
        fields = [i + 1, 0o100644, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(raw), 0]
        head = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += head + raw
        out += b"\0" * (-len(out) % 4)
    return out


def _fake_pi_rootfs(root: Path, *, kver: str = "6.1.0-50-arm64", modules: tuple[str, ...] = ()) -> Path:
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{kver}").write_bytes(b"KERNEL")
    base = f"usr/lib/modules/{kver}/kernel/drivers/mmc/host"
    (root / "lib").symlink_to("usr/lib")
    (root / base).mkdir(parents=True)
    for m in ("sdhci-iproc", "bcm2835"):
        (root / base / f"{m}.ko").write_bytes(b"")
    (root / f"usr/lib/modules/{kver}/kernel/fs/ext4").mkdir(parents=True)
    (root / f"usr/lib/modules/{kver}/kernel/fs/ext4/ext4.ko").write_bytes(b"")
    (root / "boot" / f"initrd.img-{kver}").write_bytes(
        _newc(["init", "usr/bin/sh", *(f"usr/lib/modules/{kver}/kernel/{m}.ko" for m in modules)])
    )
    fw = root / "usr/lib/raspi-firmware"
    fw.mkdir(parents=True)
    for name in ("bootcode.bin", "start4.elf", "fixup4.dat", "start.elf"):
        (fw / name).write_bytes(name.encode())
    dtbs = root / f"usr/lib/linux-image-{kver}/broadcom"
    dtbs.mkdir(parents=True)
    for name in ("bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2711-rpi-cm4-io.dtb", "bcm2837-rpi-zero-2-w.dtb"):
        (dtbs / name).write_bytes(name.encode())
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/raspi-firmware-custom").write_text("dtparam=spi=on\n")
    (root / "boot/firmware/kestrel").mkdir(parents=True)
    return root


def test_initrd_check_wants_every_listed_module_the_kernel_has(tmp_path: Path) -> None:
    full = _fake_pi_rootfs(tmp_path / "a", modules=("sdhci-iproc", "bcm2835", "ext4"))
    assert check_initrd(full, BOARDS["rpi4"], "6.1.0-50-arm64").name == "initrd.img-6.1.0-50-arm64"
    short = _fake_pi_rootfs(tmp_path / "b", modules=("sdhci-iproc", "ext4"))  # bcm2835.ko left out
    with pytest.raises(BuildError, match=r"lacks bcm2835\.ko"):
        check_initrd(short, BOARDS["rpi-zero-2w"], "6.1.0-50-arm64")
    (short / "boot/initrd.img-6.1.0-50-arm64").unlink()
    with pytest.raises(BuildError, match="update-initramfs did not run"):
        check_initrd(short, BOARDS["rpi4"], "6.1.0-50-arm64")


@pytest.mark.parametrize("board", ("rpi4", "rpi-zero-2w"))
def test_boot_files_are_written_from_the_rootfs(board: str, tmp_path: Path) -> None:
    root = _fake_pi_rootfs(tmp_path)
    names = write_boot_files(root, BOARDS[board])
    fw = root / "boot/firmware"
    for name in ("vmlinuz-6.1.0-50-arm64", "initrd.img-6.1.0-50-arm64", "start4.elf", "bootcode.bin", *DTBS[board]):
        assert name in names and (fw / name).read_bytes() != b"", name
    assert (fw / "vmlinuz-6.1.0-50-arm64").read_bytes() == b"KERNEL"
    config = (fw / "config.txt").read_text()
    assert "kernel=vmlinuz-6.1.0-50-arm64" in config and "dtparam=spi=on" in config
    assert (fw / "cmdline.txt").read_text() == cmdline_txt(BOARDS[board])
    assert (fw / "kestrel").is_dir()  # the owner's directory from the overlay stays
    assert write_boot_files(root, BOARDS[board]) == names  # idempotent


def test_boot_files_refuse_a_kernel_without_the_boards_device_tree(tmp_path: Path) -> None:
    root = _fake_pi_rootfs(tmp_path)
    with pytest.raises(BuildError, match="bcm2712-rpi-5-b.dtb"):
        write_boot_files(root, BOARDS["rpi5"])


def test_a_kernel_without_the_sd_driver_is_named(tmp_path: Path) -> None:
    root = _fake_pi_rootfs(tmp_path)
    config = root / "boot/config-6.1.0-50-arm64"
    config.write_text(
        "CONFIG_MMC=y\nCONFIG_MMC_SDHCI_IPROC=m\nCONFIG_MMC_BCM2835=y\n# CONFIG_MMC_SDHCI_BRCMSTB is not set\n"
    )
    assert missing_sd_driver(root, BOARDS["rpi4"], "6.1.0-50-arm64") is None
    assert missing_sd_driver(root, BOARDS["rpi-zero-2w"], "6.1.0-50-arm64") is None
    warning = missing_sd_driver(root, BOARDS["rpi5"], "6.1.0-50-arm64")
    assert warning and "CONFIG_MMC_SDHCI_BRCMSTB" in warning and "cannot mount its root" in warning
    extra = root / "lib/modules/6.1.0-50-arm64/extra"  # the recipe's out-of-tree module (kmod.py)
    extra.mkdir(parents=True)
    (extra / "gpio-brcmstb.ko").write_bytes(b"")
    assert missing_sd_driver(root, BOARDS["rpi5"], "6.1.0-50-arm64")  # the wrong module is not the driver
    (extra / "sdhci-brcmstb.ko").write_bytes(b"")
    assert missing_sd_driver(root, BOARDS["rpi5"], "6.1.0-50-arm64") is None
