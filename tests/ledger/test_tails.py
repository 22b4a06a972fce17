"""Authenticated tails (format version 2): the writer signs only the unsigned records it sealed itself."""

from __future__ import annotations

import json
import shutil

import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger, verify_dir
from kestrel.ledger.frame import RECORD, TAIL_SEAL, encode_frame
from kestrel.ledger.reader import read_stream
from kestrel.ledger.record import encode_record, leaf_hash
from kestrel.ledger.store import SEGMENT_MAGIC, SEGMENT_MAGIC_V1
from kestrel.ledger.tailmac import seal_payload

from . import tamper


def _segment(d):
    return sorted(d.glob("*.seg"))[-1]


def _closed(d, signer, n=3):
    with Ledger.open(d, signer=signer) as led:
        for i in range(n):
            led.append("test.event", {"i": i})
        return led.size, bytes.fromhex(list(led.records(since_seq=led.size - 1))[0].digest_hex)


def _foreign(seq, prev, n=2):
    """Well-formed records, valid CRCs and chain: what anyone who can write the SD card can append."""
    raws = []
    for i in range(n):
        raws.append(encode_record(seq=seq + i, time=1764000000.0, kind="action.result", body={"forged": i}, prev=prev))
        prev = leaf_hash(raws[-1])
    return raws, prev


def test_foreign_unsigned_tail_is_cut_saved_recorded_and_never_signed(tmp_path, signer):
    d = tmp_path / "l"
    size, prev = _closed(d, signer)
    raws, _ = _foreign(size, prev)
    added = b"".join(encode_frame(RECORD, r) for r in raws)
    with open(_segment(d), "ab") as fh:
        fh.write(added)
    assert verify_dir(d, signer.public_key).unsigned == 2  # the public-key verifier sees an unsigned tail
    with Ledger.open(d, signer=signer) as led:
        records = list(led)
        assert [r.kind for r in records[size:]] == ["ledger.recovered"]
        body = records[-1].body
        assert (body["reason"], body["records"], body["bytes"]) == ("unauthenticated", 2, len(added))
        assert (d / body["saved"]).read_bytes() == added
        assert not any(r.body.get("forged") is not None for r in records)
    v = verify_dir(d, signer.public_key)
    assert (v.size, v.unsigned) == (size + 1, 0)


def test_a_forged_seal_does_not_authenticate(tmp_path, ed_signer):
    d = tmp_path / "l"
    size, prev = _closed(d, ed_signer)
    raws, last = _foreign(size, prev)
    other = SoftwareSigner.generate().ledger_secret()
    with open(_segment(d), "ab") as fh:
        fh.write(
            b"".join(encode_frame(RECORD, r) for r in raws)
            + encode_frame(TAIL_SEAL, seal_payload(other, size + 2, last))
        )
    with Ledger.open(d, signer=ed_signer) as led:
        last_rec = list(led)[-1]
        assert last_rec.kind == "ledger.recovered" and last_rec.body["records"] == 2
        assert led.size == size + 1


def test_own_sealed_tail_after_a_crash_is_signed(tmp_path, ed_signer):
    """A batched ledger killed between a commit and its checkpoint: its records carry its seal."""
    d = tmp_path / "l"
    led = Ledger.open(d, signer=ed_signer, durability="batched", checkpoint_interval_ms=10_000_000)
    led.append("test.event", {"i": 0})
    led.flush()
    for i in range(1, 4):
        led.append("test.event", {"i": i})
    crashed = tmp_path / "crashed"
    shutil.copytree(d, crashed)  # the on-disk state at this moment: 3 records sealed, not signed
    led.close()
    frames = tamper.spans(read_stream(crashed))
    assert frames[-1].type == TAIL_SEAL and verify_dir(crashed, ed_signer.public_key).unsigned == 3
    with Ledger.open(crashed, signer=ed_signer) as led2:
        assert [r.kind for r in led2] == ["test.event"] * 4  # nothing cut, nothing recovered
    v = verify_dir(crashed, ed_signer.public_key)
    assert (v.size, v.signed_size) == (4, 4)


def test_without_a_ledger_secret_every_unsigned_tail_is_cut(tmp_path, ed_signer):
    class PlainSigner:  # a Signer with no ledger_secret(): it cannot tell its tail from anyone's
        public_key = ed_signer.public_key

        def sign(self, message: bytes) -> bytes:
            return ed_signer.sign(message)

    d = tmp_path / "l"
    size, prev = _closed(d, ed_signer)
    raws, _ = _foreign(size, prev, n=1)
    with open(_segment(d), "ab") as fh:
        fh.write(encode_frame(RECORD, raws[0]))
    with Ledger.open(d, signer=PlainSigner()) as led:
        assert list(led)[-1].body["reason"] == "unauthenticated"


