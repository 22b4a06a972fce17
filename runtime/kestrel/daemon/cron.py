"""Cron-like schedules (five fields, minute resolution), pure.

``minute hour day-of-month month day-of-week`` with ``*``, ``*/n``, ``a``, ``a-b``,
``a-b/n`` and comma lists; day-of-week 0-7 (0 and 7 are Sunday). As in Vixie cron,
when both day fields are restricted a day matches if either matches.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..errors import DataError

__all__ = ["CronSpec", "CronError", "parse_cron"]

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 7))


class CronError(DataError):
    """A cron expression is malformed."""


@dataclass(frozen=True)
class CronSpec:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_any: bool
    weekday_any: bool

    def matches(self, t: dt.datetime) -> bool:
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        return self._day_matches(t.date())

    def _day_matches(self, d: dt.date) -> bool:
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.day_any or self.weekday_any:
            return dom and dow
        return dom or dow

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first matching minute strictly after ``t`` (naive or aware, same tz kept)."""
        cur = t.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        limit = cur + dt.timedelta(days=366 * 5)
        while cur < limit:
            if cur.month not in self.months or not self._day_matches(cur.date()):
                cur = (cur + dt.timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if cur.hour not in self.hours:
                cur = (cur + dt.timedelta(hours=1)).replace(minute=0)
                continue
            if cur.minute in self.minutes:
                return cur
            cur += dt.timedelta(minutes=1)
        raise CronError(f"cron expression {self.text!r} never fires")


def _field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, _, step_s = part.partition("/")
            if not step_s.isdigit() or int(step_s) == 0:
                raise CronError(f"bad step {step_s!r} in the {name} field")
            step = int(step_s)
        if part == "*":
            a, b = lo, hi
        elif "-" in part:
            a_s, _, b_s = part.partition("-")
            if not (a_s.isdigit() and b_s.isdigit()):
                raise CronError(f"bad range {part!r} in the {name} field")
            a, b = int(a_s), int(b_s)
        elif part.isdigit():
            a = b = int(part)
            if step != 1:
                b = hi
        else:
            raise CronError(f"bad value {part!r} in the {name} field")
        if not (lo <= a <= hi and lo <= b <= hi and a <= b):
            raise CronError(f"{part!r} is outside {lo}-{hi} in the {name} field")
        out.update(range(a, b + 1, step))
    return frozenset(out)


def parse_cron(text: str) -> CronSpec:
    fields = text.split() if isinstance(text, str) else []
    if len(fields) != 5:
        raise CronError(
            f"cron expression {text!r} must have 5 fields (minute hour day month weekday)",
            hint='for example "*/5 * * * *" runs every five minutes',
        )
    sets = [_field(f, name, lo, hi) for f, (name, lo, hi) in zip(fields, _FIELDS, strict=False)]
    weekdays = frozenset(d % 7 for d in sets[4])
    return CronSpec(
        text, sets[0], sets[1], sets[2], sets[3], weekdays, day_any=fields[2] == "*", weekday_any=fields[4] == "*"
    )
