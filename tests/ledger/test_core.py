"""Pure core: records, frames, Merkle tree and proofs, checkpoints."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from kestrel.identity.keys import Algorithm, SoftwareSigner
from kestrel.ledger.checkpoint import CheckpointError, key_id, sign_checkpoint, verify_checkpoint
from kestrel.ledger.errors import Reason, RecordError
from kestrel.ledger.frame import CHECKPOINT, RECORD, FrameDamage, encode_frame, find_next_frame, iter_frames
from kestrel.ledger.merkle import (
    EMPTY_ROOT,
    Frontier,
    ProofError,
    consistency_proof,
    inclusion_proof,
    node_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from kestrel.ledger.record import ZERO_HASH, decode_record, encode_record, leaf_hash


def _mth(leaves):  # RFC 6962 definition, written independently of merkle.py
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


LEAVES = [leaf_hash(bytes([i])) for i in range(33)]


# -- records -----------------------------------------------------------------
def test_record_bytes_are_plain_msgpack_and_round_trip():
    body = {"a": [1, -2, 3.5, None, True, b"\x00\xff", {"n": "ü"}]}
    raw = encode_record(seq=7, time=1.25, kind="policy.decision", body=body, prev=ZERO_HASH)
    assert raw == msgpack.packb(
        {"seq": 7, "time": 1.25, "kind": "policy.decision", "body": body, "prev": ZERO_HASH}, use_bin_type=True
    )
    rec = decode_record(raw)
    assert (rec.seq, rec.time, rec.kind, rec.body, rec.prev) == (7, 1.25, "policy.decision", body, ZERO_HASH)
    assert rec.digest == hashlib.sha256(b"\x00" + raw).digest() and rec.raw == raw


@pytest.mark.parametrize(
    "kind,body",
    [("Bad Kind", {}), ("", {}), ("a" * 65, {}), ("ok", {"x": {1, 2}}), ("ok", {1: "int key"}), ("ok", [1])],
)
def test_bad_records_are_refused_with_record_error(kind, body):
    with pytest.raises(RecordError):
        encode_record(seq=0, time=0.0, kind=kind, body=body, prev=ZERO_HASH)


def test_oversized_record_is_refused():
    with pytest.raises(RecordError, match="limit"):
        encode_record(seq=0, time=0.0, kind="x", body={"b": b"\x00" * (1 << 20)}, prev=ZERO_HASH)


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2],
        {"seq": 0, "time": 0.0, "kind": "x", "body": {}},
        {"seq": -1, "time": 0.0, "kind": "x", "body": {}, "prev": ZERO_HASH},
        {"seq": 0, "time": 0, "kind": "x", "body": {}, "prev": ZERO_HASH},
        {"seq": 0, "time": 0.0, "kind": "X Y", "body": {}, "prev": ZERO_HASH},
        {"seq": 0, "time": 0.0, "kind": "x", "body": [], "prev": ZERO_HASH},
        {"seq": 0, "time": 0.0, "kind": "x", "body": {}, "prev": b"short"},
        {"seq": True, "time": 0.0, "kind": "x", "body": {}, "prev": ZERO_HASH},
    ],
)
def test_decode_rejects_malformed_records(obj):
    with pytest.raises(RecordError):
        decode_record(msgpack.packb(obj, use_bin_type=True))


def test_decode_rejects_trailing_bytes_and_garbage():
    raw = encode_record(seq=0, time=0.0, kind="x", body={}, prev=ZERO_HASH)
    for bad in (raw + b"\x00", raw[:-1], b"", b"\xc1", b"\xff" * 10):
        with pytest.raises(RecordError):
            decode_record(bad)


# -- frames ------------------------------------------------------------------
def test_frames_round_trip_and_report_torn_and_bad():
    buf = encode_frame(RECORD, b"abc") + encode_frame(CHECKPOINT, b"note")
    items = list(iter_frames(buf))
    assert [(f.type, f.payload) for f in items] == [(RECORD, b"abc"), (CHECKPOINT, b"note")]
    torn = list(iter_frames(buf[:-1]))
    assert isinstance(torn[-1], FrameDamage) and torn[-1].kind == "torn" and torn[-1].offset == items[1].offset
    for bit in range(len(buf) * 8):  # every single-bit flip is caught by the frame layer
        flipped = bytearray(buf)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert any(isinstance(i, FrameDamage) for i in iter_frames(bytes(flipped))), bit


def test_find_next_frame_skips_garbage():
    good = encode_frame(RECORD, b"x")
    assert find_next_frame(b"KF\x00garbage" + good, 0).payload == b"x"
    assert find_next_frame(b"\x00" * 100, 0) is None


def test_unknown_frame_type_is_refused():
    with pytest.raises(ValueError):
        encode_frame(9, b"")


# -- Merkle ------------------------------------------------------------------
def test_roots_match_rfc6962_definition():
    assert tree_root([]) == EMPTY_ROOT
    for n in range(len(LEAVES) + 1):
        assert tree_root(LEAVES[:n]) == _mth(LEAVES[:n]), n
    f = Frontier()
    for leaf in LEAVES:
        f.append(leaf)
    assert f.root() == _mth(LEAVES) and f.copy().root() == f.root() and f.size == len(LEAVES)


def test_inclusion_proofs_all_positions():
    for n in range(1, 20):
        root = _mth(LEAVES[:n])
        for i in range(n):
            proof = inclusion_proof(i, LEAVES[:n])
            verify_inclusion(LEAVES[i], i, n, proof, root)
            with pytest.raises(ProofError):
                verify_inclusion(LEAVES[(i + 1) % 33], i, n, proof, root)
            if proof:
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[i], i, n, proof[:-1], root)
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[i], i, n, proof + [proof[0]], root)


def test_consistency_proofs_all_sizes():
    for n in range(1, 20):
        new_root = _mth(LEAVES[:n])
        for m in range(0, n + 1):
            proof = consistency_proof(m, LEAVES[:n])
            verify_consistency(m, n, proof, _mth(LEAVES[:m]), new_root)
            if 0 < m < n:
                forked = LEAVES[: m - 1] + [leaf_hash(b"forged")]
                with pytest.raises(ProofError):
                    verify_consistency(m, n, proof, _mth(forked), new_root)


def test_known_small_tree():
    a, b, c = LEAVES[:3]
    assert tree_root([a, b, c]) == node_hash(node_hash(a, b), c)


# -- checkpoints -------------------------------------------------------------
@pytest.mark.parametrize("alg", [Algorithm.ED25519, Algorithm.P256])
def test_checkpoint_sign_verify(alg):
    s = SoftwareSigner.generate(alg)
    cp = sign_checkpoint(s, size=3, root=LEAVES[0])
    text = cp.note.decode()
    assert text.startswith(f"kestrel/{s.public_key.did}\n3\n")
    assert "\n\n\u2014 kestrel/" in text
    got = verify_checkpoint(cp.note, s.public_key)
    assert (got.size, got.root, got.note) == (3, LEAVES[0], cp.note)
    assert len(key_id(s.public_key)) == 4


def test_checkpoint_wrong_key_and_edits_fail():
    s, other = SoftwareSigner.generate(), SoftwareSigner.generate()
    cp = sign_checkpoint(s, size=3, root=LEAVES[0])
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(cp.note, other.public_key)
    assert e.value.reason is Reason.BAD_SIGNATURE
    edited = cp.note.replace(b"\n3\n", b"\n4\n")
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(edited, s.public_key)
    assert e.value.reason is Reason.BAD_SIGNATURE
    for garbage in (b"", b"\xff\xfe", b"kestrel/x\n1\n", cp.note.replace(b"\n\n", b"\n\x01\n"), cp.note[:-5]):
        with pytest.raises(CheckpointError):
            verify_checkpoint(garbage, s.public_key)


def test_checkpoint_ignores_other_signers_lines():
    s, witness = SoftwareSigner.generate(), SoftwareSigner.generate()
    cp = sign_checkpoint(s, size=1, root=LEAVES[1])
    wcp = sign_checkpoint(witness, size=1, root=LEAVES[1])
    cosigned = cp.note + wcp.note.split(b"\n\n")[1]
    assert verify_checkpoint(cosigned, s.public_key).size == 1
