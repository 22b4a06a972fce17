"""Boot a Raspberry Pi image under ``qemu-system-aarch64 -M raspi3b`` (TCG) and follow its console.

QEMU 7.2 emulates the Pi 3B (BCM2837, Cortex-A53 x4, 1 GiB): the SoC family of the Zero 2 W's
BCM2710A1, so the rpi-zero-2w image boots there with its own kernel, initrd and device tree, the
image as the SD card (QEMU's sdhost/SDHCI), the mini UART (the Zero 2 W's console, ttyS1) as the
serial console to a log. QEMU has no GPU firmware: it loads kernel, initrd and DTB itself
(``-kernel/-initrd/-dtb``), so ``config.txt`` and ``start.elf`` are not exercised. There is no
virtio on this board, hence no test channel: progress is read from the console (``MILESTONES``).
Every wait is bounded; a dead QEMU or a silent console is an error carrying the console's tail.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from .vm import MTOOLS_ENV, LabError, direct_boot, partitions, spawn, stop, tail

__all__ = ["MILESTONES", "PiVm", "pi_boot_files"]

# What the console shows on the way to READY, in order (regular expressions).
MILESTONES = (
    ("kernel", r"Linux version \d"),
    ("initramfs", r"Run /init as init process|Loading, please wait"),
    ("root mounted", r"EXT4-fs \(mmcblk0p2\): mounted"),
    ("systemd", r"systemd\[1\]: systemd \d+|Welcome to .*Debian"),
    ("first boot done", r"Finished kestrel-firstboot"),  # systemd shortens the unit name to the width
    ("READY", r"Started kestrel\.service"),  # Type=notify: systemd says Started after READY=1
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pi_boot_files(img: Path, dest: Path, *, dtb: str) -> tuple[Path, Path, Path, str]:
    """Kernel, initrd and ``dtb`` copied out of the image's FAT partition (the names config.txt
    gives), and its cmdline.txt."""
    offset = partitions(img)[0][0]
    dest.mkdir(parents=True, exist_ok=True)

    def read(name: str) -> bytes:
        return subprocess.run(
            ["mtype", "-i", f"{img}@@{offset}", f"::{name}"],
            env=MTOOLS_ENV,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout

    config = read("config.txt").decode()
    kernel = re.search(r"^kernel=(\S+)", config, re.M)
    initrd = re.search(r"^initramfs (\S+)", config, re.M)
    if not kernel or not initrd:
        raise LabError(f"{img}: config.txt names no kernel= or initramfs")
    out = []
    for name in (kernel.group(1), initrd.group(1), dtb):
        (dest / name).write_bytes(read(name))
        out.append(dest / name)
    return out[0], out[1], out[2], read("cmdline.txt").decode().strip()


class PiVm:
    """One raspi3b VM on a sparse copy of the image, grown to a power of two (QEMU's SD card)."""

    def __init__(self, image: Path, workdir: Path, *, dtb: str, append: str = "") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.disk = workdir / "sd.img"
        subprocess.run(["cp", "--sparse=always", str(image), str(self.disk)], check=True, timeout=300)
        size = self.disk.stat().st_size
        os.truncate(self.disk, 1 << (size - 1).bit_length())
        self.kernel, self.initrd, self.dtb, cmdline = pi_boot_files(self.disk, workdir / "boot", dtb=dtb)
        # The image's own command line, the console on the mini UART (QEMU's second serial port).
        args = [a for a in cmdline.split() if not a.startswith("console=")]
        self.cmdline = " ".join([*args, "console=ttyS1,115200", "systemd.show_status=1", append]).strip()
        self.console_path = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def argv(self) -> list[str]:
        return [
            "qemu-system-aarch64",
            "-M",
            "raspi3b",
            "-m",
            "1G",
            *direct_boot(self.kernel, self.initrd, self.cmdline),
            "-dtb",
            str(self.dtb),
            "-drive",
            f"file={self.disk},if=sd,format=raw,cache=unsafe",
            "-serial",
            "null",  # uart0 (PL011): the Wi-Fi/Bluetooth module's on a Zero 2 W
            "-serial",
            f"file:{self.console_path}",  # uart1 (mini UART): ttyS1
        ]

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = spawn(self.argv(), self.workdir)

    def console(self) -> str:
        """The console so far, without systemd's colour escapes."""
        try:
            return _ANSI.sub("", self.console_path.read_text(errors="replace"))
        except OSError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return tail(self.console(), lines)

    def follow(self, timeout: float, *, until: str = "READY") -> dict[str, float]:
        """Seconds since start at which each milestone first appeared, up to ``until``; raises
        LabError (with what was reached) if QEMU dies or ``until`` is not reached in time."""
        seen: dict[str, float] = {}
        deadline = self.started + timeout
        while True:
            text = self.console()
            for name, pattern in MILESTONES:
                if name not in seen and re.search(pattern, text):
                    seen[name] = round(time.monotonic() - self.started, 1)
            if until in seen:
                return seen
            if self.proc is not None and self.proc.poll() is not None:
                err = (self.workdir / "qemu.stderr").read_text(errors="replace")[-2000:]
                raise LabError(f"QEMU exited {self.proc.returncode} after {seen}: {err}\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"no {until} within {timeout:.0f} s; reached {seen}\n{self.console_tail()}")
            time.sleep(1)

    def kill(self) -> None:
        stop(self.proc)
        self.proc = None

    def __enter__(self) -> PiVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
