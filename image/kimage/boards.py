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
    initramfs_modules: str = "most"  # initramfs-tools MODULES=; "list": only the hook's modules (virtio, ext4)
    data_timeout: str = "90s"  # how long systemd waits for the data partition (x-systemd.device-timeout)
    lab: bool = False  # the test lab: test channel, in-guest vTPM, gpio-sim chip (docs/image.md, "qemu-arm64")


_PI_KERNEL = ("linux-image-arm64", "raspi-firmware", "firmware-brcm80211")

BOARDS: dict[str, ImageBoard] = {
    b.name: b
    for b in (
        ImageBoard("rpi4", "Raspberry Pi 4 / CM4", "sd", _PI_KERNEL),
        ImageBoard("rpi-zero-2w", "Raspberry Pi Zero 2 W (512 MB RAM)", "sd", _PI_KERNEL, root_mib=1536),
        # Debian bookworm's 6.1 kernel predates Pi 5 support; backports' 6.12 boots it (no PCIe/RP1 extras).
        ImageBoard(
            "rpi5",
            "Raspberry Pi 5 / CM5 (kernel from bookworm-backports)",
            "sd",
            _PI_KERNEL,
            extra_suites=("bookworm-backports",),
            console="ttyAMA10,115200",
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
            initramfs_modules="list",
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
