"""Wall-clock steps, told apart from time passing by the monotonic clock.

Deadlines, cooldowns and intervals run on ``time.monotonic()``; record times, time
windows and cron schedules are about the wall clock. A Raspberry Pi without an RTC
boots at the last saved time and steps by hours or years when NTP first syncs, and
an operator may set the clock back. Both clocks advance together while nobody steps
the wall clock (NTP slewing adjusts both, on Linux), so a change in their difference
is a step: :class:`StepWatch` reports each one once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ClockStep", "StepWatch", "STEP_TOLERANCE_S"]

#: Changes of (wall - monotonic) below this are not steps (chrony steps at 1 s by default; smaller
#: corrections are slewed).
STEP_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class ClockStep:
    """The wall clock jumped: ``old`` is where it would be without the step, ``new`` where it is."""

    old: float
    new: float

    @property
    def delta(self) -> float:
        return self.new - self.old

    def body(self) -> dict[str, float]:
        """The ``clock.stepped`` record body."""
        return {"old": self.old, "new": self.new, "delta": self.delta}


class StepWatch:
    """Notices wall-clock steps; :meth:`check` returns each step once (thread-safe)."""

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        tolerance: float = STEP_TOLERANCE_S,
    ) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self.tolerance = tolerance
        self._lock = threading.Lock()
        self._offset = wall() - monotonic()

    def check(self) -> ClockStep | None:
        with self._lock:
            mono, now = self.monotonic(), self.wall()
            expected = self._offset + mono
            if abs(now - expected) < self.tolerance:
                return None
            self._offset = now - mono
            return ClockStep(expected, now)
