"""The writer's resume point (resume.py): open verifies only the segments from the last one started,
when a resume point authenticates and fits; every other case falls back to the whole log."""

from __future__ import annotations

import logging
import shutil

import pytest

import kestrel.ledger.ledger as ledger_mod
from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger, LedgerVerificationError, iter_records, verify_dir
from kestrel.ledger.frame import RECORD, encode_frame
from kestrel.ledger.record import encode_record, leaf_hash
from kestrel.ledger.resume import RESUME_FILE, decode_resume, encode_resume
from kestrel.ledger.store import SEGMENT_MAGIC

from . import tamper

SEGMENT = 32 << 10


def _fill(led: Ledger, n: int, kind: str = "test.fill") -> None:
    for lo in range(0, n, 40):  # commits of up to 40 records: a few per segment
        futures = [led.submit(kind, {"i": i, "pad": "p" * 80}) for i in range(lo, min(n, lo + 40))]
        for f in futures:
            f.result(timeout=60)


def _segments(d):
    return sorted(d.glob("*.seg"))


def _first_seqs(d):
    return [int(p.stem) for p in _segments(d)]


@pytest.fixture
def mapped(monkeypatch):
    """The first seq of every segment the writer's open maps (verifies)."""
    seen: list[int] = []
    real = ledger_mod.map_segment

    def spy(path, first_seq):
        seen.append(first_seq)
        return real(path, first_seq)

    monkeypatch.setattr(ledger_mod, "map_segment", spy)
    return seen


def _ledger(d, signer, mode="batched", n=1200):
    with Ledger.open(d, signer=signer, durability=mode, max_segment_bytes=SEGMENT) as led:
        led.append("test.once", {"early": True})  # a kind only in the first segment
        # A resume point needs a signed checkpoint before its segment starts; the signer's pace
        # depends on load, so make one now rather than hope for one within the first segment.
        led.flush()
        _fill(led, n)
        size = led.size
    assert len(_segments(d)) >= 2 + (n >= 400)
    return size


def _point(d, signer):
    return decode_resume(signer.ledger_secret(), (d / RESUME_FILE).read_bytes(), signer.public_key)


@pytest.mark.parametrize("mode", ["batched", "strict"])
def test_open_verifies_from_the_last_segment_started(tmp_path, signer, mode, mapped):
    d = tmp_path / "l"
    size = _ledger(d, signer, mode)
    point = _point(d, signer)
    assert point is not None and point.size == _first_seqs(d)[-1]  # saved when the last segment started
    mapped.clear()
    with Ledger.open(d, signer=signer, durability=mode, max_segment_bytes=SEGMENT) as led:
        assert mapped == [point.size]  # only the last segment was read
        assert led.size == size and led.latest("test.once").seq == 0 and led.latest("test.fill").seq == size - 1
        assert led.append("test.after", {}).seq == size
    v = verify_dir(d, signer.public_key)
    assert (v.size, v.signed_size) == (size + 1, size + 1)


def test_missing_resume_point_verifies_everything_and_saves_one(tmp_path, ed_signer, mapped):
    d = tmp_path / "l"
    size = _ledger(d, ed_signer)
    (d / RESUME_FILE).unlink()
    mapped.clear()
    with Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT) as led:
        assert mapped == _first_seqs(d) and led.size == size
    point = _point(d, ed_signer)
    assert point is not None and point.size == _first_seqs(d)[-1]  # the next open is quick again
    mapped.clear()
    Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT).close()
    assert mapped == [point.size]


@pytest.mark.parametrize("where", ["mac", "payload", "magic", "truncated", "empty"])
def test_corrupt_resume_point_is_not_used(tmp_path, ed_signer, mapped, caplog, where):
    d = tmp_path / "l"
    size = _ledger(d, ed_signer)
    data = (d / RESUME_FILE).read_bytes()
    bad = {
        "mac": data[:-1] + bytes([data[-1] ^ 1]),
        "payload": tamper.flip_bit(data, 8 * 20),
        "magic": b"X" + data[1:],
        "truncated": data[: len(data) // 2],
        "empty": b"",
    }[where]
    (d / RESUME_FILE).write_bytes(bad)
    mapped.clear()
    with caplog.at_level(logging.WARNING, logger="kestrel.ledger"):
        with Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT) as led:
            assert led.size == size
    assert mapped == _first_seqs(d)  # the whole log
    assert "does not authenticate" in caplog.text
    assert _point(d, ed_signer) is not None  # replaced by a good one


def test_forged_resume_point_is_not_used(tmp_path, ed_signer, mapped):
    """Whoever can write the SD card cannot make a resume point: one MACed under another key (here
    claiming a different history and latest-kind map) is ignored."""
    d = tmp_path / "l"
    size = _ledger(d, ed_signer)
    good = _point(d, ed_signer)
    forged_kinds = {**good.kinds, "ota.applied": good.size - 1}
    forged = type(good)(good.size, b"\x11" * 32, good.frontier, good.checkpoint, forged_kinds, good.index)
    (d / RESUME_FILE).write_bytes(encode_resume(SoftwareSigner.generate().ledger_secret(), forged))
    mapped.clear()
    with Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT) as led:
        assert mapped == _first_seqs(d)
        assert led.latest("ota.applied") is None and led.size == size
    assert _point(d, ed_signer) == good


