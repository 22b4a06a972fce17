"""SegmentTail follows a real ledger across segments, incrementally, and refuses damage."""

from __future__ import annotations

import pytest

from kestrel.errors import DataError
from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger.frame import CHECKPOINT, RECORD
from kestrel.ledger.ledger import Ledger
from kestrel.sync.tail import SegmentTail


@pytest.fixture
def ledger(tmp_path):
    led = Ledger.open(tmp_path / "ledger", signer=SoftwareSigner.generate(), max_segment_bytes=4096)
    yield led
    led.close()


def _drain(tail):
    out = []
    while (frame := tail.next()) is not None:
        out.append(frame)
    return out


def test_reads_across_segments_from_any_start(ledger, tmp_path):
    for i in range(120):
        ledger.append("action.result", {"i": i, "pad": "p" * 30})
    ledger.flush()
    assert len(list((tmp_path / "ledger").glob("*.seg"))) > 1
    expected = list(ledger.entries_raw(0))
    for start in (0, 1, 57, 119, 120):
        frames = _drain(SegmentTail(tmp_path / "ledger", start))
        assert [f.payload for f in frames if f.type == RECORD] == expected[start:]
    checkpoints = [f for f in _drain(SegmentTail(tmp_path / "ledger", 0)) if f.type == CHECKPOINT]
    assert checkpoints and int(checkpoints[-1].payload.split(b"\n")[1]) == 120


def test_follows_appends_incrementally(ledger, tmp_path):
    tail = SegmentTail(tmp_path / "ledger", 0)
    assert tail.next() is None  # empty ledger
    seen = []
    for round_ in range(5):
        for i in range(30):
            ledger.append("action.result", {"r": round_, "i": i, "pad": "q" * 40})
        seen += [f.payload for f in _drain(tail) if f.type == RECORD]
    assert seen == list(ledger.entries_raw(0))


def test_damage_is_an_error(ledger, tmp_path):
    for i in range(10):
        ledger.append("action.result", {"i": i})
    ledger.flush()
    seg = sorted((tmp_path / "ledger").glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[40] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged"):
        _drain(SegmentTail(tmp_path / "ledger", 0))
    data[:8] = b"NOTMAGIC"
    seg.write_bytes(bytes(data))
    with pytest.raises(DataError, match="magic"):
        _drain(SegmentTail(tmp_path / "ledger", 0))


def test_sync_batches_end_at_checkpoints(tmp_path):
    """With a checkpoint per commit, every batch carries the checkpoint of its own last record."""
    from kestrel.sync.config import SyncConfig
    from kestrel.sync.sync import _Reader

    led = Ledger.open(tmp_path / "strict", signer=SoftwareSigner.generate(), durability="strict")
    try:
        for i in range(7):
            for _ in range(5):
                led.submit("action.result", {"i": i})
            led.flush()  # one commit of five records, with its checkpoint
        reader, start, sent, ends = _Reader(led, SyncConfig(batch_records=8)), 0, 0, []
        while (got := reader.read(start, sent)) is not None:
            batch, cp_size = got
            assert batch.records == tuple(list(led.entries_raw(0))[batch.start : batch.end])
            ends.append((batch.end, cp_size))
            start, sent = batch.end, max(sent, cp_size)
        assert start == 35 and all(end == cp for end, cp in ends), ends
    finally:
        led.close()
