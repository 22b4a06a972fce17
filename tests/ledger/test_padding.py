"""Padded commits (format version 3): a commit may end with a padding frame so that it ends on a page
boundary, and the next commit does not write that page again (flash write amplification, issue 13)."""

from __future__ import annotations

import threading

import pytest

from kestrel.ledger import Ledger, LedgerVerificationError, Reason, iter_records, verify_dir
from kestrel.ledger.engine import PAGE, padding
from kestrel.ledger.frame import HEADER_SIZE, PAD, RECORD, encode_frame, pad_frame
from kestrel.ledger.reader import RecordCursor
from kestrel.ledger.store import SEGMENT_MAGIC, SEGMENT_MAGIC_V2

from . import tamper


def test_padding_rule():
    # a commit of about 7 KB ending 936 bytes before a boundary: padded to it
    assert padding(8192 - 936, 7256) == 936
    assert padding(8192, 7256) == 0  # on a boundary already
    assert padding(4096 + 3000, 7000) == 0  # the boundary is more than a quarter page away
    assert padding(4096 * 5 - 600, 2000) == 0  # more than a quarter of the commit itself
    assert padding(4096 * 5 - 600, 2400) == 600
    assert padding(4096 - 10, 9000) == 0  # no room for a frame header before the boundary
    assert padding(4096 - HEADER_SIZE, 9000) == HEADER_SIZE


def _busy_ledger(d, signer, *, producers=16, per=40, **kw):
    with Ledger.open(d, signer=signer, **kw) as led:

        def produce(p: int) -> None:
            for i in range(per):
                led.append("test.pad", {"p": p, "i": i, "note": "n" * 300})

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return led.size


@pytest.mark.parametrize("mode", ["batched", "strict"])
def test_busy_commits_end_on_page_boundaries_and_read_back(tmp_path, ed_signer, mode):
    d = tmp_path / "l"
    n = _busy_ledger(d, ed_signer, durability=mode)
    seg = sorted(d.glob("*.seg"))[-1]
    data = seg.read_bytes()
    assert data[: len(SEGMENT_MAGIC)] == SEGMENT_MAGIC
    pads = [s for s in tamper.spans(data, len(SEGMENT_MAGIC)) if s.type == PAD]
    assert pads, "16 busy producers: some commits are padded"
    assert all(s.end % PAGE == 0 and not s.payload.strip(b"\x00") for s in pads)
    assert all(s.end - s.start <= PAGE // 4 for s in pads)
    v = verify_dir(d, ed_signer.public_key)
    assert (v.size, v.signed_size) == (n, n)
    assert [r.seq for r in iter_records(d)] == list(range(n))
    assert [r.seq for r in RecordCursor(d).poll()] == list(range(n))
    with Ledger.open(d, signer=ed_signer) as led:  # the writer reopens a padded log
        assert led.size == n and led.append("test.after", {}).seq == n


def test_sparse_appends_are_not_padded(tmp_path, ed_signer):
    d = tmp_path / "l"
    with Ledger.open(d, signer=ed_signer) as led:
        for i in range(20):
            led.append("test.sparse", {"i": i})
    data = sorted(d.glob("*.seg"))[-1].read_bytes()
    assert PAD not in {s.type for s in tamper.spans(data, len(SEGMENT_MAGIC))}


def test_padding_never_rotates_a_segment(tmp_path, ed_signer):
    d = tmp_path / "l"
    n = _busy_ledger(d, ed_signer, max_segment_bytes=64 << 10)
    segs = sorted(d.glob("*.seg"))
    assert len(segs) > 2 and all(s.stat().st_size <= 64 << 10 for s in segs[:-1])
    assert verify_dir(d, ed_signer.public_key).size == n


def test_a_padding_frame_with_a_nonzero_byte_is_corrupt(tmp_path, ed_signer):
    d = tmp_path / "l"
    _busy_ledger(d, ed_signer, per=10)
    seg = sorted(d.glob("*.seg"))[-1]
    data = seg.read_bytes()
    pad = next(s for s in tamper.spans(data, len(SEGMENT_MAGIC)) if s.type == PAD)
    bad = encode_frame(PAD, b"\x00" * (len(pad.payload) - 1) + b"\x01")  # valid CRCs, same length
    seg.write_bytes(data[: pad.start] + bad + data[pad.end :])
    with pytest.raises(LedgerVerificationError) as e:
        verify_dir(d, ed_signer.public_key)
    assert e.value.reason is Reason.CORRUPT and "padding" in str(e.value)
    with pytest.raises(LedgerVerificationError):
        Ledger.open(d, signer=ed_signer)
    assert seg.read_bytes()[pad.start : pad.end] == bad  # nothing cut


def test_a_torn_padding_frame_is_an_unfinished_write(tmp_path, ed_signer):
    d = tmp_path / "l"
    with Ledger.open(d, signer=ed_signer) as led:
        for i in range(3):
            led.append("test.event", {"i": i})
    seg = sorted(d.glob("*.seg"))[-1]
    with open(seg, "ab") as fh:
        fh.write(pad_frame(1000)[:600])  # the process died inside a padded commit's last frame
    with Ledger.open(d, signer=ed_signer) as led:
        last = list(led)[-1]
        assert last.kind == "ledger.recovered" and last.body["bytes"] == 600
        assert last.body["reason"] == "unfinished write"


def test_version_2_segment_is_read_then_upgraded_to_3(tmp_path, ed_signer):
    d = tmp_path / "l"
    with Ledger.open(d, signer=ed_signer) as led:
        for i in range(3):
            led.append("test.event", {"i": i})
    seg = sorted(d.glob("*.seg"))[-1]
    data = seg.read_bytes()
    seg.write_bytes(SEGMENT_MAGIC_V2 + data[len(SEGMENT_MAGIC) :])
    assert verify_dir(d, ed_signer.public_key).size == 3
    assert [r.seq for r in iter_records(d)] == [0, 1, 2]
    with Ledger.open(d, signer=ed_signer) as led:
        assert led.size == 3
    assert seg.read_bytes()[: len(SEGMENT_MAGIC)] == SEGMENT_MAGIC
    assert RECORD in {s.type for s in tamper.spans(seg.read_bytes(), len(SEGMENT_MAGIC))}
