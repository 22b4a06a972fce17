"""The Raspberry Pi boot partition's files, written on the host from the configured rootfs.

raspi-firmware's kernel hook (``/etc/kernel/postinst.d/z50-raspi-firmware``) cannot do it under
proot: it finds the kernel with ``ls -1 /boot/vmlinuz-*``, and ``ls`` goes through ``statx``, which
proot 5.3 does not translate (``emu.py``), so under proot the hook says "no kernel found" and writes
nothing. This module writes what the hook writes on a device -- the firmware, the board's device
trees, kernel, initrd, ``config.txt`` and ``cmdline.txt`` -- with the settings the overlay puts in
``/etc/default/raspi-firmware{,-custom}`` (so a kernel upgrade on the device regenerates the same
files), in a fixed order and with fixed content (reproducible builds).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .boards import ImageBoard
from .overlay import ROOT_LABEL
from .steps import BuildError

__all__ = [
    "DTBS",
    "SD_DRIVER",
    "SD_MODULE",
    "cmdline_txt",
    "config_txt",
    "missing_sd_driver",
    "newest_kernel",
    "write_boot_files",
]

# The device trees each board's firmware loads (upstream names, as Debian's kernel ships them).
DTBS = {
    "rpi4": ("bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2711-rpi-cm4-io.dtb"),
    "rpi-zero-2w": ("bcm2837-rpi-zero-2-w.dtb",),
    "rpi5": ("bcm2712-rpi-5-b.dtb",),
}
# The kernel option of the driver of each board's SD card controller (the root file system's disk).
SD_DRIVER = {
    "rpi4": "CONFIG_MMC_SDHCI_IPROC",  # emmc2
    "rpi-zero-2w": "CONFIG_MMC_BCM2835",  # sdhost
    "rpi5": "CONFIG_MMC_SDHCI_BRCMSTB",  # brcm,bcm2712-sdhci
}
# Its module, where the kernel lacks the option and the recipe builds it out of tree (kmod.py).
SD_MODULE = {"rpi4": "sdhci-iproc", "rpi-zero-2w": "bcm2835", "rpi5": "sdhci-brcmstb"}
_HEADER = """# Do not modify this file!
#
# It is automatically generated upon install or update of either the
# firmware or the Linux kernel.
#
# If you need to set boot-time parameters, do so via the
# /etc/default/raspi-firmware, /etc/default/raspi-firmware-custom or
# /etc/default/raspi-extra-cmdline files.

"""


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.-]", version)]


def newest_kernel(rootfs: Path) -> str:
    """The newest kernel version in ``rootfs/boot`` (``vmlinuz-VERSION``), as the hook's ``sort -V``."""
    versions = [k.name.removeprefix("vmlinuz-") for k in (rootfs / "boot").glob("vmlinuz-*")]
    if not versions:
        raise BuildError(f"{rootfs}/boot has no kernel", hint="the base system lacks linux-image-arm64")
    return max(versions, key=_version_key)


def missing_sd_driver(rootfs: Path, board: ImageBoard, kver: str) -> str | None:
    """None if the kernel ``kver`` drives ``board``'s SD card controller, else a warning saying why
    the image cannot mount its root file system from the card."""
    option = SD_DRIVER.get(board.name)
    config = rootfs / "boot" / f"config-{kver}"
    if option is None or not config.exists():
        return None
    if re.search(rf"^{option}=[ym]$", config.read_text(), re.M):
        return None
    if (rootfs / "lib/modules" / kver / "extra" / f"{SD_MODULE[board.name]}.ko").exists():
        return None  # built out of tree for this kernel (kmod.py)
    return (
        f"the kernel {kver} has no driver for the {board.name}'s SD card controller ({option} is not set, "
        f"and no out-of-tree {SD_MODULE[board.name]}.ko): "
        "the image cannot mount its root file system from the card (docs/image.md, 'Not done yet')"
    )


def config_txt(*, kernel: str, initrd: str, custom: str) -> str:
    """``config.txt`` as raspi-firmware's hook writes it for arm64, plus ``custom`` (the -custom file)."""
    return (
        _HEADER
        + "# Switch the CPU from ARMv7 into ARMv8 (aarch64) mode\narm_64bit=1\n\n"
        + f"enable_uart=1\nupstream_kernel=1\n\nkernel={kernel}\n"
        + "# For details on the initramfs directive, see\n"
        + "# https://www.raspberrypi.org/forums/viewtopic.php?f=63&t=10532\n"
        + f"initramfs {initrd}\n"
        + f"\n# Inserted by /etc/default/raspi-firmware-custom\n{custom.rstrip(chr(10))}\n"
    )


def cmdline_txt(board: ImageBoard) -> str:
    """The kernel command line: the consoles of /etc/default/raspi-firmware, root by label.
    As the hook, no ``cma=`` on a Pi 4 (its firmware sets CMA), ``cma=64M`` on the others."""
    consoles = " ".join(f"console={c}" for c in (board.console, "tty0"))
    cma = "" if board.name == "rpi4" else "cma=64M "
    return f"{consoles} root=LABEL={ROOT_LABEL} rw fsck.repair=yes net.ifnames=0 {cma}rootwait\n"


def write_boot_files(rootfs: Path, board: ImageBoard) -> list[str]:
    """Fill ``rootfs/boot/firmware`` for ``board``; returns the names written (sorted)."""
    fw = rootfs / "boot/firmware"
    fw.mkdir(parents=True, exist_ok=True)
    kver = newest_kernel(rootfs)
    kernel, initrd = f"vmlinuz-{kver}", f"initrd.img-{kver}"
    if not (rootfs / "boot" / initrd).exists():
        raise BuildError(
            f"{rootfs}/boot/{initrd} is missing (update-initramfs did not run)",
            hint="remove the cached base tarball (cache rootfs/) and rebuild",
        )
    for stale in [*fw.glob("vmlinuz-*"), *fw.glob("initrd.img-*"), *fw.glob("*.dtb")]:
        stale.unlink()
    written: dict[str, Path] = {}
    firmware = rootfs / "usr/lib/raspi-firmware"
    for src in sorted(firmware.iterdir()) if firmware.is_dir() else []:
        written[src.name] = src
    dtb_dir = rootfs / "usr/lib" / f"linux-image-{kver}" / "broadcom"
    missing = [d for d in DTBS.get(board.name, ()) if not (dtb_dir / d).exists()]
    if missing:
        raise BuildError(
            f"the kernel {kver} has no device tree {', '.join(missing)} for {board.name} (in {dtb_dir})",
            hint="this Debian kernel does not support the board; see docs/image.md",
        )
    for dtb in sorted(dtb_dir.glob("bcm*.dtb")):  # all of them, as the hook does: one card, any Pi
        written[dtb.name] = dtb
    written[kernel], written[initrd] = rootfs / "boot" / kernel, rootfs / "boot" / initrd
    for name, src in written.items():
        shutil.copyfile(src, fw / name)
    custom = rootfs / "etc/default/raspi-firmware-custom"
    texts = {
        "config.txt": config_txt(kernel=kernel, initrd=initrd, custom=custom.read_text() if custom.exists() else ""),
        "cmdline.txt": cmdline_txt(board),
    }
    for name, text in texts.items():
        (fw / name).write_text(text)
    return sorted([*written, *texts])
