"""Fixtures for the ledger tests: signers of both algorithms, agent state dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kestrel.identity.keys import Algorithm, SoftwareSigner


def write_identity(state: Path, signer) -> None:
    """Write STATE/identity/identity.json (public facts only) for ``signer``."""
    ident = state / "identity"
    ident.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        from kestrel.identity.record import Identity, encode_identity

        pk = signer.public_key
        data = encode_identity(Identity(pk.did, "test-agent", pk.algorithm, "file", "2026-01-01T00:00:00Z", pk))
    except ImportError:  # identity package not there yet: the did field is what audit reads
        data = json.dumps({"did": signer.public_key.did}).encode()
    (ident / "identity.json").write_bytes(data)


@pytest.fixture(params=[Algorithm.ED25519, Algorithm.P256], ids=["ed25519", "p256"])
def signer(request) -> SoftwareSigner:
    return SoftwareSigner.generate(request.param)


@pytest.fixture
def ed_signer() -> SoftwareSigner:
    return SoftwareSigner.generate(Algorithm.ED25519)


@pytest.fixture
def agent_state(state_dir: Path, signer) -> Path:
    write_identity(state_dir, signer)
    return state_dir
