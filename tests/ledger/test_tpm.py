"""The ledger signed by a P-256 key inside a real TPM (swtpm): group commit, restart, verify."""

from __future__ import annotations

import threading

import pytest

from kestrel.ledger import Ledger, verify_dir

pytestmark = pytest.mark.swtpm


def test_tpm_signed_ledger_survives_restart_and_verifies_with_public_key_only(swtpm, tmp_path):
    tpm = pytest.importorskip("kestrel.identity.tpm")
    pem, public = tpm.create_tpm_key(swtpm.tcti)
    d = tmp_path / "ledger"
    with tpm.TPMSigner(pem, tcti=swtpm.tcti, expected=public) as signer:
        led = Ledger.open(d, signer=signer, durability="batched")
        threads = [
            threading.Thread(target=lambda: [led.append("test.tpm", {"i": i}) for i in range(25)]) for _ in range(4)
        ]
        [t.start() for t in threads]
        [t.join() for t in threads]
        led.close()
    assert verify_dir(d, public).signed_size == 100
    with tpm.TPMSigner(pem, tcti=swtpm.tcti, expected=public) as signer:  # a new session: same key, same log
        with Ledger.open(d, signer=signer, durability="strict") as led:
            assert led.append("test.tpm", {"after": "restart"}).seq == 100
            assert led.latest_checkpoint().size == 101
    v = verify_dir(d, public)
    assert (v.size, v.signed_size, v.checkpoint.note.count(b"\n")) == (101, 101, 5)
