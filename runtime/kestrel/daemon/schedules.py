"""Schedules: every N seconds, or cron-like ("*/5 * * * *", local time).

``every`` counts on the monotonic clock (a wall-clock step neither skips nor bunches
intervals); cron follows the wall clock, and after a wall-clock step its next times are
planned again from the new time (a step is not time passing: nothing fires for the
minutes it jumped over, nothing waits for the ones it jumped back).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from .._internal.clock import STEP_TOLERANCE_S
from ..errors import KestrelError
from .config import DeviceConfig, Schedule
from .triggers import Proposal, schedule_proposal

__all__ = ["run_schedules", "next_due"]

log = logging.getLogger("kestrel.daemon.schedules")


def next_due(s: Schedule, *, now: float) -> float:
    """When a schedule next fires after ``now`` (pure): ``every``: on the clock ``now`` is read from
    (the monotonic one); cron: wall-clock epoch seconds."""
    if s.every_s is not None:
        return now + s.every_s
    assert s.cron is not None
    local = dt.datetime.fromtimestamp(now).astimezone()
    return s.cron.next_after(local).timestamp()


async def run_schedules(
    config: Callable[[], DeviceConfig],
    fire: Callable[[Proposal], Any],
    *,
    clock: Callable[[], float] = time.time,
    values: Callable[[], dict[str, Any]] = dict,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Fire each schedule of the current config when due; picks up a reloaded config within a second."""
    current: DeviceConfig | None = None
    due: dict[str, float] = {}  # every: monotonic seconds; cron: wall-clock seconds
    last = (clock(), monotonic())
    while True:
        cfg = config()
        now, mono = clock(), monotonic()
        stepped = abs((now - last[0]) - (mono - last[1])) >= STEP_TOLERANCE_S
        last = (now, mono)
        if cfg is not current:
            current = cfg
            due = {s.name: next_due(s, now=mono if s.every_s is not None else now) for s in cfg.schedules}
        elif stepped:
            due.update({s.name: next_due(s, now=now) for s in cfg.schedules if s.every_s is None})
        for s in cfg.schedules:
            t = mono if s.every_s is not None else now
            if due[s.name] <= t:
                due[s.name] = next_due(s, now=max(t, due[s.name]))
                try:
                    fire(schedule_proposal(s, values()))
                except KestrelError as exc:
                    log.warning("schedule %s: %s", s.name, exc.message)
        wait = min(
            [due[s.name] - (monotonic() if s.every_s is not None else clock()) for s in cfg.schedules], default=1.0
        )
        await asyncio.sleep(min(1.0, max(0.001, wait)))
