"""Verification detects every kind of damage, with the right reason and record."""

from __future__ import annotations

import random

import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger.checkpoint import sign_checkpoint
from kestrel.ledger.errors import LedgerVerificationError, Reason
from kestrel.ledger.export import EXPORT_MAGIC, verify_export
from kestrel.ledger.frame import CHECKPOINT, RECORD, encode_frame
from kestrel.ledger.record import encode_record, leaf_hash
from kestrel.ledger.verify import verify_stream

from . import tamper
from .streams import build, export_of

N = 20


def _fails(buf, key, *, export=False, **kw) -> LedgerVerificationError:
    with pytest.raises(LedgerVerificationError) as e:
        (verify_export if export else verify_stream)(buf, key, **kw)
    return e.value


def test_intact_stream_and_export_verify(signer):
    buf, raws, cps = build(signer, N, lag=2)
    v = verify_stream(buf, signer.public_key)
    assert (v.size, v.signed_size, v.unsigned, v.checkpoint.size) == (N, N, 0, N)
    e = verify_export(export_of(signer, N), signer.public_key)
    assert e.size == N and e.root == v.root == cps[-1].root


def test_unsigned_tail_is_reported_not_hidden(ed_signer):
    buf, raws, cps = build(ed_signer, 10, cp_every=5)
    extra = encode_record(seq=10, time=1.0, kind="x", body={}, prev=leaf_hash(raws[9]))
    v = verify_stream(buf + encode_frame(RECORD, extra), ed_signer.public_key)
    assert (v.size, v.signed_size, v.unsigned) == (11, 10, 1)


@pytest.mark.parametrize("mode", ["stream", "disk", "export"])
def test_every_random_single_bit_flip_is_detected(ed_signer, mode):
    buf = export_of(ed_signer, N) if mode == "export" else build(ed_signer, N, lag=1)[0]
    rng = random.Random(1234)
    bits = rng.sample(range(len(buf) * 8), 400) + list(range(len(buf) * 8 - 200, len(buf) * 8))
    for bit in bits:
        bad = tamper.flip_bit(buf, bit)
        with pytest.raises(LedgerVerificationError) as e:
            if mode == "export":
                verify_export(bad, ed_signer.public_key)
            else:
                verify_stream(bad, ed_signer.public_key, allow_torn_tail=(mode == "disk"))
        assert e.value.reason in (Reason.BIT_FLIP, Reason.CORRUPT), (bit, e.value)


def test_bit_flip_names_the_damaged_record(ed_signer):
    buf, _, _ = build(ed_signer, N)
    span = tamper.record_span(buf, 7)
    err = _fails(tamper.flip_bit(buf, (span.start + 30) * 8), ed_signer.public_key)
    assert (err.seq, err.reason) == (7, Reason.BIT_FLIP)


def test_removed_record_is_missing(signer):
    buf, _, _ = build(signer, N)
    err = _fails(tamper.remove(buf, tamper.record_span(buf, 6)), signer.public_key)
    assert (err.seq, err.reason) == (6, Reason.MISSING)


def test_removed_record_in_export_is_missing(ed_signer):
    buf = export_of(ed_signer, N)
    err = _fails(tamper.remove(buf, tamper.record_span(buf, 11, len(EXPORT_MAGIC))), ed_signer.public_key, export=True)
    assert (err.seq, err.reason) == (11, Reason.MISSING)


@pytest.mark.parametrize("a,b", [(3, 4), (2, 9), (0, 19)])
def test_reordered_records(ed_signer, a, b):
    buf, _, _ = build(ed_signer, N, cp_every=N)
    err = _fails(tamper.swap(buf, tamper.record_span(buf, a), tamper.record_span(buf, b)), ed_signer.public_key)
    assert (err.seq, err.reason) == (a, Reason.REORDERED)


def test_reordered_in_export(ed_signer):
    buf = export_of(ed_signer, N)
    s = len(EXPORT_MAGIC)
    err = _fails(
        tamper.swap(buf, tamper.record_span(buf, 5, s), tamper.record_span(buf, 6, s)),
        ed_signer.public_key,
        export=True,
    )
    assert (err.seq, err.reason) == (5, Reason.REORDERED)


def test_duplicated_record_is_inserted(ed_signer):
    buf, _, _ = build(ed_signer, N)
    copy = tamper.record_span(buf, 3)
    after = tamper.record_span(buf, 8)
    err = _fails(tamper.insert_at(buf, after.end, buf[copy.start : copy.end]), ed_signer.public_key)
    assert (err.seq, err.reason) == (3, Reason.INSERTED)


def test_forged_record_with_valid_chain_is_inserted(ed_signer):
    """The attacker writes a well-formed record 8 (right seq, right prev hash, right CRC)."""
    buf, raws, _ = build(ed_signer, N)
    forged = encode_record(seq=8, time=1.0, kind="test.event", body={"evil": 1}, prev=leaf_hash(raws[7]))
    at = tamper.record_span(buf, 8).start
    err = _fails(tamper.insert_at(buf, at, tamper.reframe(RECORD, forged)), ed_signer.public_key)
    assert (err.seq, err.reason) == (8, Reason.INSERTED)


def test_record_appended_to_export_is_inserted(ed_signer):
    buf, raws, _ = build(ed_signer, N)
    forged = encode_record(seq=N, time=1.0, kind="x", body={}, prev=leaf_hash(raws[-1]))
    err = _fails(export_of(ed_signer, N) + tamper.reframe(RECORD, forged), ed_signer.public_key, export=True)
    assert (err.seq, err.reason) == (N, Reason.INSERTED)


