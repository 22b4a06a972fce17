"""One strict record codec: the writer, the verifiers, the reader and the collector refuse the same bytes."""

from __future__ import annotations

import base64
import datetime
import random

import msgpack
import pytest

from kestrel._internal.paths import StateLayout
from kestrel.ledger import Ledger
from kestrel.ledger.checkpoint import CheckpointError, key_id, origin_for, sign_checkpoint, verify_checkpoint
from kestrel.ledger.codec import diagnose, is_strict
from kestrel.ledger.errors import LedgerVerificationError, Reason, RecordError
from kestrel.ledger.frame import RECORD, encode_frame
from kestrel.ledger.merkle import tree_root
from kestrel.ledger.reader import iter_records
from kestrel.ledger.record import ZERO_HASH, decode_record, encode_record, leaf_hash, prepare_body
from kestrel.ledger.scan import scan_records
from kestrel.ledger.store import SEGMENT_MAGIC
from kestrel.ledger.verify import verify_stream

from .test_vectors import DOC
from .vectors import _rec, negative


def doc_negative_vectors() -> dict[str, str]:
    text = DOC.read_text()
    block = text.split("<!-- negative-vectors:begin -->", 1)[1].split("<!-- negative-vectors:end -->", 1)[0]
    lines = [ln for ln in block.splitlines() if ": " in ln and not ln.startswith("```")]
    return dict(ln.split(": ", 1) for ln in lines)


NEGATIVE = sorted(negative().items())


def test_doc_negative_vectors_equal_the_generator():
    assert doc_negative_vectors() == negative()


def test_the_vectors_differ_from_a_good_record_in_one_rule_only():
    good = _rec()
    assert decode_record(good).body == {"name": "porch-bot"}  # the template itself is a record
    for name, raw in NEGATIVE:
        assert bytes.fromhex(raw) != good, name


@pytest.mark.parametrize("name,raw", NEGATIVE, ids=[n for n, _ in NEGATIVE])
def test_negative_vector_is_refused_by_decoder_verifier_and_fast_path(name, raw, ed_signer):
    raw = bytes.fromhex(raw)
    with pytest.raises(RecordError):
        decode_record(raw)
    # in a log: the record at seq 0 followed by a checkpoint the agent signed over exactly these bytes
    cp = sign_checkpoint(ed_signer, size=1, root=tree_root([leaf_hash(raw)]))
    buf = encode_frame(RECORD, raw) + encode_frame(0x02, cp.note)
    with pytest.raises(LedgerVerificationError) as e:
        verify_stream(buf, ed_signer.public_key)
    assert (e.value.seq, e.value.reason) == (0, Reason.CORRUPT)
    leaves: list[bytes] = []
    assert scan_records(memoryview(buf), 0, seq=0, prev=ZERO_HASH, leaves=leaves) == (0, ZERO_HASH)
    assert leaves == []


@pytest.mark.parametrize("name,raw", NEGATIVE, ids=[n for n, _ in NEGATIVE])
def test_negative_vector_is_refused_by_the_collector(name, raw, ed_signer, tmp_path):
    from kestrel.sync.collector.core import CollectorCore
    from kestrel.sync.collector.sqlite import SqliteStore
    from kestrel.sync.wire import SyncBatch, encode_batch, ledger_topic

    raw = bytes.fromhex(raw)
    cp = sign_checkpoint(ed_signer, size=1, root=tree_root([leaf_hash(raw)]))
    store = SqliteStore(tmp_path / "collector.db")
    collector = CollectorCore(store, clock=lambda: 1764000000.0)
    out = collector.handle(ledger_topic(ed_signer.public_key.did), encode_batch(SyncBatch(0, (raw,), cp.note)))
    assert "malformed-record" in out.refused
    assert store.agent_state(ed_signer.public_key.did).size == 0


@pytest.mark.parametrize(
    "body",
    [
        {"x": msgpack.ExtType(5, b"x")},
        {"x": msgpack.Timestamp(1764000000)},
        {"x": {1: "int key"}},
        {"x": {b"name": "bytes key"}},
        {"x": [{"ok": 1}, {2: "deep int key"}]},
        {"x": datetime.datetime(2026, 1, 1)},
        {"x": "\ud800"},  # a lone surrogate: not UTF-8
        {"x": 1 << 64},
    ],
    ids=["ext", "timestamp", "int-key", "bytes-key", "deep-int-key", "datetime", "surrogate", "int-too-large"],
)
def test_writer_refuses_what_the_verifier_would_refuse(body):
    with pytest.raises(RecordError):
        prepare_body("test.event", body)


