"""The Agent facade over a real identity and a real ledger on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrel import Agent
from kestrel.errors import UsageError
from kestrel.identity import (
    Algorithm,
    IdentityExistsError,
    IdentityNotFoundError,
    KdfParams,
    PublicKey,
    WrongPassphraseError,
    create_identity,
    load_identity,
)

PASS = b"agent passphrase"
FAST = KdfParams.argon2id(memory_kib=8192, iterations=1, lanes=1)


def _ledger_available() -> bool:
    import kestrel.ledger

    return hasattr(kestrel.ledger, "Ledger")


pytestmark = pytest.mark.skipif(not _ledger_available(), reason="kestrel.ledger.Ledger not built yet")


def test_open_append_verify_iterate(state_dir: Path) -> None:
    ident = create_identity(state_dir, name="facade", passphrase=PASS, kdf=FAST)
    with Agent.open(state_dir, passphrase=PASS) as agent:
        assert agent.id == ident.did and agent.identity == ident
        assert agent.state_dir == state_dir and agent.signer.public_key == ident.public_key
        receipts = [agent.ledger.append("note", {"i": i, "text": "hello"}) for i in range(5)]
        assert [r.seq for r in receipts] == sorted({r.seq for r in receipts})
        agent.ledger.verify()
    assert agent.closed
    with Agent.open(state_dir, passphrase=PASS, durability="strict") as again:
        records = [r for r in again.ledger if r.kind == "note"]
        assert [r.body["i"] for r in records] == list(range(5))
        assert again.ledger.public_key == PublicKey.from_did(ident.did)
        again.ledger.verify()


def test_create_records_agent_created(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Agent.create(state, name="born", algorithm="p256", machine_bound=True) as agent:
        did = agent.id
        assert agent.identity.algorithm is Algorithm.P256
    with Agent.open(state) as agent:
        created = [r for r in agent.ledger if r.kind == "agent.created"]
        assert len(created) == 1
        assert created[0].body == {"name": "born", "did": did, "algorithm": "p256", "backend": "file"}
    with pytest.raises(IdentityExistsError, match="not replaceable"):
        Agent.create(state, name="again", machine_bound=True)
    assert load_identity(state).did == did
    import shutil

    shutil.rmtree(state / "identity")  # a ledger without its identity: a new key cannot continue it
    with pytest.raises(IdentityExistsError, match="ledger of an earlier agent"):
        Agent.create(state, name="again", machine_bound=True)
    assert not (state / "identity").exists()


def test_open_errors_are_clean(state_dir: Path) -> None:
    with pytest.raises(IdentityNotFoundError):
        Agent.open(state_dir)
    create_identity(state_dir, name="x", passphrase=PASS, kdf=FAST)
    with pytest.raises(WrongPassphraseError):
        Agent.open(state_dir, passphrase=b"wrong")
    with pytest.raises(UsageError, match="durability"):
        Agent.open(state_dir, passphrase=PASS, durability="sometimes")
    assert not (state_dir / "ledger").exists()  # refused before the ledger was touched


def test_close_is_idempotent(state_dir: Path) -> None:
    create_identity(state_dir, name="x", machine_bound=True)
    agent = Agent.open(state_dir)
    agent.close()
    agent.close()
    assert agent.closed and "Agent(" in repr(agent)


@pytest.mark.swtpm
def test_tpm_agent(state_dir: Path, swtpm) -> None:
    with Agent.create(state_dir, name="tpm", backend="tpm", algorithm="p256", tcti=swtpm.tcti) as agent:
        for i in range(20):
            agent.ledger.append("note", {"i": i})
        agent.ledger.verify()
        did = agent.id
    with Agent.open(state_dir, tcti=swtpm.tcti) as agent:
        assert agent.id == did
        assert agent.ledger.size >= 21
        agent.ledger.verify()
