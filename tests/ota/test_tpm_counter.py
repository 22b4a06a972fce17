"""TPM NV counter (real swtpm): a state directory restored from an older copy is refused."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger
from kestrel.ota import active_policy, apply_bundle
from kestrel.ota.build import make_bundle
from kestrel.ota.bundle import sign_bundle
from kestrel.ota.errors import BundleRollbackError
from kestrel.ota.store import OtaDir
from kestrel.ota.tpmcounter import TpmCounter

pytestmark = pytest.mark.swtpm


class Crash(Exception):
    pass


def test_tpm_counter_refuses_restored_state(swtpm, tmp_path: Path) -> None:
    tpm = TpmCounter(swtpm.tcti)
    assert tpm.read() == 0
    agent, owner = SoftwareSigner.generate(), SoftwareSigner.generate()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    OtaDir(state).init_root([owner.public_key.did], 1)
    now = time.time()

    def bundle(counter: int) -> bytes:
        data = make_bundle(
            policy=f"actions: [a{counter}]\n".encode(),
            counter=counter,
            now=now,
            expires=now + 3600,
            agents=[agent.public_key.did],
        )
        return sign_bundle(data, owner)

    with Ledger.open(state / "ledger", signer=agent) as ledger:
        apply_bundle(state, bundle(1), ledger=ledger, now=now, tpm=tpm)
        assert tpm.read() == 1 and [r.body["tpm"] for r in ledger.records(kind="ota.applied")] == [1]
    backup = tmp_path / "backup"
    shutil.copytree(state, backup)
    with Ledger.open(state / "ledger", signer=agent) as ledger:
        apply_bundle(state, bundle(2), ledger=ledger, now=now, tpm=tpm)
    assert tpm.read() == 2
    # The attacker puts back the whole older state (ledger, counter, slots): the TPM remembers.
    shutil.rmtree(state)
    shutil.copytree(backup, state)
    with Ledger.open(state / "ledger", signer=agent) as ledger:
        for counter in (2, 3):
            with pytest.raises(BundleRollbackError) as info:
                apply_bundle(state, bundle(counter), ledger=ledger, now=now, tpm=tpm)
            assert info.value.code == "state-rollback"
        assert [r.body["reason"] for r in ledger.records(kind="ota.rejected")] == ["state-rollback"] * 2
    assert active_policy(state)[0].allow.keys() == {"a1"}


def test_crash_before_tpm_increment_is_harmless(swtpm, tmp_path: Path) -> None:
    tpm = TpmCounter(swtpm.tcti)
    agent, owner = SoftwareSigner.generate(), SoftwareSigner.generate()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    OtaDir(state).init_root([owner.public_key.did], 1)
    now = time.time()

    def bundle(counter: int) -> bytes:
        return sign_bundle(
            make_bundle(
                policy=b"actions: [a]\n", counter=counter, now=now, expires=now + 60, agents=[agent.public_key.did]
            ),
            owner,
        )

    def crash(step: str) -> None:
        if step == "tpm-increment":
            raise Crash(step)

    with Ledger.open(state / "ledger", signer=agent) as ledger:
        with pytest.raises(Crash):
            apply_bundle(state, bundle(1), ledger=ledger, now=now, tpm=tpm, on_step=crash)
        assert tpm.read() == 0 and OtaDir(state).read_tpm_epoch() == 1  # state ahead of the TPM: fine
        res = apply_bundle(state, bundle(2), ledger=ledger, now=now, tpm=tpm)
        assert res.counter == 2 and tpm.read() == 1
        apply_bundle(state, bundle(3), ledger=ledger, now=now, tpm=tpm)
        assert tpm.read() == 2 and OtaDir(state).read_tpm_epoch() == 2