@pytest.mark.parametrize("kind", ["a" * 65, "agent.created\n", "Agent", "", "a..b", 5])
def test_writer_refuses_bad_kinds(kind):
    with pytest.raises(RecordError):
        prepare_body(kind, {})


def test_kind_of_64_characters_is_a_record():
    raw = encode_record(seq=0, time=1.0, kind="a" * 64, body={}, prev=ZERO_HASH)
    assert decode_record(raw).kind == "a" * 64


def _random_value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return rng.choice([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32, 2**64 - 1, -1, -32, -33, -129, -(2**63)])
    if choice == 1:
        return rng.choice([0.0, -1.5, 1e300, float("inf")])
    if choice == 2:
        return "é" * rng.choice([0, 1, 31, 32, 200])
    if choice == 3:
        return bytes(rng.choice([0, 1, 255, 256]))
    if choice == 4:
        return rng.choice([None, True, False])
    if choice == 5:
        return "s" * rng.choice([0, 15, 16, 300])
    if choice == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.choice([0, 3, 15, 16]))]
    return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.choice([0, 2, 15, 16]))}


def test_everything_the_writer_accepts_decodes_strictly():
    rng = random.Random(7)
    for seq in range(300):
        body = {"v": _random_value(rng)}
        raw = encode_record(seq=seq, time=1764000000.5, kind="fuzz.body", body=body, prev=ZERO_HASH)
        assert decode_record(raw).seq == seq


def test_fast_path_and_slow_path_agree_on_mutated_records():
    """Byte mutations of good records: the C round trip (is_strict) and the byte walk (diagnose) agree."""
    rng = random.Random(11)
    good = [
        encode_record(seq=i, time=1764000000.25, kind="fuzz.body", body={"v": _random_value(rng)}, prev=ZERO_HASH)
        for i in range(40)
    ]
    refused = 0
    for _ in range(4000):
        raw = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] = rng.choice(
                [0xCA, 0xCC, 0xD0, 0xD4, 0xD9, 0xDE, 0xC4, 0xFF, 0x00, 0x81, 0xA1, rng.randrange(256)]
            )
        raw = bytes(raw)
        if is_strict(raw) is None:
            refused += 1
            assert diagnose(raw) != "not in the profile", raw.hex()
    assert refused > 1000


def test_ledger_refuses_to_open_and_sign_a_log_with_a_non_strict_record(state_dir, ed_signer):
    """A float32 time appended with a valid CRC and chain: not signed on the next open."""
    ledger_dir = StateLayout(state_dir).ledger
    with Ledger.open(ledger_dir, signer=ed_signer) as led:
        led.append("test.event", {"i": 0})
        prev = bytes.fromhex(led.records(since_seq=0).__next__().digest_hex)
    raw = _rec(seq=b"\x01", time=b"\xca" + b"\x4e\xd2\x49\x20", prev=b"\xc4\x20" + prev)
    seg = sorted(ledger_dir.glob("*.seg"))[-1]
    with open(seg, "ab") as fh:
        fh.write(encode_frame(RECORD, raw))
    before = {p.name: p.read_bytes() for p in ledger_dir.glob("*.seg")}
    with pytest.raises(LedgerVerificationError) as e:
        Ledger.open(ledger_dir, signer=ed_signer)
    assert (e.value.seq, e.value.reason) == (1, Reason.CORRUPT)
    assert {p.name: p.read_bytes() for p in ledger_dir.glob("*.seg")} == before  # nothing signed, nothing cut
    with pytest.raises(LedgerVerificationError):
        list(iter_records(ledger_dir))
    assert seg.read_bytes().startswith(SEGMENT_MAGIC[:7])


def test_checkpoint_extension_lines_are_refused(ed_signer):
    """Signed by the agent's key, so only the rule refuses it (C2SP allows extension lines; Kestrel has none)."""
    cp = sign_checkpoint(ed_signer, size=0, root=tree_root([]))
    body = cp.note.split(b"\n\n", 1)[0] + b"\nextension line\n"
    origin = origin_for(ed_signer.public_key)
    sig = base64.b64encode(key_id(ed_signer.public_key) + ed_signer.sign(body)).decode()
    note = body + f"\n\u2014 {origin} {sig}\n".encode()
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(note, ed_signer.public_key)
    assert "extension" in e.value.message
