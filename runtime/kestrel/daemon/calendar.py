"""``schedule_event``: a local iCalendar (RFC 5545) store, one ``.ics`` file per event.

Events live in ``STATE/data/calendar/<uid>.ics`` (0600, written atomically), so
any CalDAV sync tool or calendar program can read them. Parsing the arguments and
rendering the file are pure; :class:`CalendarStore` only writes.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._internal.fsutil import atomic_write, ensure_private_dir
from ..errors import DataError
from ..policy.canonical import ArgsError, canonicalize

__all__ = ["EventArgsError", "CalendarEvent", "parse_event_args", "render_ics", "CalendarStore"]


class EventArgsError(DataError):
    """schedule_event arguments are missing or malformed."""


@dataclass(frozen=True)
class CalendarEvent:
    uid: str
    summary: str
    start: dt.datetime  # aware, UTC
    end: dt.datetime
    location: str = ""
    description: str = ""


def parse_event_args(args: dict[str, Any], *, uid: str | None = None) -> CalendarEvent:
    """The event of schedule_event's canonical arguments (docs/policy.md, "Canonical arguments"):
    ``summary``, ``start``, and ``end`` or ``duration_min``; optional ``location``, ``description``."""
    try:
        c = canonicalize("schedule_event", args)
    except ArgsError as exc:
        raise EventArgsError(exc.message, hint=exc.hint) from None
    start, end = (dt.datetime.fromisoformat(c[k].replace("Z", "+00:00")) for k in ("start", "end"))
    return CalendarEvent(
        uid or f"{os.urandom(8).hex()}@kestrel", c["summary"], start, end, c["location"], c["description"]
    )


def _escape(text: str) -> str:
    return (
        text.replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\n")
    )


def _fold(line: str) -> bytes:
    """Fold a content line at 75 octets without splitting a UTF-8 sequence (RFC 5545 3.1)."""
    data = line.encode()
    out, first = [], True
    while data:
        width = 75 if first else 74
        cut = min(width, len(data))
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:
            cut -= 1
        out.append((b"" if first else b" ") + data[:cut])
        data, first = data[cut:], False
    return b"\r\n".join(out) + b"\r\n"


def _stamp(t: dt.datetime) -> str:
    return t.strftime("%Y%m%dT%H%M%SZ")


def render_ics(event: CalendarEvent, *, now: float) -> bytes:
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//Kestrel//schedule_event//EN",
        "BEGIN:VEVENT",
        f"UID:{event.uid}",
        f"DTSTAMP:{_stamp(dt.datetime.fromtimestamp(now, dt.UTC))}",
        f"DTSTART:{_stamp(event.start)}",
        f"DTEND:{_stamp(event.end)}",
        f"SUMMARY:{_escape(event.summary)}",
    ]
    if event.location:
        lines.append(f"LOCATION:{_escape(event.location)}")
    if event.description:
        lines.append(f"DESCRIPTION:{_escape(event.description)}")
    lines += ["END:VEVENT", "END:VCALENDAR"]
    return b"".join(_fold(line) for line in lines)


class CalendarStore:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def add_blocking(self, event: CalendarEvent, *, now: float) -> Path:
        ensure_private_dir(self.dir)
        path = self.dir / (event.uid.split("@")[0] + ".ics")
        atomic_write(path, render_ics(event, now=now), mode=0o600)
        return path

    def count(self) -> int:
        try:
            return sum(1 for _ in self.dir.glob("*.ics"))
        except OSError:
            return 0
