"""The qemu-arm64 lab image booted under qemu-system-aarch64 (TCG): Kestrel as a product on arm64.

Each test card is a fresh sparse copy of the built image: the owner's files are put on its boot
partition with mtools, as an owner does with a card reader; everything else is checked from the
host through the image's test channel (virtio-serial), never a network. Skipped, saying why, when
no lab image has been built (``./dev image --board qemu-arm64``; ``./dev image-test`` builds and runs).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kimage.cache import Cache
from kimage.disk import MIB, make_data_fs
from kimage.steps import Runner
from kimage.vm import LabError, LabVm, partitions, put_boot_file, qemu_available, read_boot_file

from .conftest import REPO, Owner

pytestmark = [pytest.mark.lab, pytest.mark.timeout(2400)]

BOOT_TIMEOUT = 900  # the bound for boot to READY under TCG
PROFILE_MEMORY_MB = 256  # board_profiles/qemu-arm64.yaml memory_budget_mb
KESTREL = "/usr/bin/kestrel"
TIMINGS = Path(os.environ.get("KESTREL_LAB_TIMINGS", "/tmp/kestrel-lab-timings.json"))


def lab_image() -> Path:
    img = Path(os.environ.get("KESTREL_LAB_IMAGE") or Cache.from_env().out / "qemu-arm64" / "kestrel-qemu-arm64.img")
    why = os.environ.get("KESTREL_LAB_SKIP") or qemu_available()
    if why:
        pytest.skip(f"lab image test skipped: {why}")
    if not img.exists():
        pytest.skip(f"lab image test skipped: no lab image at {img} (build it: ./dev image --board qemu-arm64)")
    return img


def as_kestrel(vm: LabVm, *args: str, check: bool = True, timeout: float = 300):
    return vm.run("runuser", "-u", "kestrel", "--", KESTREL, *args, check=check, timeout=timeout)


def wait_active(vm: LabVm, timeout: float = BOOT_TIMEOUT) -> None:
    """Until kestrel.service is active (READY=1); fails at once, with the journals, if it or first boot failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = vm.run("systemctl", "is-active", "kestrel.service", check=False).out
        if state == "active":
            return
        firstboot = vm.run("systemctl", "is-failed", "kestrel-firstboot.service", check=False).out
        data = vm.run("systemctl", "is-failed", "var-lib-kestrel.mount", check=False).out
        if state == "failed" or "failed" in (firstboot, data):
            raise LabError(
                f"kestrel.service {state}, kestrel-firstboot {firstboot}, data partition {data}:\n"
                f"{journal(vm, 'kestrel-firstboot')[-3000:]}\n{journal(vm, 'kestrel')[-3000:]}"
            )
        time.sleep(2)  # kept: a bounded poll of the guest; each check is a test-channel round trip
    raise LabError(f"kestrel.service not active within {timeout:.0f} s\n{vm.console_tail()}")


def identity(vm: LabVm) -> dict:
    return json.loads(as_kestrel(vm, "identity", "show", "--json", "--state", "/var/lib/kestrel").stdout)


def ota_counter(vm: LabVm) -> int:
    """The counter of the active bundle (kestrel ota status --json)."""
    st = json.loads(as_kestrel(vm, "ota", "status", "--json", "--state", "/var/lib/kestrel").stdout)
    assert st["active"] is not None and "error" not in st["active"], st
    assert st["active"]["counter"] == st["counter"], st
    return st["counter"]


def journal(vm: LabVm, unit: str) -> str:
    return vm.run("journalctl", "-b", "-u", unit, "--no-pager", "-o", "cat", check=False).stdout


def record(key: str, value: object) -> None:
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[key] = value
    TIMINGS.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def owner_json(owner: Owner, **extra: object) -> bytes:
    return json.dumps(
        {"format": "kestrel-owner/1", "owners": [owner.did], "threshold": 1, "groups": ["lab"], **extra}
    ).encode()


@pytest.fixture(scope="module")
def image() -> Path:
    return lab_image()


@pytest.fixture(scope="module")
def card_a(image: Path, owner: Owner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabVm]:
    """Card A: owner.json and an initial bundle on the boot partition; booted once for the tests below."""
    d = tmp_path_factory.mktemp("card-a")
    vm = LabVm.from_image(image, d)
    put_boot_file(vm.disk, "owner.json", owner_json(owner, name="lab-a"), tmp=d)
    put_boot_file(vm.disk, "initial.kbundle", owner.bundle(d / "b1.kbundle", counter=1).read_bytes(), tmp=d)
    try:
        vm.boot(BOOT_TIMEOUT)
        wait_active(vm)
        yield vm
    finally:
        vm.kill()


