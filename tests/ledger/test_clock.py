"""The commit deadline runs on the monotonic clock: a wall-clock step (NTP on a board without an RTC)
changes record times only, never when a commit happens."""

from __future__ import annotations

import threading
import time as real_time

import pytest

import kestrel.ledger.engine as engine_mod
from kestrel.ledger import Ledger
from kestrel.ledger.index import IndexBuilder
from kestrel.ledger.merkle import Frontier
from kestrel.ledger.record import ZERO_HASH
from kestrel.ledger.store import SegmentWriter


class SteppedClock:
    """The ``time`` module as the ledger sees it, with a wall clock that can jump."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return real_time.time() + self.offset

    def monotonic(self) -> float:
        return real_time.monotonic()


def _engine(tmp_path, signer, *, delay_s: float) -> engine_mod.CommitEngine:
    d = tmp_path / "l"
    d.mkdir()
    state = engine_mod.WriterState(
        size=0, prev=ZERO_HASH, frontier=Frontier(), checkpoint=None, signed_size=0, latest={}
    )
    return engine_mod.CommitEngine(
        d,
        writer=SegmentWriter(d, max_bytes=1 << 20, last=None, next_seq=0),
        index=IndexBuilder(d),
        signer=signer,
        state=state,
        tail_key=None,
        strict=False,
        delay_s=delay_s,
        checkpoint_interval_s=0.05,
    )


@pytest.mark.parametrize("step", [-365 * 86400.0, 20 * 365 * 86400.0], ids=["backwards", "forwards"])
def test_a_wall_clock_step_neither_stalls_nor_cuts_the_linger(tmp_path, ed_signer, monkeypatch, step):
    """The committer lingers up to max_batch_delay_ms for more appends; the clock steps meanwhile."""
    clock = SteppedClock()
    monkeypatch.setattr(engine_mod, "time", clock)
    led = _engine(tmp_path, ed_signer, delay_s=0.2)  # the committer's pacing alone (its threads not started)
    led._last_batch = 8  # as after a burst: wait for up to 8 appends, at most 200 ms
    led._pending = [engine_mod._Item(b"", None)]  # one append queued just now
    clock.offset = step
    result: list[float] = []

    def linger() -> None:
        with led._cond:
            t0 = real_time.monotonic()
            led._linger()
            result.append(real_time.monotonic() - t0)

    t = threading.Thread(target=linger, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # stuck on the wall clock: release it
        with led._cond:
            led._urgent = 1
            led._cond.notify_all()
        pytest.fail("the commit linger waited on a wall clock that stepped backwards")
    assert 0.15 <= result[0] < 2.0, result  # about the 200 ms delay, whatever the wall clock did


def test_record_times_stay_wall_clock(tmp_path, ed_signer, monkeypatch):
    clock = SteppedClock()
    monkeypatch.setattr(engine_mod, "time", clock)
    with Ledger.open(tmp_path / "l", signer=ed_signer) as led:
        clock.offset = -86400.0
        receipt = led.append("test.after", {})
        assert abs(receipt.time - (real_time.time() - 86400.0)) < 60
