"""Reads in bounded memory and time: the persisted index, streaming verification, the latest of a kind."""

from __future__ import annotations

import os
import random
import tracemalloc

import pytest

import kestrel.ledger.verify as verify_mod
from kestrel.ledger import Ledger, LedgerVerificationError, Reason, verify_dir
from kestrel.ledger.export import encode_proof, verify_proof
from kestrel.ledger.index import BLOCK, MMR_FILE, POS_FILE, IndexReader
from kestrel.ledger.reader import RecordCursor, _walk_keeping_leaves, iter_records, latest_record, prove


def _fill(d, signer, n, *, segment=64 << 10, kinds=("test.event",)):
    with Ledger.open(d, signer=signer, max_segment_bytes=segment) as led:
        for i in range(n):
            led.append(kinds[i % len(kinds)], {"i": i, "pad": "x" * 40})
    return d


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    from kestrel.identity.keys import SoftwareSigner

    signer = SoftwareSigner.generate()
    d = _fill(
        tmp_path_factory.mktemp("big") / "l",
        signer,
        3 * BLOCK * 4 + 37,
        kinds=("test.event", "test.event", "ota.applied"),
    )
    return d, signer


def test_index_is_written_and_locates_every_block(big):
    d, _ = big
    index = IndexReader.open(d)
    assert index is not None and index.blocks == -(-(3 * BLOCK * 4 + 37) // BLOCK)  # block starts written
    assert index.nodes == 2 * 12 - bin(12).count("1")  # roots of the 12 full blocks, and their parents
    index.close()
    for since in (0, 1, BLOCK - 1, BLOCK, 5 * BLOCK + 3, 3 * BLOCK * 4 + 36):
        recs = list(iter_records(d, since_seq=since))
        assert recs[0].seq == since and recs[-1].seq == 3 * BLOCK * 4 + 36


@pytest.mark.parametrize("damage", ["missing", "garbage", "stale", "off-frame"])
def test_reads_and_proofs_survive_a_missing_or_wrong_index(big, tmp_path, damage):
    import shutil

    d0, signer = big
    d = tmp_path / "copy"
    shutil.copytree(d0, d)
    if damage == "missing":
        os.unlink(d / POS_FILE)
    elif damage == "garbage":
        data = bytearray((d / POS_FILE).read_bytes())
        rng = random.Random(3)
        for i in range(8, len(data)):
            data[i] = rng.randrange(256)
        (d / POS_FILE).write_bytes(bytes(data))
        mmr = bytearray((d / MMR_FILE).read_bytes())
        mmr[40] ^= 1
        (d / MMR_FILE).write_bytes(bytes(mmr))
    elif damage == "stale":  # an index of another ledger entirely
        (d / POS_FILE).write_bytes((d / POS_FILE).read_bytes()[:8] + bytes(16) * 12)
    else:  # right segments, offsets moved into the middle of frames
        data = bytearray((d / POS_FILE).read_bytes())
        for i in range(8 + 15, len(data), 16):
            data[i] = (data[i] + 3) % 256
        (d / POS_FILE).write_bytes(bytes(data))
    for since in (0, 700, 3 * BLOCK * 4):
        assert [r.seq for r in iter_records(d, since_seq=since)][:2] == [since, since + 1]
    for seq in (0, 300, 3 * BLOCK * 4 + 30):
        assert verify_proof(prove(d, signer.public_key, seq), signer.public_key).record.seq == seq


def test_indexed_proofs_equal_the_full_walk(big):
    d, signer = big
    verified, walker = _walk_keeping_leaves(d, signer.public_key)
    cp = verified.checkpoint
    for seq in (0, 1, 255, 256, 257, 1023, 1024, 2000, cp.size - 1):
        raw = next(r.raw for r in iter_records(d, since_seq=seq))
        assert prove(d, signer.public_key, seq) == encode_proof(seq, walker.leaves[: cp.size], raw, cp)


def test_latest_of_a_kind_without_a_scan(big, tmp_path):
    d, signer = big
    newest = max(r.seq for r in iter_records(d, kind="ota.applied"))
    assert latest_record(d, "ota.applied").seq == newest
    assert latest_record(d, "no.such") is None
    import shutil

    d2 = tmp_path / "l"
    shutil.copytree(d, d2)
    with Ledger.open(d2, signer=signer) as led:
        assert led.latest("ota.applied").seq == newest
        r = led.append("ota.applied", {"counter": 9})
        assert led.latest("ota.applied").seq == r.seq and led.latest("ota.applied").body == {"counter": 9}
    assert latest_record(d2, "ota.applied").seq == r.seq


def test_latest_reads_only_since_the_saved_map(big, monkeypatch):
    """The writer's saved map (index.kinds) means a reader starts near the end, not at record 0."""
    d, _ = big
    import kestrel.ledger.reader as reader

    starts = []
    real = reader.iter_records

    def spy(ledger_dir, *, since_seq=0, kind=None):
        starts.append(since_seq)
        return real(ledger_dir, since_seq=since_seq, kind=kind)

    monkeypatch.setattr(reader, "iter_records", spy)
    reader.latest_record(d, "ota.applied")
    assert starts and min(starts) > 3 * BLOCK * 4 - 10


def test_record_cursor_reads_only_new_records_across_segments(tmp_path, ed_signer):
    d = tmp_path / "l"
    with Ledger.open(d, signer=ed_signer, max_segment_bytes=8 << 10) as led:
        for i in range(10):
            led.append("test.event", {"i": i})
        cursor = RecordCursor(d, 4)
        assert [r.seq for r in cursor.poll()] == list(range(4, 10))
        assert cursor.poll() == []
        for i in range(200):  # several segment rotations
            led.append("test.event", {"i": i, "pad": "y" * 100})
        got = cursor.poll()
        assert [r.seq for r in got] == list(range(10, 210))
        assert len(list(d.glob("*.seg"))) > 2


def test_segment_name_must_be_its_first_record(tmp_path, ed_signer):
    d = _fill(tmp_path / "l", ed_signer, 300, segment=8 << 10)
    segs = sorted(d.glob("*.seg"))
    second = segs[1]
    os.rename(second, d / f"{int(second.stem) + 1:020d}.seg")
    with pytest.raises(LedgerVerificationError) as e:
        verify_dir(d, ed_signer.public_key)
    assert e.value.reason is Reason.CORRUPT and "named for record" in e.value.detail


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_verification_and_reads_do_not_grow_with_the_ledger(tmp_path, ed_signer, monkeypatch):
    """Python heap at the peak, for a ledger and one four times as large (leaves kept: 64 at most)."""
    monkeypatch.setattr(verify_mod, "_KEEP", 64)
    small = _fill(tmp_path / "s", ed_signer, 1000, segment=32 << 10)
    large = _fill(tmp_path / "b", ed_signer, 4000, segment=32 << 10)
    for d, n in ((small, 1000), (large, 4000)):
        assert verify_dir(d, ed_signer.public_key).size == n
    v_small = _peak(lambda: verify_dir(small, ed_signer.public_key))
    v_large = _peak(lambda: verify_dir(large, ed_signer.public_key))
    assert v_large < v_small * 1.5 + 64_000, (v_small, v_large)
    r_small = _peak(lambda: list(iter_records(small, since_seq=999)))
    r_large = _peak(lambda: list(iter_records(large, since_seq=3999)))
    assert r_large < r_small * 1.5 + 32_000, (r_small, r_large)
    p_small = _peak(lambda: prove(small, ed_signer.public_key, 500))
    p_large = _peak(lambda: prove(large, ed_signer.public_key, 2000))
    assert p_large < p_small * 1.5 + 32_000, (p_small, p_large)


def test_ota_counter_comes_from_the_latest_record_not_a_scan(tmp_path, ed_signer, monkeypatch):
    from kestrel.ota.apply import _ledger_max

    with Ledger.open(tmp_path / "l", signer=ed_signer) as led:
        for c in (1, 2, 5):
            led.append("ota.applied", {"counter": c, "tpm": c + 10})
            led.append("test.event", {})

        def no_scan(*a, **kw):
            raise AssertionError("the OTA counter lookup scanned the ledger")

        monkeypatch.setattr(led, "records", no_scan)
        assert _ledger_max(led, "counter") == 5 and _ledger_max(led, "tpm") == 15
