"""The rpi-zero-2w SD-card image booted under ``qemu-system-aarch64 -M raspi3b`` (TCG): the Pi
image's own kernel, initrd and Zero 2 W device tree, the image as the SD card, to kestrel.service
READY on the serial console (image/kimage/pivm.py; docs/image.md, "The Pi image under QEMU").

Opt-in (``-m slow``: 10-25 min on two shared cores) and skipped, saying why, without QEMU or
without a built image (``./dev image --board rpi-zero-2w``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kimage.pivm import MILESTONES, PiVm
from kimage.vm import MTOOLS_ENV, partitions

CACHE = Path(os.environ.get("KESTREL_IMAGE_CACHE", "/var/cache/kestrel-image"))
IMAGE = CACHE / "out/rpi-zero-2w/kestrel-rpi-zero-2w.img"
TIMEOUT = float(os.environ.get("KESTREL_PI_BOOT_TIMEOUT", "1800"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(TIMEOUT) + 300)]


@pytest.fixture
def image() -> Path:
    for tool in ("qemu-system-aarch64", "sfdisk", "mtype"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install qemu-system-arm fdisk mtools)")
    if not IMAGE.exists():
        pytest.skip(f"no rpi-zero-2w image at {IMAGE} (build it: ./dev image --board rpi-zero-2w)")
    return IMAGE


def test_zero_2w_image_boots_to_ready_on_raspi3b(image: Path, tmp_path: Path) -> None:
    with PiVm(image, tmp_path, dtb="bcm2837-rpi-zero-2-w.dtb") as vm:
        assert "root=LABEL=KESTREL_ROOT" in vm.cmdline.split()  # the image's own cmdline.txt
        vm.start()
        seen = vm.follow(TIMEOUT)
        console = vm.console()
    print(f"\nraspi3b boot milestones (s since QEMU start): {json.dumps(seen)}")
    assert list(seen) == [name for name, _ in MILESTONES]  # in order, none skipped
    assert list(seen.values()) == sorted(seen.values())
    assert "Traceback" not in console
    assert "Kernel panic" not in console
    # First boot wrote the public facts onto the card's boot partition: the board was detected
    # from the device tree (no TPM on this board: the machine-bound file keystore).
    agent = subprocess.run(
        ["mtype", "-i", f"{vm.disk}@@{partitions(vm.disk)[0][0]}", "::kestrel/agent.json"],
        env=MTOOLS_ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    facts = json.loads(agent)
    assert facts["board"] == "rpi-zero-2w" and facts["did"].startswith("did:key:") and facts["backend"] == "file"
