"""A/B apply, health checks, rollback, status and the three delivery paths."""

from __future__ import annotations

import hashlib
import time

import pytest

from kestrel.errors import DataError
from kestrel.ota import (
    active_policy,
    apply_bundle,
    apply_message,
    ota_status,
    rollback,
    scan_drop_dir,
)
from kestrel.ota.errors import BundleError, BundleHealthError
from kestrel.ota.store import OtaDir
from kestrel.policy import PolicyEngine

from .conftest import POLICY_V1, POLICY_V2, Device

MAIL = {"to": "alice@example.com", "subject": "status"}


def _policy_digest(dev: Device) -> str:
    found = active_policy(dev.state)
    assert found is not None
    return found[0].digest


def test_no_bundle_means_no_policy(device: Device) -> None:
    assert active_policy(device.state) is None
    assert ota_status(device.state, ledger=device.ledger, now=device.now)["active"] is None


def test_apply_switches_slots_and_records(device: Device) -> None:
    r1 = apply_bundle(device.state, device.bundle(counter=1, policy=POLICY_V1), ledger=device.ledger, now=device.now)
    r2 = apply_bundle(device.state, device.bundle(counter=2, policy=POLICY_V2), ledger=device.ledger, now=device.now)
    assert (r1.slot, r2.slot, r2.previous_slot) == ("a", "b", "a")
    assert _policy_digest(device) == hashlib.sha256(POLICY_V2).hexdigest()
    applied = device.kinds("ota.applied")
    assert [a["counter"] for a in applied] == [1, 2]
    assert applied[-1]["bundle"] == r2.digest and applied[-1]["slot"] == "b"
    assert applied[-1]["signed_by"] == [device.owners[0].public_key.did]
    st = ota_status(device.state, ledger=device.ledger, now=device.now)
    assert st["counter"] == 2 and st["active"]["slot"] == "b" and st["previous"]["slot"] == "a"


def test_reapplying_active_bundle_is_a_no_op(device: Device) -> None:
    data = device.bundle(counter=1)
    apply_bundle(device.state, data, ledger=device.ledger, now=device.now)
    again = apply_bundle(device.state, data, ledger=device.ledger, now=device.now)
    assert again.changed is False
    assert len(device.kinds("ota.applied")) == 1


def test_rollback_and_forward_again(device: Device) -> None:
    apply_bundle(device.state, device.bundle(counter=1, policy=POLICY_V1), ledger=device.ledger, now=device.now)
    v2 = device.bundle(counter=2, policy=POLICY_V2)
    apply_bundle(device.state, v2, ledger=device.ledger, now=device.now)
    back = rollback(device.state, ledger=device.ledger)
    assert back.slot == "a" and _policy_digest(device) == hashlib.sha256(POLICY_V1).hexdigest()
    assert device.kinds("ota.rollback")[-1]["reason"] == "operator"
    # The counter is not lowered by a rollback; the same newer bundle may be re-applied.
    assert ota_status(device.state, ledger=device.ledger, now=device.now)["counter"] == 2
    apply_bundle(device.state, v2, ledger=device.ledger, now=device.now)
    assert _policy_digest(device) == hashlib.sha256(POLICY_V2).hexdigest()


def test_rollback_without_previous(device: Device) -> None:
    with pytest.raises(BundleError) as info:
        rollback(device.state, ledger=device.ledger)
    assert info.value.code == "no-previous"
    apply_bundle(device.state, device.bundle(counter=1), ledger=device.ledger, now=device.now)
    with pytest.raises(BundleError):
        rollback(device.state, ledger=device.ledger)


def test_rollback_refuses_damaged_previous_slot(device: Device) -> None:
    apply_bundle(device.state, device.bundle(counter=1, policy=POLICY_V1), ledger=device.ledger, now=device.now)
    apply_bundle(device.state, device.bundle(counter=2, policy=POLICY_V2), ledger=device.ledger, now=device.now)
    (device.state / "ota" / "slots" / "a" / "policy.yaml").write_bytes(b"actions: [everything]\n")
    with pytest.raises(BundleError) as info:
        rollback(device.state, ledger=device.ledger)
    assert info.value.code == "previous-damaged"
    assert _policy_digest(device) == hashlib.sha256(POLICY_V2).hexdigest()


@pytest.mark.parametrize(
    "check,code",
    [
        (lambda slot: (_ for _ in ()).throw(RuntimeError("model did not load")), "health-failed"),
        (lambda slot: False, "health-failed"),
        (lambda slot: time.sleep(2), "health-timeout"),  # kept: a check that outlasts the timeout is the test
    ],
)
def test_failed_health_check_rolls_back(device: Device, check, code: str) -> None:
    apply_bundle(device.state, device.bundle(counter=1, policy=POLICY_V1), ledger=device.ledger, now=device.now)
    with pytest.raises(BundleHealthError) as info:
        apply_bundle(
            device.state,
            device.bundle(counter=2),
            ledger=device.ledger,
            now=device.now,
            health=check,
            health_window=0.3,
        )
    assert info.value.code == code
    assert _policy_digest(device) == hashlib.sha256(POLICY_V1).hexdigest()
    assert device.kinds("ota.rollback")[-1]["reason"] == code
    assert ota_status(device.state, ledger=device.ledger, now=device.now)["counter"] == 1
    assert not (device.state / "ota" / "slots" / "b").exists()


def test_health_check_sees_staged_slot(device: Device) -> None:
    seen = []
    apply_bundle(
        device.state,
        device.bundle(counter=1, models=(("tiny.onnx", b"\x08\x07onnx"),)),
        ledger=device.ledger,
        now=device.now,
        health=lambda slot: seen.append((slot / "tiny.onnx").read_bytes()),
    )
    assert seen == [b"\x08\x07onnx"]