def test_first_boot_reaches_ready_with_a_tpm_identity(card_a: LabVm) -> None:
    vm = card_a
    ident = identity(vm)
    assert ident["backend"] == "tpm" and ident["algorithm"].lower().startswith(("p256", "ecdsa", "p-256")), ident
    assert vm.run("test", "-c", "/dev/tpmrm0", check=False).rc == 0
    # Type=notify: "active" means the daemon sent READY=1; the watchdog is armed.
    show = vm.run(
        "systemctl", "show", "-p", "Type,WatchdogUSec,ActiveEnterTimestampMonotonic,NRestarts", "kestrel.service"
    ).stdout
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    assert props["Type"] == "notify" and props["WatchdogUSec"] not in ("0", "infinity") and props["NRestarts"] == "0"
    ready_s = int(props["ActiveEnterTimestampMonotonic"]) / 1e6
    py = vm.run(
        "sh", "-c", "s=$(date +%s%N); /opt/kestrel/bin/python3 -c pass; e=$(date +%s%N); echo $(((e-s)/1000000))"
    )
    record("first_boot_to_ready_s", round(ready_s, 1))
    record("python_c_pass_ms", int(py.out))
    agent = json.loads(vm.run("cat", "/boot/firmware/kestrel/agent.json").stdout)
    assert agent["did"] == ident["did"] and agent["board"] == "qemu-arm64" and agent["backend"] == "tpm"
    # The consumed owner files are gone from the card; the bundle from it is active.
    assert vm.run("test", "-e", "/boot/firmware/kestrel/owner.json", check=False).rc == 1
    assert ota_counter(vm) == 1


def test_unit_memory_max_comes_from_the_board_profile(card_a: LabVm) -> None:
    out = card_a.run("systemctl", "show", "-p", "MemoryMax", "--value", "kestrel.service").out
    assert out == str(PROFILE_MEMORY_MB * MIB)
    dropin = card_a.run("cat", "/etc/systemd/system/kestrel.service.d/30-memory.conf").stdout
    assert f"memory_budget_mb: {PROFILE_MEMORY_MB}" in dropin


def test_audit_verify_passes_on_the_device(card_a: LabVm) -> None:
    res = as_kestrel(card_a, "audit", "verify", "--state", "/var/lib/kestrel", check=False)
    assert res.rc == 0, res.stderr + res.stdout


def test_gpiod_contract_suite_runs_against_the_kernel_gpio_chip(card_a: LabVm) -> None:
    vm = card_a
    assert "kestrel-lab" in vm.run(
        "sh", "-c", "cat /sys/bus/gpio/devices/*/label 2>/dev/null; for c in /dev/gpiochip*; do echo $c; done"
    ).stdout + journal(vm, "kestrel-gpio-sim")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel in (
            "pyproject.toml",
            "tests/__init__.py",
            "tests/conftest.py",
            "tests/io/__init__.py",
            "tests/io/conftest.py",
            "tests/io/test_gpio.py",
            "tests/io/test_gpio_gpiod.py",
        ):
            tar.add(REPO / rel, arcname=rel)
        for f in sorted((REPO / "tests/fixtures").glob("*.py")):
            tar.add(f, arcname=f"tests/fixtures/{f.name}")
    vm.put("/var/tmp/kestrel-tests.tar.gz", buf.getvalue())
    vm.run(
        "sh", "-c", "rm -rf /var/tmp/kt && mkdir /var/tmp/kt && tar -xzf /var/tmp/kestrel-tests.tar.gz -C /var/tmp/kt"
    )
    res = vm.run(
        "sh",
        "-c",
        "cd /var/tmp/kt && /opt/kestrel/bin/python3 -m pytest -p no:cacheprovider -q -rs "
        "-o addopts= -o timeout=600 tests/io/test_gpio.py tests/io/test_gpio_gpiod.py -k gpiod",
        check=False,
        timeout=1500,
    )
    out = res.stdout + res.stderr
    assert res.rc == 0, out[-4000:]
    summary = out.strip().splitlines()[-1]
    assert "passed" in summary and "failed" not in summary, out[-3000:]
    # The only skips allowed are the tests for machines without any GPIO chip; nothing skips for want of one.
    skips = [ln for ln in out.splitlines() if ln.startswith("SKIPPED")]
    assert all("this machine has GPIO chips" in ln for ln in skips), skips
    assert "gpio-sim" not in " ".join(skips)
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 10, summary  # the gpiod half of the contract suite ran, not only the translation tests
    record("gpiod_contract_passed", passed)


