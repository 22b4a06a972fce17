"""The lab image's parts that run here without qemu: overlay extras, MemoryMax from the board profile,
the data partition, the guest's test-channel agent, and first boot on a data partition."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import tty
from pathlib import Path

import pytest

from kimage.boards import BOARDS
from kimage.disk import MIB, DiskLayout, assemble_image
from kimage.overlay import memory_dropin
from kimage.steps import BuildError, Runner

from .conftest import IMAGE, REPO, FakeSystem, Owner, kestrel

sys.path.insert(0, str(IMAGE / "lab"))
import testchan  # noqa: E402


@pytest.fixture(scope="module")
def lab_overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lab-out")
    proc = subprocess.run(
        [str(IMAGE / "build.sh"), "--board", "qemu-arm64", "--stage", "rootfs-overlay", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out / "qemu-arm64" / "overlay"


def test_lab_overlay_has_vtpm_gpio_sim_and_test_channel(lab_overlay: Path, overlay: Path) -> None:
    for unit, target in (
        ("kestrel-vtpm.service", "sysinit.target"),
        ("kestrel-gpio-sim.service", "multi-user.target"),
        ("kestrel-testchan.service", "multi-user.target"),
    ):
        assert (lab_overlay / "usr/lib/systemd/system" / unit).is_file()
        assert (lab_overlay / f"etc/systemd/system/{target}.wants" / unit).is_symlink()
        assert not (overlay / "usr/lib/systemd/system" / unit).exists()  # never in a product image (rpi4)
    assert os.access(lab_overlay / "usr/lib/kestrel/lab/gpio-sim-setup", os.X_OK)
    assert "kestrel-test" not in (overlay / "opt/kestrel/requirements.txt").read_text()
    assert "test]" in (lab_overlay / "opt/kestrel/requirements.txt").read_text()  # pytest for the contract suite
    assert not (lab_overlay / "etc/default/raspi-firmware").exists()


def test_both_images_mount_the_data_partition_at_the_state_directory(lab_overlay: Path, overlay: Path) -> None:
    for tree in (lab_overlay, overlay):
        fstab = (tree / "etc/fstab").read_text()
        line = next(ln for ln in fstab.splitlines() if ln.startswith("LABEL=KESTREL_DATA"))
        assert line.split()[1] == "/var/lib/kestrel" and "nofail" in line
        assert (
            "RequiresMountsFor=/var/lib/kestrel"
            in (tree / "etc/systemd/system/kestrel.service.d/15-data.conf").read_text()
        )


@pytest.mark.parametrize("board", ["rpi4", "rpi5", "rpi-zero-2w", "qemu-arm64"])
def test_memory_max_is_the_board_profiles_budget(board: str) -> None:
    text = (REPO / "board_profiles" / f"{board}.yaml").read_text()
    budget = int(next(ln for ln in text.splitlines() if ln.startswith("memory_budget_mb:")).split()[1])
    dropin = memory_dropin(text, board=board)
    assert f"MemoryMax={budget}M\n" in dropin and f"MemoryHigh={budget * 3 // 4}M\n" in dropin
    with pytest.raises(BuildError, match="memory_budget_mb"):
        memory_dropin("name: x\n", board="x")


def test_lab_overlay_unit_memory_dropin_matches_its_profile(lab_overlay: Path) -> None:
    dropin = (lab_overlay / "etc/systemd/system/kestrel.service.d/30-memory.conf").read_text()
    assert "MemoryMax=256M" in dropin and BOARDS["qemu-arm64"].lab


def test_disk_with_a_data_partition(tmp_path: Path) -> None:
    boot, root = tmp_path / "boot", tmp_path / "root"
    (boot / "kestrel").mkdir(parents=True)
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nkestrel:x:993:991::/var/lib/kestrel:/usr/sbin/nologin\n"
    )
    (root / "var/lib/kestrel").mkdir(parents=True)
    layout = DiskLayout(boot_mib=64, root_mib=32, data_mib=16)
    assert layout.sfdisk_script(disk_id="00000000").count("type=83") == 2
    img = assemble_image(boot, root, tmp_path / "k.img", layout=layout, runner=Runner(), epoch=1700000000, seed="d")
    assert img.stat().st_size == layout.total_bytes
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    p3 = table["partitions"][2]
    assert (p3["start"] * 512, p3["size"] * 512, p3["type"]) == (layout.data_offset, 16 * MIB, "83")
    data = tmp_path / "data.ext4"
    with open(img, "rb") as src, open(data, "wb") as dst:
        src.seek(layout.data_offset)
        dst.write(src.read(16 * MIB))
    stats = subprocess.run(["debugfs", "-R", "stats", str(data)], capture_output=True, text=True).stdout
    assert "KESTREL_DATA" in stats
    root_stat = subprocess.run(["debugfs", "-R", "stat /", str(data)], capture_output=True, text=True).stdout
    assert "User:   993" in root_stat and "Group:   991" in root_stat  # the daemon's user owns the state
    listing = subprocess.run(["debugfs", "-R", "ls -l /", str(data)], capture_output=True, text=True).stdout
    assert "identity" not in listing  # empty: no identity baked in


# -- the guest's test-channel agent ---------------------------------------------------------------
def test_channel_runs_commands_and_writes_files(tmp_path: Path) -> None:
    pong = testchan.handle({"id": 1, "op": "ping"})
    assert pong["id"] == 1 and len(pong["boot_id"]) == 36 and pong["uptime"] > 0
    res = testchan.handle(
        {
            "id": 2,
            "op": "run",
            "argv": ["sh", "-c", "cat; echo err >&2; exit 3"],
            "stdin": base64.b64encode(b"hello").decode(),
            "timeout": 30,
        }
    )
    assert (res["rc"], base64.b64decode(res["stdout"]), base64.b64decode(res["stderr"])) == (3, b"hello", b"err\n")
    assert testchan.handle({"id": 3, "op": "run", "argv": ["sleep", "5"], "timeout": 0.2})["rc"] == 124
    assert testchan.handle({"id": 4, "op": "run", "argv": ["/nonexistent/x"]})["rc"] == 127
    assert "argv" in testchan.handle({"id": 5, "op": "run", "argv": "ls"})["error"]
    assert "unknown op" in testchan.handle({"id": 6, "op": "format-disk"})["error"]
    target = tmp_path / "f"
    assert (
        testchan.handle(
            {"id": 7, "op": "put", "path": str(target), "data": base64.b64encode(b"x").decode(), "mode": 0o600}
        )["rc"]
        == 0
    )
    assert target.read_bytes() == b"x" and (target.stat().st_mode & 0o777) == 0o600


def test_channel_serves_a_port_and_answers_garbage_with_an_error() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    name = os.ttyname(slave)
    threading.Thread(target=testchan.serve, args=(name,), daemon=True).start()
    os.write(master, b"this is not json\n" + json.dumps({"id": 9, "op": "ping"}).encode() + b"\n")
    buf = b""
    while buf.count(b"\n") < 2:
        buf += os.read(master, 4096)
    first, second = (json.loads(line) for line in buf.splitlines()[:2])
    assert first["id"] is None and "malformed" in first["error"]
    assert second["id"] == 9 and "boot_id" in second


# -- first boot when /var/lib/kestrel is the data partition ------------------------------------------
def test_first_boot_commits_into_the_data_partition(system: FakeSystem, owner: Owner) -> None:
    system.write_owner(owners=[owner.did], threshold=1, name="lab-one", groups=["lab"])
    owner.bundle(system.boot / "initial.kbundle", group="lab")
    (system.state / "lost+found").mkdir()  # a fresh ext4 file system has one
    proc = system.firstboot("--data-partition", "yes")
    assert proc.returncode == 0, proc.stderr
    assert {"identity", "ledger", "lost+found"} <= {p.name for p in system.state.iterdir()}
    assert not (system.state / ".kestrel-firstboot").exists()
    assert not (system.root / "var/lib/kestrel-firstboot").exists()
    kestrel("audit", "verify", "--state", str(system.state))
    again = system.firstboot("--data-partition", "yes")  # a second boot changes nothing
    assert again.returncode == 0 and "already has an identity" in again.stdout


def test_first_boot_refuses_a_data_partition_holding_something_else(system: FakeSystem, owner: Owner) -> None:
    system.write_owner(owners=[owner.did], threshold=1)
    (system.state / "ledger").mkdir()
    proc = system.firstboot("--data-partition", "yes")
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (system.state / "ledger").is_dir() and not (system.state / "identity").exists()


def test_first_boot_resumes_an_interrupted_commit(system: FakeSystem, owner: Owner) -> None:
    """A power cut between the moves of the commit: the next boot finishes moving, identity last."""
    system.write_owner(owners=[owner.did], threshold=1)
    proc = system.firstboot("--data-partition", "yes")
    assert proc.returncode == 0, proc.stderr
    work = system.state / ".kestrel-firstboot"
    (work / "state").mkdir(parents=True)
    for name in [p.name for p in system.state.iterdir() if p.name not in (".kestrel-firstboot", "ledger")]:
        os.rename(system.state / name, work / "state" / name)  # as if only "ledger" had been moved
    (work / "committing").write_bytes(b"")
    agent = json.loads((system.boot / "agent.json").read_text())
    (work / "complete.json").write_text(
        json.dumps({"format": "kestrel-firstboot-receipt/1", "bundle": None, "consumed": {}, "agent": agent})
    )
    resumed = system.firstboot("--data-partition", "yes")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming an interrupted commit" in resumed.stdout
    assert (system.state / "identity").is_dir() and not work.exists()
    kestrel("audit", "verify", "--state", str(system.state))


def test_profile_that_expects_a_tpm_says_so_when_there_is_none(system: FakeSystem, owner: Owner) -> None:
    (system.root / "proc-model").write_text("linux,dummy-virt\0")  # QEMU virt: the qemu-arm64 profile
    system.write_owner(owners=[owner.did], threshold=1)
    proc = system.firstboot()
    assert proc.returncode == 0, proc.stderr
    assert "the board profile qemu-arm64 expects a TPM (device:/dev/tpmrm0)" in proc.stdout
    assert json.loads(kestrel("identity", "show", "--json", "--state", str(system.state)).stdout)["backend"] == "file"


def _newc(names: list[str]) -> bytes:
    out = b""
    for i, name in enumerate(names + ["TRAILER!!!"]):
        data = b"" if name == "TRAILER!!!" else name.encode()
        fields = [i + 1, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        out += hdr + b"\0" * (-len(hdr) % 4) + data + b"\0" * (-len(data) % 4)
    return out


def test_initramfs_listing_finds_what_the_lab_boot_needs(tmp_path: Path) -> None:
    import gzip

    from kimage.rootfs import initramfs_names

    names = ["init", "usr/bin/sh", "usr/lib/modules/6.1.0-50-arm64/kernel/drivers/block/virtio_blk.ko"]
    (tmp_path / "initrd.gz").write_bytes(gzip.compress(_newc(names)))
    assert initramfs_names(tmp_path / "initrd.gz") == set(names)
    (tmp_path / "plain").write_bytes(_newc(["conf/initramfs.conf"]))
    assert initramfs_names(tmp_path / "plain") == {"conf/initramfs.conf"}
