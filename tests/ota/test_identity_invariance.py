"""The AgentID and the identity key never change across apply and rollback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kestrel.identity import create_identity, load_identity, open_signer
from kestrel.ledger import Ledger
from kestrel.ota import active_policy, apply_bundle, rollback
from kestrel.ota.store import OtaDir

from .conftest import Device

CYCLES = 200


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def real_device(state_dir: Path, owners) -> Device:
    ident = create_identity(state_dir, name="invariance", passphrase=b"correct horse battery")
    ledger = Ledger.open(state_dir / "ledger", signer=open_signer(state_dir, passphrase=b"correct horse battery"))
    OtaDir(state_dir).init_root([owners[0].public_key.did], 1)
    yield Device(state_dir, ledger, owners, ident.did)
    ledger.close()


def test_identity_unchanged_over_apply_rollback_cycles(real_device: Device) -> None:
    dev = real_device
    did = load_identity(dev.state).did
    tree = _tree_digest(dev.state / "identity")
    policies = [b"actions: [send_email]\n", b"actions: [schedule_event]\n"]
    apply_bundle(dev.state, dev.bundle(counter=1, policy=policies[0]), ledger=dev.ledger, now=dev.now)
    for i in range(CYCLES):
        apply_bundle(dev.state, dev.bundle(counter=i + 2, policy=policies[1]), ledger=dev.ledger, now=dev.now)
        assert active_policy(dev.state)[0].digest == hashlib.sha256(policies[1]).hexdigest()
        rollback(dev.state, ledger=dev.ledger)
        assert active_policy(dev.state)[0].digest == hashlib.sha256(policies[0]).hexdigest()
        assert load_identity(dev.state).did == did == dev.ledger.public_key.did
    assert _tree_digest(dev.state / "identity") == tree
    assert len(dev.kinds("ota.applied")) == CYCLES + 1
    assert len(dev.kinds("ota.rollback")) == CYCLES
    dev.ledger.verify()