def test_bundle_from_the_test_channel_survives_a_reboot_with_the_same_identity(
    card_a: LabVm, owner: Owner, tmp_path: Path
) -> None:
    vm = card_a
    before = identity(vm)
    bundle = owner.bundle(tmp_path / "b2.kbundle", counter=2)
    vm.put("/var/tmp/b2.kbundle", bundle.read_bytes())
    res = as_kestrel(vm, "ota", "apply", "--state", "/var/lib/kestrel", "/var/tmp/b2.kbundle", check=False)
    assert res.rc == 0, res.stderr
    assert ota_counter(vm) == 2
    machine_id = vm.run("cat", "/etc/machine-id").out
    vm.poweroff()
    vm.boot(BOOT_TIMEOUT)
    wait_active(vm)
    ready = int(vm.run("systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "--value", "kestrel.service").out)
    record("reboot_to_ready_s", round(ready / 1e6, 1))
    after = identity(vm)
    assert after["did"] == before["did"] and after["backend"] == "tpm"
    assert vm.run("cat", "/etc/machine-id").out == machine_id
    # First-boot provisioning was skipped: its condition (no identity yet) was false.
    assert vm.run("systemctl", "show", "-p", "ConditionResult", "--value", "kestrel-firstboot.service").out == "no"
    assert ota_counter(vm) == 2
    res = as_kestrel(vm, "audit", "verify", "--state", "/var/lib/kestrel", check=False)
    assert res.rc == 0, res.stderr + res.stdout
    record("card_a_did", after["did"])


@pytest.fixture(scope="module")
def card_b(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabVm]:
    """Card B, the same image: no owner.json, no TPM (the vTPM masked) and a kernel that refuses gpio-sim."""
    d = tmp_path_factory.mktemp("card-b")
    vm = LabVm.from_image(image, d, append="systemd.mask=kestrel-vtpm.service module_blacklist=gpio_sim")
    try:
        vm.boot(BOOT_TIMEOUT)
        yield vm
    finally:
        vm.kill()


def test_second_card_has_its_own_identity_and_reports_what_is_missing(card_b: LabVm, card_a: LabVm) -> None:
    vm = card_b
    wait_active(vm)
    ident = identity(vm)
    assert ident["did"] != identity(card_a)["did"]
    assert ident["backend"] == "file"
    console, fb = vm.console(), journal(vm, "kestrel-firstboot")
    for text in (console, fb):
        assert "expects a TPM (device:/dev/tpmrm0) but /dev/tpmrm0 does not exist" in text
        assert "no /boot/firmware/kestrel/owner.json" in text
    gpio = journal(vm, "kestrel-gpio-sim")
    for text in (console, gpio):
        assert "cannot load gpio-sim" in text
    assert vm.run("cat", "/etc/machine-id").out != card_a.run("cat", "/etc/machine-id").out


def _card(image: Path, d: Path) -> LabVm:
    return LabVm.from_image(image, d)


def test_corrupt_owner_file_is_reported_and_the_device_stays_reachable(
    image: Path, owner: Owner, tmp_path: Path
) -> None:
    with _card(image, tmp_path) as vm:
        put_boot_file(vm.disk, "owner.json", b'{"format": "kestrel-owner/1", "owners": [', tmp=tmp_path)
        vm.boot(BOOT_TIMEOUT)
        vm.wait_for(["systemctl", "is-failed", "kestrel-firstboot.service"], until="failed", timeout=BOOT_TIMEOUT)
        assert "kestrel-firstboot failed" in vm.console() and "owner.json" in vm.console()
        assert "owner.json" in journal(vm, "kestrel-firstboot")
        assert vm.run("systemctl", "is-active", "kestrel.service", check=False).out == "inactive"
        assert vm.run("test", "-e", "/var/lib/kestrel/identity", check=False).rc == 1
        assert vm.run("test", "-e", "/boot/firmware/kestrel/owner.json", check=False).rc == 0  # left for the owner
        err = vm.run("cat", "/boot/firmware/kestrel/firstboot-error.txt").stdout
        assert "owner.json" in err
        vm.poweroff()
    assert b"owner.json" in (read_boot_file(vm.disk, "firstboot-error.txt") or b"")


def test_full_data_partition_is_reported_and_the_device_stays_reachable(
    image: Path, owner: Owner, tmp_path: Path
) -> None:
    with _card(image, tmp_path) as vm:
        put_boot_file(vm.disk, "owner.json", owner_json(owner), tmp=tmp_path)
        offset, size = partitions(vm.disk)[2]
        filler = tmp_path / "fill"
        filler.mkdir()
        with open(filler / "filler", "wb") as fh:  # a written file (no holes) as large as the partition allows
            fh.write(b"\xa5" * (size - 12 * MIB))
        data = tmp_path / "data.ext4"
        make_data_fs(
            data,
            size_mib=size // MIB,
            owner=(0, 0),
            uuid_="6b657374-7265-4c00-8000-000000000001",
            runner=Runner(),
            env={"TZ": "UTC"},
            fill_from=filler,
        )
        with open(vm.disk, "r+b") as dst, open(data, "rb") as src:
            dst.seek(offset)
            dst.write(src.read())
        vm.boot(BOOT_TIMEOUT)
        vm.wait_for(["systemctl", "is-failed", "kestrel-firstboot.service"], until="failed", timeout=BOOT_TIMEOUT)
        for text in (vm.console(), journal(vm, "kestrel-firstboot")):
            assert "is full" in text and "KESTREL_DATA" in text
        assert vm.run("systemctl", "is-active", "kestrel.service", check=False).out == "inactive"
        assert vm.run("true").rc == 0