def test_altered_record_with_fixed_crc_is_corrupt(ed_signer):
    buf, raws, _ = build(ed_signer, N)
    span = tamper.record_span(buf, 4)
    edited = raws[4].replace(b"xxxx", b"yyyy", 1)
    bad = buf[: span.start] + tamper.reframe(RECORD, edited) + buf[span.end :]
    err = _fails(bad, ed_signer.public_key)
    assert err.reason is Reason.CORRUPT and err.seq == 5  # record 5 no longer chains to record 4


def test_altered_last_record_with_fixed_crc_is_corrupt(ed_signer):
    buf = export_of(ed_signer, N)
    span = tamper.record_span(buf, N - 1, len(EXPORT_MAGIC))
    bad = buf[: span.start] + tamper.reframe(RECORD, span.payload.replace(b"xxxx", b"zzzz", 1))
    err = _fails(bad, ed_signer.public_key, export=True)
    assert err.reason is Reason.CORRUPT


def test_truncated_export(ed_signer):
    buf = export_of(ed_signer, N)
    span = tamper.record_span(buf, 15, len(EXPORT_MAGIC))
    err = _fails(buf[: span.start], ed_signer.public_key, export=True)
    assert (err.seq, err.reason) == (15, Reason.TRUNCATED)
    err = _fails(buf[: span.start + 7], ed_signer.public_key, export=True)
    assert (err.seq, err.reason) == (15, Reason.TRUNCATED)


def test_truncated_stream_behind_its_checkpoint(ed_signer):
    """Records cut from the end while the checkpoint that covered them is kept."""
    buf, _, cps = build(ed_signer, N)
    first_cut = tamper.record_span(buf, 17)
    last_cp = encode_frame(CHECKPOINT, cps[-1].note)
    err = _fails(buf[: first_cut.start] + last_cp, ed_signer.public_key)
    assert (err.seq, err.reason) == (17, Reason.TRUNCATED)


def test_truncation_against_trusted_checkpoint(ed_signer):
    buf, _, cps = build(ed_signer, N, cp_every=5)
    cut = tamper.record_span(buf, 15).start  # a valid, shorter log: only a trusted checkpoint reveals it
    assert verify_stream(buf[:cut], ed_signer.public_key).size == 15
    err = _fails(buf[:cut], ed_signer.public_key, trusted=cps[-1])
    assert (err.seq, err.reason) == (15, Reason.TRUNCATED)


def test_fork_two_signed_checkpoints_disagree(signer):
    """The key signed two histories (e.g. a restored backup ran on two devices)."""
    buf_a, _, _ = build(signer, N, cp_every=5)
    _, _, cps_b = build(signer, N, cp_every=5, start_time=5000.0)  # same key, different records
    spliced = buf_a + encode_frame(CHECKPOINT, cps_b[1].note)  # B's checkpoint for size 10
    err = _fails(spliced, signer.public_key)
    assert (err.seq, err.reason) == (9, Reason.FORK)
    err = _fails(buf_a, signer.public_key, trusted=cps_b[2])
    assert (err.seq, err.reason) == (14, Reason.FORK)
    err = _fails(export_of(signer, N), signer.public_key, export=True, trusted=cps_b[0])
    assert err.reason is Reason.FORK


def test_rewritten_history_with_old_checkpoints_is_corrupt(ed_signer):
    """Every record rewritten consistently after seq 10; the agent's checkpoints no longer match."""
    buf_a, raws, cps = build(ed_signer, N, cp_every=10)
    other = SoftwareSigner.generate()
    buf_b, _, _ = build(other, N, cp_every=N, start_time=9.0)
    # keep A's checkpoints, B's records: nothing matches
    frames_b = [s for s in tamper.spans(buf_b) if s.type == RECORD]
    cps_a = [s for s in tamper.spans(buf_a) if s.type == CHECKPOINT]
    mixed = b"".join(buf_b[s.start : s.end] for s in frames_b) + b"".join(buf_a[s.start : s.end] for s in cps_a)
    err = _fails(mixed, ed_signer.public_key)
    assert (err.seq, err.reason) == (0, Reason.CORRUPT)


def test_bad_signature_and_foreign_key(ed_signer):
    buf, _, _ = build(ed_signer, N)
    other = SoftwareSigner.generate()
    err = _fails(buf, other.public_key)
    assert err.reason is Reason.BAD_SIGNATURE
    err = _fails(export_of(ed_signer, N), other.public_key, export=True)
    assert err.reason is Reason.BAD_SIGNATURE
    cp_span = next(s for s in tamper.spans(buf) if s.type == CHECKPOINT)
    forged_note = cp_span.payload.replace(b"\n5\n", b"\n4\n")  # edited size, CRC fixed, signature stale
    bad = buf[: cp_span.start] + tamper.reframe(CHECKPOINT, forged_note) + buf[cp_span.end :]
    err = _fails(bad, ed_signer.public_key)
    assert (err.seq, err.reason) == (4, Reason.BAD_SIGNATURE)


def test_not_an_export(ed_signer):
    for data in (b"", b"garbage" * 10, EXPORT_MAGIC, EXPORT_MAGIC + encode_frame(RECORD, b"x")):
        err = _fails(data, ed_signer.public_key, export=True)
        assert err.reason in (Reason.CORRUPT,)


def test_checkpoint_covering_unseen_records_in_stream(ed_signer):
    buf, raws, cps = build(ed_signer, N)
    late = sign_checkpoint(ed_signer, size=N + 3, root=cps[-1].root)
    err = _fails(buf + encode_frame(CHECKPOINT, late.note), ed_signer.public_key)
    assert (err.seq, err.reason) == (N, Reason.TRUNCATED)