def test_ledger_secret_is_stable_per_key_and_differs_between_keys(signer):
    assert signer.ledger_secret() == signer.ledger_secret() and len(signer.ledger_secret()) == 32
    assert SoftwareSigner(signer.private_key).ledger_secret() == signer.ledger_secret()
    assert SoftwareSigner.generate(signer.public_key.algorithm).ledger_secret() != signer.ledger_secret()


def test_version_1_log_still_verifies_and_is_upgraded_on_open(tmp_path, ed_signer):
    """A version-1 ledger (magic 01, no seals): verifies; the writer cuts its unsigned tail (it cannot be
    authenticated), then writes version 2."""
    d = tmp_path / "l"
    with Ledger.open(d, signer=ed_signer, durability="strict") as led:
        for i in range(3):
            led.append("test.event", {"i": i})
        prev = bytes.fromhex(list(led.records(since_seq=2))[0].digest_hex)
    seg = _segment(d)
    data = seg.read_bytes()
    assert TAIL_SEAL not in {f.type for f in tamper.spans(data, len(SEGMENT_MAGIC))}  # strict: no seals
    raws, _ = _foreign(3, prev, n=1)
    seg.write_bytes(SEGMENT_MAGIC_V1 + data[len(SEGMENT_MAGIC) :] + encode_frame(RECORD, raws[0]))
    v = verify_dir(d, ed_signer.public_key)
    assert (v.size, v.signed_size) == (4, 3)
    with Ledger.open(d, signer=ed_signer) as led:
        assert list(led)[-1].body["reason"] == "unauthenticated"
    assert seg.read_bytes()[: len(SEGMENT_MAGIC)] == SEGMENT_MAGIC
    assert verify_dir(d, ed_signer.public_key).unsigned == 0


def test_seal_claiming_more_records_than_precede_it_is_missing(tmp_path, ed_signer):
    from kestrel.ledger import LedgerVerificationError, Reason

    d = tmp_path / "l"
    size, prev = _closed(d, ed_signer)
    with open(_segment(d), "ab") as fh:
        fh.write(encode_frame(TAIL_SEAL, seal_payload(ed_signer.ledger_secret(), size + 1, prev)))
    with pytest.raises(LedgerVerificationError) as e:
        verify_dir(d, ed_signer.public_key)
    assert (e.value.seq, e.value.reason) == (size, Reason.TRUNCATED)


def test_require_signed_after_the_writer_cut_a_foreign_tail(agent_state, signer):
    from kestrel._internal.paths import StateLayout

    from .test_cli import cli

    d = StateLayout(agent_state).ledger
    size, prev = _closed(d, signer)
    raws, _ = _foreign(size, prev, n=1)
    with open(_segment(d), "ab") as fh:
        fh.write(encode_frame(RECORD, raws[0]))
    p = cli("audit", "verify", "--json", "--require-signed", "--state", str(agent_state))
    assert p.returncode == 2 and json.loads(p.stdout)["reason"] == "unsigned"
    Ledger.open(d, signer=signer).close()
    p = cli("audit", "verify", "--json", "--require-signed", "--state", str(agent_state))
    assert p.returncode == 0 and json.loads(p.stdout)["size"] == size + 1


@pytest.mark.swtpm
def test_tpm_ledger_secret_is_computed_by_the_tpm_and_stable(swtpm, tmp_path):
    tpm = pytest.importorskip("kestrel.identity.tpm")
    pem, public = tpm.create_tpm_key(swtpm.tcti)
    pem2, _ = tpm.create_tpm_key(swtpm.tcti)
    with tpm.TPMSigner(pem, tcti=swtpm.tcti, expected=public) as signer:
        secret = signer.ledger_secret()
        d = tmp_path / "l"
        led = Ledger.open(d, signer=signer, durability="batched", checkpoint_interval_ms=10_000_000)
        led.append("test.tpm", {"i": 0})
        led.flush()
        led.append("test.tpm", {"i": 1})
        crashed = tmp_path / "crashed"
        shutil.copytree(d, crashed)
        led.close()
    assert len(secret) == 32
    with tpm.TPMSigner(pem, tcti=swtpm.tcti, expected=public) as again:  # a new session, same secret
        assert again.ledger_secret() == secret
        with Ledger.open(crashed, signer=again) as led:
            assert [r.kind for r in led] == ["test.tpm", "test.tpm"]  # its own sealed tail: signed
    with tpm.TPMSigner(pem2, tcti=swtpm.tcti) as other:
        assert other.ledger_secret() != secret
    assert verify_dir(crashed, public).signed_size == 2
