"""The writable ledger: group commit, durability modes, rotation, recovery on open."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import stat
import threading
import time

import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import (
    Ledger,
    LedgerBusyError,
    LedgerError,
    LedgerIOError,
    LedgerVerificationError,
    Reason,
    RecordError,
)
from kestrel.ledger.frame import CHECKPOINT, RECORD, TAIL_SEAL, encode_frame
from kestrel.ledger.reader import read_stream
from kestrel.ledger.record import encode_record, leaf_hash
from kestrel.ledger.store import SEGMENT_MAGIC
from kestrel.ledger.tailmac import seal_payload
from kestrel.ledger.verify import verify_stream

from . import tamper


def _segments(d):
    return sorted(p for p in d.iterdir() if p.suffix == ".seg")


@pytest.mark.parametrize("mode", ["strict", "batched"])
def test_append_iterate_reopen(tmp_path, signer, mode):
    d = tmp_path / "ledger"
    with Ledger.open(d, signer=signer, durability=mode) as led:
        receipts = [led.append("test.a" if i % 2 else "test.b", {"i": i}) for i in range(30)]
        assert [r.seq for r in receipts] == list(range(30))
        if mode == "strict":  # the record and a signed checkpoint covering it are on disk already
            assert led.latest_checkpoint().size == 30
    with Ledger.open(d, signer=signer, durability=mode) as led:
        recs = list(led)
        assert [r.body["i"] for r in recs] == list(range(30))
        assert [r.digest.hex() for r in recs] == [r.digest for r in receipts]
        assert [r.seq for r in led.records(since_seq=25)] == [25, 26, 27, 28, 29]
        assert (
            all(r.kind == "test.a" for r in led.records(kind="test.a")) and len(list(led.records(kind="test.*"))) == 30
        )
        assert list(led.entries_raw(28)) == [recs[28].raw, recs[29].raw]
        v = led.verify()
        assert (v.size, v.signed_size, v.unsigned) == (30, 30, 0)
        assert led.append("test.c", {}).seq == 30
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in _segments(d))


@pytest.mark.parametrize("mode", ["strict", "batched"])
def test_concurrent_appends_get_distinct_durable_receipts(tmp_path, ed_signer, mode):
    led = Ledger.open(tmp_path / "l", signer=ed_signer, durability=mode, max_batch_delay_ms=2)
    got: list = []
    lock = threading.Lock()

    def producer(k):
        for i in range(40):
            r = led.append("test.p", {"k": k, "i": i})
            with lock:
                got.append((r.seq, k, i))

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    led.close()
    assert sorted(s for s, _, _ in got) == list(range(320))
    led = Ledger.open(tmp_path / "l", signer=ed_signer)
    by_seq = {r.seq: (r.body["k"], r.body["i"]) for r in led}
    assert all(by_seq[s] == (k, i) for s, k, i in got)
    assert led.verify().signed_size == 320
    led.close()


def test_one_commit_wakes_worker_threads_main_thread_and_futures(tmp_path, ed_signer):
    """Worker threads are woken as a chain, the main thread and futures directly: all in one commit."""
    led = Ledger.open(tmp_path / "l", signer=ed_signer, durability="batched", max_batch_delay_ms=200)
    start = threading.Barrier(7)
    got: dict = {}

    def worker(k):
        start.wait()
        got[k] = [led.append("test.w", {"k": k, "i": i}).seq for i in range(20)]

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(6)]
    [t.start() for t in threads]
    start.wait()
    futures = [led.submit("test.f", {"i": i}) for i in range(5)]
    mine = [led.append("test.m", {"i": i}).seq for i in range(20)]
    [t.join(timeout=30) for t in threads]
    assert not any(t.is_alive() for t in threads)
    seqs = mine + [f.result(timeout=10).seq for f in futures] + [s for k in range(6) for s in got[k]]
    assert sorted(seqs) == list(range(145))
    by_seq = {r.seq: r for r in led}
    assert all(by_seq[s].kind == "test.m" and by_seq[s].body["i"] == i for i, s in enumerate(mine))
    assert all(by_seq[s].body == {"k": k, "i": i} for k in range(6) for i, s in enumerate(got[k]))
    led.close()


def test_failed_commit_wakes_every_waiting_thread_with_the_error(tmp_path, ed_signer, monkeypatch):
    from kestrel.ledger.store import SegmentWriter

    led = Ledger.open(tmp_path / "l", signer=ed_signer, durability="batched", max_batch_delay_ms=200)
    led.append("test.ok", {})

    def broken_disk(self, data, *, next_seq):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(SegmentWriter, "write_durable", broken_disk)
    errors: list = []
    start = threading.Barrier(8)

    def worker():
        start.wait()
        try:
            led.append("test.lost", {})
        except LedgerIOError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    [t.start() for t in threads]
    [t.join(timeout=30) for t in threads]
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 8
    with pytest.raises(LedgerIOError):
        led.append("test.after", {})
    monkeypatch.undo()
    led.close()


@pytest.mark.parametrize("mode", ["strict", "batched"])
def test_commits_fall_back_to_write_then_fdatasync_where_the_kernel_refuses_rwf_dsync(
    tmp_path, ed_signer, mode, monkeypatch
):
    from kestrel.ledger import store

    if not store._DSYNC:
        pytest.skip("this platform has no RWF_DSYNC: every commit is write + fdatasync already")
    monkeypatch.setattr(store, "_DSYNC", 1 << 30)  # a flag no kernel knows: pwritev2 fails with EOPNOTSUPP
    with Ledger.open(tmp_path / "l", signer=ed_signer, durability=mode) as led:
        receipts = [led.append("test.f", {"i": i}) for i in range(5)]
    assert store._DSYNC == 0  # refused once, then never asked again
    with Ledger.open(tmp_path / "l", signer=ed_signer) as led:
        assert [r.digest.hex() for r in led] == [r.digest for r in receipts]
        assert led.verify().signed_size == 5


def test_batched_mode_shares_signatures(tmp_path, ed_signer):
    """Many appends, few checkpoints: one signature covers a whole group commit."""
    led = Ledger.open(tmp_path / "l", signer=ed_signer, durability="batched", checkpoint_interval_ms=50)
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda: [led.append("t.x", {}) for _ in range(25)]) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    elapsed = time.monotonic() - t0
    led.close()
    frames = tamper.spans(read_stream(tmp_path / "l"))
    n_cp = sum(1 for f in frames if f.type == CHECKPOINT)
    assert sum(1 for f in frames if f.type == RECORD) == 200
    assert n_cp <= elapsed / 0.05 + 2  # at most one signature per interval, plus the one at close


def test_append_async(tmp_path, ed_signer):
    async def main(led):
        return await asyncio.gather(*(led.append_async("test.async", {"i": i}) for i in range(50)))

    with Ledger.open(tmp_path / "l", signer=ed_signer) as led:
        receipts = asyncio.run(main(led))
    assert sorted(r.seq for r in receipts) == list(range(50))


def test_rotation_keeps_one_log(tmp_path, signer):
    d = tmp_path / "l"
    with Ledger.open(d, signer=signer, max_segment_bytes=2000) as led:
        for i in range(120):
            led.append("test.rot", {"i": i, "pad": "p" * 100})
    segs = _segments(d)
    assert len(segs) > 5
    assert all(p.read_bytes().startswith(SEGMENT_MAGIC) for p in segs)
    with Ledger.open(d, signer=signer, max_segment_bytes=2000) as led:
        assert led.verify().size == 120
        assert [r.body["i"] for r in led.records(since_seq=100)] == list(range(100, 120))


def test_bad_body_is_refused_and_ledger_keeps_working(tmp_path, ed_signer):
    with Ledger.open(tmp_path / "l", signer=ed_signer) as led:
        with pytest.raises(RecordError):
            led.append("test.x", {"s": {1, 2}})
        with pytest.raises(RecordError):
            led.append("NOT A KIND", {})
        assert led.append("test.x", {"ok": True}).seq == 0
    with pytest.raises(LedgerError, match="closed"):
        led.append("test.x", {})


def test_open_with_another_key_is_refused_and_changes_nothing(tmp_path, ed_signer):
    d = tmp_path / "l"
    with Ledger.open(d, signer=ed_signer) as led:
        led.append("test.x", {})
    before = {p.name: p.read_bytes() for p in _segments(d)}
    with pytest.raises(LedgerVerificationError) as e:
        Ledger.open(d, signer=SoftwareSigner.generate())
    assert e.value.reason is Reason.BAD_SIGNATURE
    assert {p.name: p.read_bytes() for p in _segments(d)} == before


def _closed_ledger(d, signer, n):
    with Ledger.open(d, signer=signer, durability="strict") as led:
        for i in range(n):
            led.append("test.torn", {"i": i})
    return _segments(d)[-1]


def test_torn_tail_every_byte_offset_recovers_to_last_whole_frame(tmp_path, ed_signer):
    """Pure recovery decision at every cut offset of the last frames (the writer uses the same walk)."""
    data = _closed_ledger(tmp_path / "l", ed_signer, 6).read_bytes()
    spans = tamper.spans(data, len(SEGMENT_MAGIC))
    for cut in range(spans[-4].start, len(data) + 1):
        v = verify_stream(data[len(SEGMENT_MAGIC) : cut], ed_signer.public_key, allow_torn_tail=True)
        whole = [s for s in spans if s.end <= cut]
        assert v.size == sum(1 for s in whole if s.type == RECORD), cut
        assert v.torn_bytes == cut - whole[-1].end, cut


def _cut_and_open(tmp_path, ed_signer, cuts):
    base = tmp_path / "base"
    seg = _closed_ledger(base, ed_signer, 6)
    data = seg.read_bytes()
    spans = tamper.spans(data, len(SEGMENT_MAGIC))
    for cut in cuts(spans, len(data)):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(base, d)
        with open(d / seg.name, "r+b") as fh:
            fh.truncate(cut)
        # strict mode: a commit is its records and its checkpoint, in one write; records whose
        # checkpoint was cut were never acknowledged (and nothing vouches for them): cut too
        signed_end = max((s.end for s in spans if s.end <= cut and s.type == CHECKPOINT), default=0)
        whole = [s for s in spans if s.end <= signed_end and s.type == RECORD]
        was_torn = cut > signed_end
        with Ledger.open(d, signer=ed_signer) as led:
            v = led.verify()
            assert (v.size, v.unsigned) == (len(whole) + was_torn, 0), cut
            records = list(led)
            assert [r.body["i"] for r in records[: len(whole)]] == list(range(len(whole)))
            led.append("test.after", {})
        torn = list((d / "torn").glob("*.bin")) if (d / "torn").exists() else []
        if was_torn:  # saved, and recorded in the ledger itself
            assert len(torn) == 1 and data[:cut].endswith(torn[0].read_bytes()), cut
            cut_bytes = torn[0].read_bytes()
            lost = sum(1 for s in spans if signed_end <= s.start and s.end <= cut and s.type == RECORD)
            assert records[-1].kind == "ledger.recovered" and records[-1].body == {
                "segment": seg.name,
                "offset": cut - len(cut_bytes),
                "bytes": len(cut_bytes),
                "sha256": hashlib.sha256(cut_bytes).hexdigest(),
                "saved": f"torn/{torn[0].name}",
                "reason": "unauthenticated" if lost else "unfinished write",
                "records": lost,
            }, cut
        else:
            assert not torn and all(r.kind == "test.torn" for r in records), cut
        shutil.rmtree(d)


def test_torn_tail_open_recovers_sampled_offsets(tmp_path, ed_signer):
    """Ledger.open on cuts at, around and inside the last frames (every offset: the slow variant)."""

    def cuts(spans, size):
        edges = {c for s in spans[-4:] for c in (s.start, s.start + 1, s.start + 15, s.start + 16, s.end - 1)}
        return sorted(c for c in edges if c <= size)

    _cut_and_open(tmp_path, ed_signer, cuts)


@pytest.mark.slow
def test_torn_tail_open_recovers_every_offset(tmp_path, ed_signer):
    _cut_and_open(tmp_path, ed_signer, lambda spans, size: range(spans[-4].start, size))


def test_zero_filled_tail_is_torn(tmp_path, ed_signer):
    seg = _closed_ledger(tmp_path / "l", ed_signer, 3)
    with open(seg, "ab") as fh:
        fh.write(b"\x00" * 4096)
    with Ledger.open(tmp_path / "l", signer=ed_signer) as led:
        assert led.verify().size == 4
        last = list(led)[-1]
        assert last.kind == "ledger.recovered" and last.body["bytes"] == 4096 and last.body["segment"] == seg.name
    assert seg.stat().st_size < 4096


def test_damage_before_intact_frames_refuses_to_open(tmp_path, ed_signer):
    seg = _closed_ledger(tmp_path / "l", ed_signer, 5)
    data = seg.read_bytes()
    span = tamper.spans(data, len(SEGMENT_MAGIC))[2]
    bad = tamper.flip_bit(data, (span.start + 20) * 8)
    seg.write_bytes(bad)
    with pytest.raises(LedgerVerificationError) as e:
        Ledger.open(tmp_path / "l", signer=ed_signer)
    assert e.value.reason is Reason.BIT_FLIP
    assert seg.read_bytes() == bad  # nothing cut, nothing lost


def test_bit_flip_in_last_frame_is_not_mistaken_for_a_torn_write(tmp_path, ed_signer):
    seg = _closed_ledger(tmp_path / "l", ed_signer, 3)
    data = seg.read_bytes()
    last = tamper.spans(data, len(SEGMENT_MAGIC))[-1]
    for bit in range(last.start * 8, len(data) * 8, 7):
        seg.write_bytes(tamper.flip_bit(data, bit))
        with pytest.raises(LedgerVerificationError):
            Ledger.open(tmp_path / "l", signer=ed_signer)
    seg.write_bytes(data)


def test_unsigned_tail_after_crash_is_signed_on_open(tmp_path, signer):
    seg = _closed_ledger(tmp_path / "l", signer, 3)
    recs = [r for r in tamper.spans(seg.read_bytes(), len(SEGMENT_MAGIC)) if r.type == RECORD]
    raw = encode_record(seq=3, time=1.0, kind="test.late", body={}, prev=leaf_hash(recs[-1].payload))
    seal = seal_payload(signer.ledger_secret(), 4, leaf_hash(raw))
    with open(seg, "ab") as fh:  # a batched commit that was written and fsynced, then the process died
        fh.write(encode_frame(RECORD, raw) + encode_frame(TAIL_SEAL, seal))
    with Ledger.open(tmp_path / "l", signer=signer) as led:
        v = led.verify()
        assert (v.size, v.signed_size) == (4, 4)


def test_segment_header_damage_is_detected(tmp_path, ed_signer):
    seg = _closed_ledger(tmp_path / "l", ed_signer, 2)
    seg.write_bytes(tamper.flip_bit(seg.read_bytes(), 3))
    with pytest.raises(LedgerVerificationError) as e:
        Ledger.open(tmp_path / "l", signer=ed_signer)
    assert e.value.reason is Reason.BIT_FLIP


def test_strict_signer_failure_fails_the_append_and_writes_nothing(tmp_path, ed_signer):
    class Unplugged:  # a signer whose device went away (like a TPM that stops answering)
        public_key = ed_signer.public_key

        def sign(self, message: bytes) -> bytes:
            raise OSError("device unplugged")

    with Ledger.open(tmp_path / "l", signer=ed_signer, durability="strict") as led:
        led.append("test.ok", {})
    before = _segments(tmp_path / "l")[-1].read_bytes()
    led = Ledger.open(tmp_path / "l", signer=Unplugged(), durability="strict")
    with pytest.raises(LedgerIOError, match="unplugged"):
        led.append("test.lost", {})
    with pytest.raises(LedgerIOError):
        led.append("test.after", {})
    led.close()
    assert _segments(tmp_path / "l")[-1].read_bytes() == before


def test_one_writer_at_a_time(tmp_path, ed_signer):
    d = tmp_path / "l"
    led = Ledger.open(d, signer=ed_signer)
    with pytest.raises(LedgerBusyError, match="already open for writing") as e:
        Ledger.open(d, signer=ed_signer)
    assert isinstance(e.value, LedgerIOError)  # a transport error, as before
    assert e.value.holder == str(os.getpid()) and str(os.getpid()) in e.value.message
    led.append("test.x", {})
    led.close()
    with Ledger.open(d, signer=ed_signer) as again:  # released on close
        assert again.size == 1


def test_large_records_are_split_into_bounded_commits(tmp_path, ed_signer):
    with Ledger.open(tmp_path / "l", signer=ed_signer, max_segment_bytes=4 << 20) as led:
        futs = [led.submit("test.big", {"blob": bytes([i]) * 900_000}) for i in range(20)]
        assert [f.result().seq for f in futs] == list(range(20))
        assert led.verify().size == 20
    sizes = [p.stat().st_size for p in _segments(tmp_path / "l")]
    assert len(sizes) >= 2 and max(sizes) <= (8 << 20) + 2 * 900_100  # one commit: at most ~8 MiB + a record


def test_readers_see_consistent_prefixes_while_appending(tmp_path, ed_signer):
    from kestrel.ledger import iter_records, verify_dir

    d = tmp_path / "l"
    led = Ledger.open(d, signer=ed_signer, max_segment_bytes=8000)
    done = threading.Event()

    def writer():
        for i in range(300):
            led.append("test.rw", {"i": i, "pad": "w" * 60})
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    seen = []
    while not done.is_set():
        v = verify_dir(d, ed_signer.public_key)  # a running writer: torn or unsigned tails are fine
        recs = [r.body["i"] for r in iter_records(d)]
        assert recs == list(range(len(recs))) and v.size <= 300
        seen.append(v.size)
    t.join()
    led.close()
    assert verify_dir(d, ed_signer.public_key).signed_size == 300 and len(seen) >= 1


def test_forged_intermediate_signature_is_caught_by_a_full_audit(tmp_path, ed_signer):
    """Reopening checks every root but only the newest signature; `audit verify` checks them all."""
    from kestrel.ledger import verify_dir
    from kestrel.ledger.frame import CHECKPOINT

    seg = _closed_ledger(tmp_path / "l", ed_signer, 4)
    data = seg.read_bytes()
    first_cp = next(s for s in tamper.spans(data, len(SEGMENT_MAGIC)) if s.type == CHECKPOINT)
    note = first_cp.payload
    i = note.rindex(b" ") + 10  # inside the base64 signature
    forged = note[:i] + (b"A" if note[i : i + 1] != b"A" else b"B") + note[i + 1 :]
    seg.write_bytes(data[: first_cp.start] + tamper.reframe(CHECKPOINT, forged) + data[first_cp.end :])
    with pytest.raises(LedgerVerificationError) as e:
        verify_dir(tmp_path / "l", ed_signer.public_key)
    assert (e.value.seq, e.value.reason) == (0, Reason.BAD_SIGNATURE)
    with Ledger.open(tmp_path / "l", signer=ed_signer) as led:
        assert led.size == 4
