"""Schedules: every N seconds, or cron-like ("*/5 * * * *", local time)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any, Callable

from ..errors import KestrelError
from .config import DeviceConfig, Schedule
from .triggers import Proposal, schedule_proposal

__all__ = ["run_schedules", "next_due"]

log = logging.getLogger("kestrel.daemon.schedules")


def next_due(s: Schedule, *, now: float) -> float:
    """The wall-clock time (epoch seconds) a schedule next fires after ``now``. Pure."""
    if s.every_s is not None:
        return now + s.every_s
    assert s.cron is not None
    local = dt.datetime.fromtimestamp(now).astimezone()
    return s.cron.next_after(local).timestamp()


async def run_schedules(config: Callable[[], DeviceConfig], fire: Callable[[Proposal], Any], *,
                        clock: Callable[[], float] = time.time, values: Callable[[], dict[str, Any]] = dict) -> None:
    """Fire each schedule of the current config when due; picks up a reloaded config within a second."""
    current: DeviceConfig | None = None
    due: dict[str, float] = {}
    while True:
        cfg = config()
        now = clock()
        if cfg is not current:
            current = cfg
            due = {s.name: next_due(s, now=now) for s in cfg.schedules}
        for s in cfg.schedules:
            if due[s.name] <= now:
                due[s.name] = next_due(s, now=max(now, due[s.name]))
                try:
                    fire(schedule_proposal(s, values()))
                except KestrelError as exc:
                    log.warning("schedule %s: %s", s.name, exc.message)
        wait = min([due[s.name] for s in cfg.schedules], default=now + 1.0) - clock()
        await asyncio.sleep(min(1.0, max(0.001, wait)))