def test_stale_resume_point_verifies_from_its_segment(tmp_path, ed_signer, mapped):
    """The log grew past the saved point (a crash before the newer one was saved): more is verified."""
    d = tmp_path / "l"
    _ledger(d, ed_signer, n=400)
    old = (d / RESUME_FILE).read_bytes()
    old_point = _point(d, ed_signer)
    with Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT) as led:
        _fill(led, 800, kind="test.later")
        size = led.size
    assert _point(d, ed_signer).size > old_point.size
    (d / RESUME_FILE).write_bytes(old)
    mapped.clear()
    with Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT) as led:
        assert mapped == [s for s in _first_seqs(d) if s >= old_point.size]
        assert led.size == size and led.latest("test.later").seq == size - 1
    assert _point(d, ed_signer).size == _first_seqs(d)[-1]
    assert verify_dir(d, ed_signer.public_key).size == size


def test_stale_resume_point_and_a_foreign_tail_cut_never_signed(tmp_path, ed_signer):
    d = tmp_path / "l"
    size = _ledger(d, ed_signer)
    seg = _segments(d)[-1]
    prev = bytes.fromhex(next(iter_records(d, since_seq=size - 1)).digest_hex)
    raw = encode_record(seq=size, time=1764000000.0, kind="ota.applied", body={"forged": 1}, prev=prev)
    with open(seg, "ab") as fh:  # valid CRCs and chain, no seal: not the writer's
        fh.write(encode_frame(RECORD, raw))
    with Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT) as led:
        records = list(led.records(since_seq=size))
        assert [r.kind for r in records] == ["ledger.recovered"] and records[0].body["reason"] == "unauthenticated"
        assert led.latest("ota.applied") is None
    assert leaf_hash(raw) not in {bytes.fromhex(r.digest_hex) for r in iter_records(d)}
    v = verify_dir(d, ed_signer.public_key)
    assert (v.size, v.signed_size) == (size + 1, size + 1)


def test_resume_point_that_does_not_fit_the_log_is_not_used(tmp_path, ed_signer, mapped, caplog):
    """A resume point saved by a longer copy of the log (its segment is missing here), or one whose
    segment holds other records: the whole log is verified."""
    d, longer = tmp_path / "l", tmp_path / "longer"
    _ledger(d, ed_signer, n=300)
    shutil.copytree(d, longer)
    with Ledger.open(longer, signer=ed_signer, max_segment_bytes=SEGMENT) as led:
        _fill(led, 900)
    shutil.copy(longer / RESUME_FILE, d / RESUME_FILE)
    mapped.clear()
    with caplog.at_level(logging.WARNING, logger="kestrel.ledger"):
        with Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT) as led:
            size = led.size
    assert mapped == _first_seqs(d) and "does not fit" in caplog.text
    assert verify_dir(d, ed_signer.public_key).size == size
    good = _point(d, ed_signer)  # authentic, but its segment does not start with the history it says
    other = type(good)(good.size, b"\x11" * 32, good.frontier, good.checkpoint, good.kinds, good.index)
    (d / RESUME_FILE).write_bytes(encode_resume(ed_signer.ledger_secret(), other))
    caplog.clear()
    mapped.clear()
    with caplog.at_level(logging.WARNING, logger="kestrel.ledger"):
        with Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT) as led:
            assert led.size == size
    assert mapped == [good.size, *_first_seqs(d)] and "does not fit" in caplog.text
    assert _point(d, ed_signer) == good


def test_damage_in_a_verified_segment_still_refuses_to_open(tmp_path, ed_signer):
    d = tmp_path / "l"
    _ledger(d, ed_signer)
    seg = _segments(d)[-1]
    data = seg.read_bytes()
    span = [s for s in tamper.spans(data, len(SEGMENT_MAGIC)) if s.type == RECORD][1]
    seg.write_bytes(tamper.flip_bit(data, (span.start + 20) * 8))
    with pytest.raises(LedgerVerificationError):
        Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT)


def test_damage_before_the_resume_point_is_never_signed_over(tmp_path, ed_signer):
    """Records before the resume point are not read on open; the writer's checkpoints commit to the
    tree it saved, so an altered old record fails the audit (it is never adopted)."""
    d = tmp_path / "l"
    size = _ledger(d, ed_signer)
    seg = _segments(d)[0]
    data = seg.read_bytes()
    span = [s for s in tamper.spans(data, len(SEGMENT_MAGIC)) if s.type == RECORD][3]
    seg.write_bytes(tamper.flip_bit(data, (span.start + 20) * 8))
    with Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT) as led:
        led.append("test.after", {})
    with pytest.raises(LedgerVerificationError):
        verify_dir(d, ed_signer.public_key)
    del size


def test_index_rebuilt_on_open_equals_the_one_written_while_appending(tmp_path, ed_signer):
    """The full walk on open rebuilds index.pos and index.mmr byte for byte as the committer wrote them
    (before: the walk recorded only the first block start, and fed the MMR leaves a checkpoint had
    already folded away)."""
    d = tmp_path / "l"
    _ledger(d, ed_signer)
    written = {name: (d / name).read_bytes() for name in ("index.pos", "index.mmr")}
    assert len(written["index.pos"]) == 8 + 16 * -(-1201 // 256)
    (d / RESUME_FILE).unlink()
    Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT).close()
    assert {name: (d / name).read_bytes() for name in written} == written
    Ledger.open(d, signer=ed_signer, max_segment_bytes=SEGMENT).close()  # resumed: the same again
    assert {name: (d / name).read_bytes() for name in written} == written
