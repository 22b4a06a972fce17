"""Fixtures for policy tests: a real ledger and a device whose active bundle holds a given policy."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger
from kestrel.ota import apply_bundle
from kestrel.ota.build import make_bundle
from kestrel.ota.bundle import sign_bundle
from kestrel.ota.store import OtaDir


@pytest.fixture
def ledger(state_dir: Path) -> Iterator[Ledger]:
    led = Ledger.open(state_dir / "ledger", signer=SoftwareSigner.generate())
    yield led
    led.close()


@pytest.fixture
def install(state_dir: Path, ledger: Ledger) -> Callable[[bytes], str]:
    """install(policy_bytes) -> bundle digest: sign with a fresh owner and apply."""
    owner = SoftwareSigner.generate()
    OtaDir(state_dir).init_root([owner.public_key.did], 1)
    counter = [0]

    def go(policy: bytes) -> str:
        counter[0] += 1
        now = time.time()
        data = make_bundle(
            policy=policy, counter=counter[0], now=now, expires=now + 3600, agents=[ledger.public_key.did]
        )
        return apply_bundle(state_dir, sign_bundle(data, owner), ledger=ledger, now=now).digest

    return go