def test_tampered_active_slot_denies_everything(device: Device) -> None:
    apply_bundle(device.state, device.bundle(counter=1, policy=POLICY_V1), ledger=device.ledger, now=device.now)
    (device.state / "ota" / "slots" / "a" / "policy.yaml").write_bytes(b"actions: [rm_rf]\n")
    engine = PolicyEngine(device.state, device.ledger)
    d = engine.decide("rm_rf", {})
    assert not d.allowed and d.rule == "default-deny"
    assert "does not match" in device.kinds("policy.decision")[-1]["reason"]
    assert not engine.decide("send_email", MAIL).allowed
    (device.state / "ota" / "slots" / "a" / "policy.yaml").write_bytes(POLICY_V1)  # repaired
    assert engine.decide("send_email", MAIL).allowed


def test_mqtt_payload_same_path(device: Device) -> None:
    res = apply_message(device.state, device.bundle(counter=1), ledger=device.ledger, now=device.now)
    assert device.kinds("ota.applied")[-1]["source"] == "mqtt" and res.counter == 1
    with pytest.raises(BundleError):
        apply_message(device.state, b"garbage from the topic", ledger=device.ledger, now=device.now)
    rej = device.kinds("ota.rejected")[-1]
    assert rej["source"] == "mqtt" and rej["reason"] == "bad-magic"


def test_drop_dir_applies_once(device: Device, tmp_path) -> None:
    drop = tmp_path / "usb"
    drop.mkdir()
    (drop / "v1.kbundle").write_bytes(device.bundle(counter=1))
    (drop / "junk.kbundle").write_bytes(b"not a bundle")
    (drop / "notes.txt").write_text("ignored")
    results = scan_drop_dir(device.state, drop, ledger=device.ledger, now=device.now)
    assert sorted(p.name for p, _ in results) == ["junk.kbundle", "v1.kbundle"]
    assert _policy_digest(device) == hashlib.sha256(POLICY_V2).hexdigest()
    assert scan_drop_dir(device.state, drop, ledger=device.ledger, now=device.now) == []
    assert len(device.kinds("ota.rejected")) == 1
    assert scan_drop_dir(device.state, tmp_path / "absent", ledger=device.ledger, now=device.now) == []


def test_counter_bound_to_ledger_across_reopen(device: Device, tmp_path) -> None:
    apply_bundle(device.state, device.bundle(counter=9), ledger=device.ledger, now=device.now)
    (device.state / "ota" / "counter.json").write_text('{"counter": 0, "digest": null}')
    ota = OtaDir(device.state)
    from kestrel.ota.apply import current_counter

    assert current_counter(ota, device.ledger)[0] == 9


def test_corrupt_pointer_fails_closed_then_repairs(device: Device) -> None:
    apply_bundle(device.state, device.bundle(counter=1, policy=POLICY_V1), ledger=device.ledger, now=device.now)
    (device.state / "ota" / "active.json").write_text('{"active": "garbage"')
    with pytest.raises(DataError):
        active_policy(device.state)
    d = PolicyEngine(device.state, device.ledger).decide("send_email", MAIL)
    assert not d.allowed and d.rule == "default-deny"
    assert "is corrupt" in ota_status(device.state, ledger=device.ledger, now=device.now)["pointer_error"]
    with pytest.raises(BundleError):  # the counter still holds without the pointer
        apply_bundle(device.state, device.bundle(counter=1, policy=POLICY_V2), ledger=device.ledger, now=device.now)
    apply_bundle(device.state, device.bundle(counter=2), ledger=device.ledger, now=device.now)
    assert _policy_digest(device) == hashlib.sha256(POLICY_V2).hexdigest()


def test_corrupt_counter_file_falls_back_to_ledger(device: Device) -> None:
    apply_bundle(device.state, device.bundle(counter=4), ledger=device.ledger, now=device.now)
    (device.state / "ota" / "counter.json").write_bytes(b"\x00\xff")
    with pytest.raises(BundleError) as info:
        apply_bundle(device.state, device.bundle(counter=3, policy=POLICY_V1), ledger=device.ledger, now=device.now)
    assert info.value.code == "rollback"
    apply_bundle(device.state, device.bundle(counter=5, policy=POLICY_V1), ledger=device.ledger, now=device.now)
    assert ota_status(device.state, ledger=device.ledger, now=device.now)["counter"] == 5


def test_no_trust_root_refusal_is_recorded(state_dir, tmp_path) -> None:
    from kestrel.identity.keys import SoftwareSigner
    from kestrel.ledger import Ledger
    from kestrel.ota.errors import TrustRootError

    with Ledger.open(state_dir / "ledger", signer=SoftwareSigner.generate()) as ledger:
        with pytest.raises(TrustRootError):
            apply_bundle(state_dir, b"KSTRLBN1...", ledger=ledger, now=time.time())
        assert [r.body["reason"] for r in ledger.records(kind="ota.rejected")] == ["no-root"]


def test_staging_failure_leaves_active_bundle(device: Device) -> None:
    from kestrel.errors import TransportError

    apply_bundle(device.state, device.bundle(counter=1, policy=POLICY_V1), ledger=device.ledger, now=device.now)

    def full_disk(step: str) -> None:
        if step == "write:policy.yaml":
            raise OSError(28, "No space left on device")

    with pytest.raises(TransportError, match="No space left"):
        apply_bundle(device.state, device.bundle(counter=2), ledger=device.ledger, now=device.now, on_step=full_disk)
    assert _policy_digest(device) == hashlib.sha256(POLICY_V1).hexdigest()
    assert not (device.state / "ota" / "slots" / ".staging").exists()
    apply_bundle(device.state, device.bundle(counter=2), ledger=device.ledger, now=device.now)
