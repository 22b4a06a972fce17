"""The verifier's fast path (scan.py) takes only what the general path would accept, and stops with no side effect."""

from __future__ import annotations

import msgpack
import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger.checkpoint import sign_checkpoint
from kestrel.ledger.errors import LedgerVerificationError, Reason
from kestrel.ledger.frame import RECORD, encode_frame
from kestrel.ledger.merkle import Frontier
from kestrel.ledger.record import ZERO_HASH, decode_record, leaf_hash
from kestrel.ledger.scan import scan_records
from kestrel.ledger.verify import LogWalker, verify_stream

from .streams import build


@pytest.fixture(scope="module")
def signer():
    return SoftwareSigner.generate()


def _chain(objs: list[dict]) -> tuple[bytes, list[bytes]]:
    """Records from maps (any key order or encoding), chained; returns (frames, leaf hashes)."""
    out, leaves, prev = [], [], ZERO_HASH
    for seq, obj in enumerate(objs):
        raw = msgpack.packb({**obj, "seq": seq, "prev": prev} if "seq" not in obj else {**obj, "prev": prev})
        prev = leaf_hash(raw)
        leaves.append(prev)
        out.append(encode_frame(RECORD, raw))
    return b"".join(out), leaves


def test_scan_takes_a_clean_stream_and_matches_the_general_path(signer):
    stream, raws, _ = build(signer, 40, cp_every=1000)  # one checkpoint, at the end
    leaves: list[bytes] = []
    off, last = scan_records(memoryview(stream), 0, seq=0, prev=ZERO_HASH, leaves=leaves)
    assert leaves == [decode_record(r).digest for r in raws]
    assert last == leaves[-1]
    assert stream[off + 2] == 0x02  # stopped at the checkpoint frame, the general path's job


def test_scan_respects_limit_and_stops_at_a_bad_record(signer):
    stream, raws, _ = build(signer, 10, cp_every=1000)
    leaves: list[bytes] = []
    off, _ = scan_records(memoryview(stream), 0, seq=0, prev=ZERO_HASH, leaves=leaves, limit=4)
    assert len(leaves) == 4 and off == sum(16 + len(r) for r in raws[:4])
    # a record out of order: nothing taken, offset unchanged
    leaves2: list[bytes] = []
    off2, last = scan_records(memoryview(stream), off, seq=7, prev=leaves[-1], leaves=leaves2)
    assert (off2, last, leaves2) == (off, leaves[-1], [])


@pytest.mark.parametrize(
    "bad",
    [
        {"time": 1.0, "kind": "Bad Kind", "body": {}},  # invalid kind
        {"time": 1, "kind": "a.b", "body": {}},  # int time
        {"time": 1.0, "kind": "a.b", "body": []},  # body not a map
        {"time": 1.0, "kind": ["a"], "body": {}},  # unhashable kind
        {"time": 1.0, "kind": "a.b", "body": {}, "extra": 1},  # a sixth key
    ],
)
def test_malformed_records_fall_to_the_general_path_and_fail(signer, bad):
    good = {"time": 1.0, "kind": "a.b", "body": {"x": 1}}
    stream, leaves = _chain([good, bad, good])
    taken: list[bytes] = []
    off, _ = scan_records(memoryview(stream), 0, seq=0, prev=ZERO_HASH, leaves=taken)
    assert taken == leaves[:1]  # stopped at the bad record
    with pytest.raises(LedgerVerificationError) as err:
        verify_stream(stream, signer.public_key)
    assert err.value.seq == 1 and err.value.reason == Reason.CORRUPT


def test_other_key_orders_verify_through_the_general_path(signer):
    # readers accept any key order (they never re-encode): the fast path takes it too
    objs = [{"body": {"i": i}, "kind": "a.b", "time": float(i)} for i in range(5)]
    stream, leaves = _chain(objs)
    f = Frontier()
    for leaf in leaves:
        f.append(leaf)
    cp = sign_checkpoint(signer, size=5, root=f.root())
    stream += encode_frame(0x02, cp.note)
    v = verify_stream(stream, signer.public_key)
    assert (v.size, v.signed_size, v.root) == (5, 5, cp.root)
    walker = LogWalker(stream)
    assert walker.scan(memoryview(stream), 0) == len(stream) - 16 - len(cp.note)
