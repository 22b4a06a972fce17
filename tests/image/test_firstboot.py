"""First boot against a fake root and boot partition, with the real kestrel CLI (no mocks)."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys

import pytest

from .conftest import IMAGE, KESTREL, MACHINE_ID, FakeSystem, Owner, kestrel


def _identity(state) -> dict:
    return json.loads(kestrel("identity", "show", "--json", "--state", str(state)).stdout)


def _assert_untouched(system: FakeSystem, before: dict[str, bytes]) -> None:
    """A refused first boot changes nothing: boot files intact, no identity, no work dir."""
    for name, data in before.items():
        assert (system.boot / name).read_bytes() == data, f"{name} changed"
    assert not (system.state / "identity").exists()
    assert not (system.root / "var/lib/kestrel-firstboot").exists()
    assert not (system.root / "etc/systemd/system/multi-user.target.wants/kestrel.service").exists()


def _snapshot(system: FakeSystem) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in system.boot.iterdir()}


def test_provisions_identity_owner_settings_config_and_bundle(system: FakeSystem, owner: Owner) -> None:
    system.write_owner(owners=[owner.did], threshold=1, name="pi-one", groups=["lab"])
    device_yaml = "version: 1\nname: pi-one\n"
    (system.boot / "device.yaml").write_text(device_yaml)
    owner.bundle(system.boot / "initial.kbundle", group="lab")

    proc = system.firstboot()
    assert proc.returncode == 0, proc.stderr

    ident = _identity(system.state)
    assert ident["name"] == "pi-one" and ident["backend"] == "file" and ident["protection"] == "machine-bound"
    prov = json.loads((system.state / "identity/provisioning.json").read_text())
    assert prov == {"format": "kestrel-provisioning/1", "owners": [owner.did], "threshold": 1}
    assert json.loads((system.state / "ota/groups.json").read_text()) == ["lab"]
    status = kestrel("ota", "status", "--state", str(system.state)).stdout
    assert "counter" in status and "1" in status
    # the ledger holds agent.created and ota.applied and verifies against the new AgentID
    kestrel("audit", "verify", "--state", str(system.state))
    log = kestrel("audit", "log", "--state", str(system.state)).stdout
    assert "agent.created" in log and "ota.applied" in log
    # device config installed privately, unit enabled, state private, secrets gone from boot
    config = system.root / "etc/kestrel/device.yaml"
    assert config.read_text() == device_yaml
    assert stat.S_IMODE(config.stat().st_mode) == 0o640  # even under the unit's UMask=0077
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o755
    assert (system.root / "etc/systemd/system/multi-user.target.wants/kestrel.service").is_symlink()
    assert stat.S_IMODE(system.state.stat().st_mode) == 0o700
    for name in ("owner.json", "device.yaml", "initial.kbundle"):
        assert not (system.boot / name).exists(), f"{name} left on the boot partition"
    agent = json.loads((system.boot / "agent.json").read_text())
    assert agent["did"] == ident["did"] and agent["board"] == "rpi4"
    assert not (system.root / "var/lib/kestrel-firstboot").exists()
    assert not (system.boot / "firstboot-error.txt").exists()


def test_second_run_never_replaces_the_identity(system: FakeSystem, owner: Owner) -> None:
    system.write_owner(owners=[owner.did])
    assert system.firstboot().returncode == 0
    first = _identity(system.state)
    key = (system.state / "identity/key.enc").read_bytes()
    newer = system.write_owner(owners=[owner.did], name="replacement")  # the owner edits the card again
    leftover = system.root / "var/lib/kestrel-firstboot/inputs/device.yaml"  # cut off after a commit
    leftover.parent.mkdir(parents=True)
    leftover.write_text("version: 1\nname: old\n")

    proc = system.firstboot()
    assert proc.returncode == 0, proc.stderr
    assert "already has an identity" in proc.stdout
    assert _identity(system.state) == first
    assert (system.state / "identity/key.enc").read_bytes() == key
    assert newer.exists(), "a file first boot did not consume must stay on the boot partition"
    assert not leftover.parent.parent.exists()


def test_without_owner_file_creates_an_identity_and_warns(system: FakeSystem) -> None:
    proc = system.firstboot()
    assert proc.returncode == 0, proc.stderr
    assert "no owner keys" in proc.stdout
    ident = _identity(system.state)
    assert ident["name"] == f"kestrel-{MACHINE_ID[:8]}"
    assert not (system.state / "identity/provisioning.json").exists()


def test_each_card_gets_its_own_agent_id(system: FakeSystem, short_tmp) -> None:
    tmp_path = short_tmp
    other_mid = tmp_path / "other-mid"
    other_mid.write_text("fedcba9876543210fedcba9876543210\n")
    other_root = tmp_path / "other"
    (other_root / "usr/lib/systemd/system").mkdir(parents=True)
    for unit in ("kestrel.service", "kestrel-firstboot.service"):
        (other_root / "usr/lib/systemd/system" / unit).write_bytes(
            (system.root / "usr/lib/systemd/system" / unit).read_bytes()
        )
    other = FakeSystem(root=other_root, boot=tmp_path / "other-boot", machine_id=other_mid)
    assert system.firstboot().returncode == 0
    assert other.firstboot().returncode == 0
    assert _identity(system.state)["did"] != _identity(other.state)["did"]


BAD_OWNER_FILES = {
    "not-json": b"{owners: nope",
    "not-utf8": b"\xff\xfe\x00garbage",
    "wrong-format": json.dumps({"format": "kestrel-owner/9", "owners": ["did:key:z6Mkx"]}).encode(),
    "unknown-key": None,  # filled in with the owner's DID below
    "threshold-too-high": None,
    "not-a-did": json.dumps({"format": "kestrel-owner/1", "owners": ["ssh-ed25519 AAAA"]}).encode(),
    "duplicate-key": b'{"format": "kestrel-owner/1", "format": "kestrel-owner/1", "owners": []}',
    "bad-did-key": json.dumps({"format": "kestrel-owner/1", "owners": ["did:key:zNotAKey"]}).encode(),
}


@pytest.mark.parametrize("case", sorted(BAD_OWNER_FILES))
def test_bad_owner_file_is_refused_and_nothing_is_lost(system: FakeSystem, owner: Owner, case: str) -> None:
    data = BAD_OWNER_FILES[case]
    if case == "unknown-key":
        data = json.dumps({"format": "kestrel-owner/1", "owners": [owner.did], "treshold": 1}).encode()
    elif case == "threshold-too-high":
        data = json.dumps({"format": "kestrel-owner/1", "owners": [owner.did], "threshold": 2}).encode()
    system.boot.mkdir(parents=True)
    (system.boot / "owner.json").write_bytes(data)
    (system.boot / "device.yaml").write_text("version: 1\nname: x\n")
    before = _snapshot(system)

    proc = system.firstboot()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "owner.json" in proc.stderr or "--owner" in proc.stderr
    error = (system.boot / "firstboot-error.txt").read_text()
    assert "kestrel-firstboot failed" in error
    _assert_untouched(system, before)


def test_bad_device_yaml_names_file_and_line(system: FakeSystem, owner: Owner) -> None:
    system.write_owner(owners=[owner.did])
    (system.boot / "device.yaml").write_text("version: 1\nname: x\nsensors:\n  s: {type: warp-drive}\n")
    before = _snapshot(system)
    proc = system.firstboot()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "device.yaml:4" in proc.stderr, proc.stderr
    _assert_untouched(system, before)


@pytest.mark.parametrize("problem", ["unsigned", "wrong-group", "garbage"])
def test_bad_bundle_is_refused_and_nothing_is_committed(system: FakeSystem, owner: Owner, problem: str) -> None:
    system.write_owner(owners=[owner.did], groups=["lab"])
    bundle = system.boot / "initial.kbundle"
    if problem == "garbage":
        bundle.write_bytes(b"KESTREL?" + os.urandom(200))
    else:
        owner.bundle(bundle, group="other" if problem == "wrong-group" else "lab", sign=problem != "unsigned")
    before = _snapshot(system)
    proc = system.firstboot()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "initial.kbundle" in proc.stderr and "Traceback" not in proc.stderr
    _assert_untouched(system, before)
    assert not any(system.state.iterdir()), "a refused first boot must leave the state directory empty"


def test_bundle_without_owner_is_refused(system: FakeSystem, owner: Owner) -> None:
    system.boot.mkdir(parents=True)
    owner.bundle(system.boot / "initial.kbundle")
    before = _snapshot(system)
    proc = system.firstboot()
    assert proc.returncode == 2 and "no owner.json" in proc.stderr
    _assert_untouched(system, before)


def test_required_tpm_missing_is_a_clear_transport_error(system: FakeSystem, owner: Owner) -> None:
    system.write_owner(owners=[owner.did], keystore="tpm")
    before = _snapshot(system)
    proc = system.firstboot()
    assert proc.returncode == 3 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    _assert_untouched(system, before)


def test_state_dir_with_foreign_content_is_not_mixed(system: FakeSystem, owner: Owner) -> None:
    system.write_owner(owners=[owner.did])
    stray = system.state / "ledger" / "00000000000000000000.seg"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"someone else's ledger")
    before = _snapshot(system)
    proc = system.firstboot()
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert stray.read_bytes() == b"someone else's ledger"
    _assert_untouched(system, before)
    (system.state / "ledger").rename(system.root / "moved-ledger")  # the owner moves it away
    proc = system.firstboot()
    assert proc.returncode == 0, proc.stderr
    assert _identity(system.state)["backend"] == "file"


def test_interrupted_first_boot_resumes_or_starts_over(system: FakeSystem, owner: Owner) -> None:
    """A power cut after the receipt resumes with the same key; before it, starts over."""
    system.write_owner(owners=[owner.did])
    code = (
        "import argparse\n"
        "import firstboot as fb\n"
        "from pathlib import Path\n"
        f"opts = argparse.Namespace(root=Path({str(system.root)!r}), boot=Path({str(system.boot)!r}),"
        f" kestrel={KESTREL!r}, user={pwd.getpwuid(os.getuid()).pw_name!r},"
        f" tpm_device='/nonexistent', tcti=None, model_path='/nonexistent', machine_id_file={str(system.machine_id)!r},"
        " no_start=True)\n"
        "layout = fb.Layout(root=opts.root, boot=opts.boot)\n"
        "r = fb.build_state(layout, fb.read_boot_inputs(layout.boot), opts)\n"
        "print(r['agent']['did'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(IMAGE / "firstboot")}
    env.pop("KESTREL_STATE", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    did = proc.stdout.strip().splitlines()[-1]
    assert (system.boot / "owner.json").exists() and not (system.state / "identity").exists()

    resumed = system.firstboot()
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert _identity(system.state)["did"] == did
    assert not (system.boot / "owner.json").exists()


def test_damaged_receipt_is_a_clear_error(system: FakeSystem, owner: Owner) -> None:
    system.write_owner(owners=[owner.did])
    receipt = system.root / "var/lib/kestrel-firstboot/complete.json"
    receipt.parent.mkdir(parents=True)
    receipt.write_bytes(b'{"format": "kestrel-firstboot-receipt/1", "consu')
    proc = system.firstboot()
    assert proc.returncode == 2 and "is damaged" in proc.stderr and "Traceback" not in proc.stderr
    assert (system.boot / "owner.json").exists() and receipt.exists()


def test_unfinished_work_without_receipt_is_discarded(system: FakeSystem, owner: Owner) -> None:
    system.write_owner(owners=[owner.did])
    junk = system.root / "var/lib/kestrel-firstboot/state/identity/identity.json"
    junk.parent.mkdir(parents=True)
    junk.write_text("half written")
    proc = system.firstboot()
    assert proc.returncode == 0, proc.stderr
    assert "discarding" in proc.stdout
    assert _identity(system.state)["backend"] == "file"


@pytest.mark.swtpm
def test_tpm_identity_and_bundle_survive_a_cut_after_the_tpm_counter_moved(
    system: FakeSystem, owner: Owner, swtpm
) -> None:
    """On a TPM device `ota apply` raises the TPM counter: a first boot cut off after it must resume
    with the same state (a fresh state would be older than the TPM and refused as a rollback)."""
    system.write_owner(owners=[owner.did], keystore="tpm", groups=["lab"])
    owner.bundle(system.boot / "initial.kbundle", group="lab")
    cut = subprocess.run(
        [*system.firstboot_cmd("--tcti", swtpm.tcti)[:-2], "--user", "no-such-user"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cut.returncode == 64 and "no user 'no-such-user'" in cut.stderr  # fails right after `ota apply`
    assert (system.boot / "initial.kbundle").exists() and not (system.state / "identity").exists()

    proc = system.firstboot("--tcti", swtpm.tcti)
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout
    ident = _identity(system.state)
    assert ident["backend"] == "tpm" and ident["algorithm"] == "p256"
    assert not (system.state / "identity/key.enc").exists()
    assert "counter" in kestrel("ota", "status", "--state", str(system.state)).stdout
    kestrel("audit", "verify", "--state", str(system.state))  # agent.created + ota.applied, signed in the TPM
    assert "ota.applied" in kestrel("audit", "log", "--state", str(system.state)).stdout
    assert json.loads((system.boot / "agent.json").read_text())["backend"] == "tpm"
    assert not (system.boot / "initial.kbundle").exists()
