"""Three agents for group decisions: identities, ledgers, BLS keys on disk, trust lists, and
their daemons in one event loop (used by tests/daemon/test_quorum.py and tools/bench/bls.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kestrel.identity import open_signer
from kestrel.identity.bls_store import create_bls_key
from kestrel.identity.store import create_identity
from kestrel.ledger import Ledger
from kestrel.sync.peers.trust import add_peer
from tests.identity.conftest import FAST_KDF, PASS
from tests.integration.conftest import mqtt_config

from .conftest import install_policy, running, until

VALVE = {"actuator": "lamp", "value": 1}  # the sim board's GPIO27 stands in for a water valve


@dataclass
class Member:
    name: str
    state: Path
    signer: Any
    ledger: Ledger
    bls_key: Any

    @property
    def did(self) -> str:
        return self.signer.public_key.did

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        self.ledger.flush()
        return [r.body for r in self.ledger.records(kind=kind)]


def make_member(root: Path, name: str) -> Member:
    state = root / name
    state.mkdir(mode=0o700)
    create_identity(state, name=name, passphrase=PASS, kdf=FAST_KDF)
    signer = open_signer(state, passphrase=PASS)
    ledger = Ledger.open(state / "ledger", signer=signer, max_batch_delay_ms=1.0)
    return Member(name, state, signer, ledger, create_bls_key(state, signer, ledger=ledger, passphrase=PASS))


def group_policy(members: list[Member], threshold: int) -> str:
    return (
        f"actions:\n  - action: gpio.write\n    args: {{actuator: {{enum: [lamp]}}, value: {{type: int}}}}\n"
        f"    quorum: {{of: [{', '.join(m.did for m in members)}], threshold: {threshold}}}\n"
    )


@contextlib.asynccontextmanager
async def daemons(
    members: list[Member], port: int, policies: list[str], *, timeout_s: float = 5.0
) -> AsyncIterator[list[Any]]:
    """Each member's daemon with its own policy, running until the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for m, policy in zip(members, policies, strict=False):
            install_policy(m.state, m.ledger, policy)
            d = await stack.enter_async_context(running(m, mqtt_config(port), peers=True, bls_key=m.bls_key))  # type: ignore[arg-type]
            out.append(d)
        await until(
            lambda: all(
                d.links.messenger is not None and (d.links.quorum is not None or m.bls_key is None)
                for d, m in zip(out, members, strict=False)
            ),
            what="peer messaging and quorum coordinators",
        )
        for d in out:
            if d.links.quorum is not None:  # a proposer without a BLS key starts one at its first quorum
                d.links.quorum.timeout_s = timeout_s
        yield out


def make_group(root: Path, names: tuple[str, ...] = ("a", "b", "c")) -> list[Member]:
    """Members that trust each other."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    members = [make_member(root, n) for n in names]
    for m in members:
        for other in members:
            if other is not m:
                add_peer(m.state, other.did, name=other.name)
    return members
