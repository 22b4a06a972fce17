"""The boards the image recipe knows (pure data). Runtime pin maps live in board_profiles/."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageBoard", "BOARDS", "get_board", "BASE_PACKAGES", "BUILD_PACKAGES"]

# Installed in every rootfs. python3-venv: /opt/kestrel; tpm-udev: the tss group and
# /dev/tpmrm0 permissions; libtss2-*: tpm2-pytss at run time (its module links esys, tctildr, rc, mu, fapi).
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "systemd-timesyncd",
    "udev",
    "dbus",
    "ifupdown",
    "iproute2",
    "isc-dhcp-client",
    "ca-certificates",
    "python3",
    "python3-venv",
    "tpm-udev",
    "libtss2-esys-3.0.2-0",
    "libtss2-tctildr0",
    "libtss2-tcti-device0",
    "libtss2-rc0",
    "libtss2-mu0",
    "libtss2-fapi1",
    "fake-hwclock",
    "util-linux",
    "kmod",
    "zstd",
    "initramfs-tools",
)
# Needed only to build wheels that have no arm64 binary on PyPI (hnswlib, tpm2-pytss); purged after.
BUILD_PACKAGES = ("build-essential", "python3-dev", "libtss2-dev", "pkg-config")


@dataclass(frozen=True)
class ImageBoard:
    name: str  # also the runtime board profile (board_profiles/NAME.yaml)
    description: str
    flash: str  # "sd": a partitioned .img built here; "l4t": rootfs tarball for NVIDIA's flash tools
    kernel_packages: tuple[str, ...] = ()
    extra_suites: tuple[str, ...] = ()  # e.g. bookworm-backports for a newer kernel
    boot_mib: int = 256
    root_mib: int = 2048
    console: str = "ttyS1,115200"
    config_txt: str = ""  # appended to the config.txt raspi-firmware writes
    data_mib: int = 256  # partition 3, ext4 KESTREL_DATA, mounted at /var/lib/kestrel (the state directory)
    boot_files: str = "raspi"  # "raspi": raspi-firmware fills the FAT partition; "direct": kernel + initrd
    packages: tuple[str, ...] = ()  # board-specific extra Debian packages
    initramfs_modules: str = "list"  # initramfs-tools MODULES=; "list": only ``initramfs_list`` (and deps)
    initramfs_list: tuple[str, ...] = ()  # what the initramfs needs to mount the root file system
    initramfs_why: str = ""  # one line in the hook saying what those modules are for
    base: str = ""  # the cached base system's name: boards with the same Debian base share one
    derive: str = ""  # start from this board's configured base system (then the kernel from extra_suites)
    data_timeout: str = "90s"  # how long systemd waits for the data partition (x-systemd.device-timeout)
    kmods: tuple[str, ...] = ()  # out-of-tree modules built for its kernel (kmod.RECIPES), in lib/modules/KVER/extra
    lab: bool = False  # the test lab: test channel, in-guest vTPM, gpio-sim chip (docs/image.md, "qemu-arm64")


_PI_KERNEL = ("linux-image-arm64", "raspi-firmware", "firmware-brcm80211")
# MODULES=most put ~2000 modules into each Pi initrd and took most of an hour under user-mode
# emulation. What a Pi needs to mount its root file system, on Debian's arm64 kernels (6.1 in
# bookworm, 6.12 in backports), where these are modules and the rest of the path is built in
# (MMC core, mmc_block, the BCM2835 clocks, mailbox, firmware, DMA, pinctrl, the GPIO expander):
# the SD host controllers -- sdhci-iproc (Pi 4's emmc2, the Zero 2 W's SDIO Wi-Fi), bcm2835
# (sdhost: the Zero 2 W's and Pi 3's SD slot), sdhci-brcmstb (Pi 5; in no Debian kernel: the rpi5's
# out-of-tree module, skipped for the others) --,
# the regulators that power the card (fixed, gpio-regulator: Pi 4's vmmc/vqmmc), ext4, and the
# FAT modules for fsck/mounting the boot partition. manual_add_modules adds their dependencies.
_PI_INITRAMFS = (
    "sdhci-iproc",
    "bcm2835",
    "sdhci-brcmstb",
    "fixed",
    "gpio-regulator",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
)
_PI_WHY = "SD host controllers, regulators, ext4, vfat"

BOARDS: dict[str, ImageBoard] = {
    b.name: b
    for b in (
        ImageBoard(
            "rpi4",
            "Raspberry Pi 4 / CM4",
            "sd",
            _PI_KERNEL,
            base="rpi",
            initramfs_list=_PI_INITRAMFS,
            initramfs_why=_PI_WHY,
        ),
        # The Zero 2 W's firmware looks for the downstream name bcm2710-rpi-zero-2-w.dtb; Debian's
        # kernel ships the upstream bcm2837-rpi-zero-2-w.dtb: name it.
        ImageBoard(
            "rpi-zero-2w",
            "Raspberry Pi Zero 2 W (512 MB RAM)",
            "sd",
            _PI_KERNEL,
            root_mib=1536,
            config_txt="device_tree=bcm2837-rpi-zero-2-w.dtb\n",
            base="rpi",
            initramfs_list=_PI_INITRAMFS,
            initramfs_why=_PI_WHY,
        ),
        # Debian bookworm's 6.1 kernel predates Pi 5 support: the Pi base system plus the kernel
        # from bookworm-backports (the 6.1 kernel purged).
        ImageBoard(
            "rpi5",
            "Raspberry Pi 5 / CM5 (kernel from bookworm-backports)",
            "sd",
            _PI_KERNEL,
            extra_suites=("bookworm-backports",),
            console="ttyAMA10,115200",
            derive="rpi4",
            # Debian's kernels lack the BCM2712's SD controller driver and the GPIO controller behind
            # the card's regulators: built out of tree (kmod.py), into the initrd with the list's
            # sdhci-brcmstb, fixed and gpio-regulator
            kmods=("sdhci-brcmstb", "gpio-brcmstb"),
            initramfs_list=_PI_INITRAMFS,
            initramfs_why=_PI_WHY,
        ),
        # QEMU's virt board (qemu-system-aarch64 -M virt -cpu cortex-a72): the project's arm64 lab.
        ImageBoard(
            "qemu-arm64",
            "QEMU virt arm64 test lab (vTPM in the guest, gpio-sim chip, test channel)",
            "sd",
            ("linux-image-arm64",),
            boot_mib=128,
            root_mib=1536,
            console="ttyAMA0,115200",
            data_mib=64,
            boot_files="direct",
            packages=("swtpm", "procps"),
            initramfs_list=("virtio_pci", "virtio_mmio", "virtio_blk", "ext4"),
            initramfs_why="virtio disk, ext4",
            kmods=("gpio-sim",),
            lab=True,
            data_timeout="10min",
        ),  # udev under TCG on a loaded host takes minutes
        ImageBoard("jetson-nano", "NVIDIA Jetson Nano (flash with L4T R32 + this rootfs)", "l4t"),
        ImageBoard("jetson-orin-nano", "NVIDIA Jetson Orin Nano (flash with L4T R36 / JetPack 6 + this rootfs)", "l4t"),
    )
}


def get_board(name: str) -> ImageBoard:
    try:
        return BOARDS[name]
    except KeyError:
        from .steps import BuildError

        raise BuildError(
            f"unknown board {name!r}", exit_code=64, hint=f"choose one of: {', '.join(sorted(BOARDS))}"
        ) from None
