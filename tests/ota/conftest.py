"""Fixtures for OTA tests: a real ledger, owner keys, a provisioned device state."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger
from kestrel.ota.build import make_bundle
from kestrel.ota.bundle import sign_bundle
from kestrel.ota.store import OtaDir

POLICY_V1 = b"actions:\n  - send_email\nrestrictions:\n  - no_external_network unless explicitly permitted\n"
POLICY_V2 = b"actions:\n  - send_email\n  - schedule_event\n"


@dataclass
class Device:
    state: Path
    ledger: Ledger
    owners: list[SoftwareSigner]
    agent: str
    now: float = field(default_factory=time.time)

    def bundle(
        self,
        *,
        counter: int,
        policy: bytes = POLICY_V2,
        signers: list[SoftwareSigner] | None = None,
        models: tuple = (),
        agents: list[str] | None = None,
        groups: tuple = (),
        expires_in: float = 86400.0,
    ) -> bytes:
        data = make_bundle(
            policy=policy,
            models=models,
            counter=counter,
            now=self.now,
            expires=self.now + expires_in,
            agents=[self.agent] if agents is None else agents,
            groups=groups,
        )
        for s in self.owners[:1] if signers is None else signers:
            data = sign_bundle(data, s)
        return data

    def kinds(self, kind: str) -> list[dict]:
        return [r.body for r in self.ledger.records(kind=kind)]


@pytest.fixture
def owners() -> list[SoftwareSigner]:
    return [SoftwareSigner.generate() for _ in range(3)]


@pytest.fixture
def device(state_dir: Path, owners: list[SoftwareSigner]) -> Iterator[Device]:
    """Agent state with a trust root of owners[0] alone (threshold 1)."""
    agent = SoftwareSigner.generate()
    ledger = Ledger.open(state_dir / "ledger", signer=agent)
    OtaDir(state_dir).init_root([owners[0].public_key.did], 1)
    try:
        yield Device(state_dir, ledger, owners, agent.public_key.did)
    finally:
        ledger.close()


@pytest.fixture
def device2of3(state_dir: Path, owners: list[SoftwareSigner]) -> Iterator[Device]:
    """Agent state with a 2-of-3 owner trust root."""
    agent = SoftwareSigner.generate()
    ledger = Ledger.open(state_dir / "ledger", signer=agent)
    OtaDir(state_dir).init_root([o.public_key.did for o in owners], 2)
    try:
        yield Device(state_dir, ledger, owners, agent.public_key.did)
    finally:
        ledger.close()
