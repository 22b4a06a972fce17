"""Accounting for side effects across crashes: open effects, the journal, the in-doubt scan.

Every side effect the daemon takes is bracketed by ledger records: an *intent* that is durable
before the effect starts (an allowed ``policy.decision``; for each SMTP attempt an
``outbox.sending``) and an *outcome* after it (``action.result``; ``outbox.sent``,
``outbox.deferred`` or ``outbox.failed``). A crash between the two leaves an intent without an
outcome: on the next start the daemon appends ``action.indoubt`` / ``outbox.indoubt`` for each,
before it takes new work (docs/state-dir.md, "In-doubt actions").

Finding those intents must not read a months-old ledger, so the daemon keeps a small journal,
``STATE/data/effects.json``: the *watermark* ``scan_from``, a sequence number below which every
intent has its outcome on flash, and whether the last run stopped cleanly (nothing open). It is
rewritten at most every few seconds and at a clean stop. On start only the records from the
watermark on are scanned (a clean stop: none at all).

The watermark is computed by :class:`EffectTracker` without a race against the ledger's group
commit: an effect is registered (:meth:`EffectTracker.begin`, which notes the ledger's size at
that moment, a lower bound of the intent's future sequence number) *before* its intent is
appended, bound to the intent's sequence number once that is durable, and ended once its outcome
is durable. The watermark is the smallest of those numbers, or the ledger's size when nothing is
open.

The scan (:class:`InDoubtScan`) is pure: records in, open intents out.
"""

from __future__ import annotations

import collections
import contextvars
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._internal.fsutil import atomic_write, read_bytes
from ..errors import KestrelError

__all__ = [
    "EffectTracker",
    "Effect",
    "InDoubtScan",
    "OpenIntent",
    "Journal",
    "read_journal",
    "write_journal",
    "JOURNAL_FILE",
    "CURRENT_DECISION",
]

log = logging.getLogger("kestrel.daemon.effects")

JOURNAL_FILE = "effects.json"
JOURNAL_MAX = 4096

#: The sequence number of the ``policy.decision`` of the action being executed (set by the pipeline
#: around an action's handler, read by the outbox to tie a message to its decision).
CURRENT_DECISION: contextvars.ContextVar[int | None] = contextvars.ContextVar("kestrel_decision", default=None)


class Effect:
    """One open effect: ``floor`` until its intent is durable, then the intent's ``seq``."""

    __slots__ = ("floor", "seq")

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.seq: int | None = None

    @property
    def mark(self) -> int:
        return self.seq if self.seq is not None else self.floor


class EffectTracker:
    """Effects whose outcome is not yet durable (thread-safe: outcomes resolve on the ledger's thread)."""

    def __init__(self, size: Callable[[], int]) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._open: set[Effect] = set()

    def begin(self) -> Effect:
        """Register an effect before its intent is appended."""
        with self._lock:
            e = Effect(self._size())
            self._open.add(e)
            return e

    def bind(self, effect: Effect, seq: int) -> None:
        """The effect's intent is durable at ``seq``."""
        with self._lock:
            effect.seq = seq

    def end(self, effect: Effect | None) -> None:
        """The effect's outcome is durable (or there never was an effect: denied, not executed)."""
        if effect is None:
            return
        with self._lock:
            self._open.discard(effect)

    @property
    def open(self) -> int:
        return len(self._open)

    def watermark(self) -> int:
        """Every intent below this sequence number has a durable outcome."""
        with self._lock:
            size = self._size()
            return min((e.mark for e in self._open), default=size)


# -- the journal -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Journal:
    scan_from: int
    clean: bool


def read_journal(path: Path) -> Journal | None:
    """The journal, or None if there is none or it cannot be read (then the caller scans more)."""
    if not path.exists():
        return None
    try:
        doc = json.loads(read_bytes(path, what="effects journal", max_size=JOURNAL_MAX))
        if not isinstance(doc, dict) or doc.get("format") != 1:
            raise ValueError("not format 1")
        scan_from, clean = doc["scan_from"], doc["clean"]
        if type(scan_from) is not int or scan_from < 0 or type(clean) is not bool:
            raise ValueError("bad scan_from or clean")
        return Journal(scan_from, clean)
    except (KestrelError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "effects journal %s is unreadable (%s): scanning the ledger for open actions instead",
            path,
            getattr(exc, "message", exc),
        )
        return None


def write_journal(path: Path, journal: Journal) -> None:
    data = json.dumps(
        {"format": 1, "scan_from": journal.scan_from, "clean": journal.clean}, separators=(",", ":")
    ).encode()
    atomic_write(path, data, mode=0o600)


# -- the scan (pure) -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenIntent:
    """An intent without an outcome: an allowed decision (``kind`` policy.decision) or an SMTP attempt."""

    seq: int
    kind: str
    body: dict[str, Any]


_MAIL_OUTCOMES = ("outbox.sent", "outbox.deferred", "outbox.failed", "outbox.indoubt")


@dataclass
class InDoubtScan:
    """Feed records (oldest first) from the journal's watermark on; read :attr:`actions` and :attr:`mail`.

    ``in_run``: whether the first record fed was written by a running daemon (true when scanning
    from a watermark; false from the start of a ledger, where ``daemon.started`` / ``daemon.stopped``
    records tell). Allowed decisions outside a daemon's run (``kestrel ask`` with no daemon: decided
    and recorded, never executed) are not actions in doubt.
    """

    in_run: bool = True
    scanned: int = 0
    _decisions: dict[int, tuple[str, str]] = field(default_factory=dict)
    _by_key: dict[tuple[str, str], collections.deque[int]] = field(default_factory=dict)
    _bodies: dict[int, dict[str, Any]] = field(default_factory=dict)
    _attempts: dict[int, dict[str, Any]] = field(default_factory=dict)
    finished_mail: dict[str, str] = field(default_factory=dict)  # outbox id -> outbox.sent | outbox.failed

    def feed(self, records: Iterable[Any]) -> InDoubtScan:
        for rec in records:
            self.add(rec.seq, rec.kind, rec.body)
        return self

    def add(self, seq: int, kind: str, body: Any) -> None:
        self.scanned += 1
        if not isinstance(body, dict):
            return
        if kind == "daemon.started":
            self.in_run = True
        elif kind == "daemon.stopped":
            self.in_run = False
        elif kind == "policy.decision":
            # A follow-up decision (``parent``: a redirect of a running fetch_data) is part of its
            # parent's effect: the parent's outcome (result or in doubt) accounts for both.
            if self.in_run and body.get("decision") == "allow" and type(body.get("parent")) is not int:
                key = (str(body.get("action")), str(body.get("args_digest")))
                self._decisions[seq] = key
                self._by_key.setdefault(key, collections.deque()).append(seq)
                self._bodies[seq] = {"action": key[0], "args_digest": body.get("args_digest")}
        elif kind in ("action.result", "action.indoubt"):
            ref = body.get("decision")
            if type(ref) is int:
                self._close_decision(ref)
            elif kind == "action.result":  # written before outcomes named their decision: oldest of its kind
                q = self._by_key.get((str(body.get("action")), str(body.get("args_digest"))))
                if q:
                    self._close_decision(q[0])
        elif kind == "outbox.sending":
            self._attempts[seq] = {k: body.get(k) for k in ("id", "message_id", "attempt", "decision")}
        elif kind in _MAIL_OUTCOMES:
            ref = body.get("intent")
            if type(ref) is int:
                self._attempts.pop(ref, None)
            if kind in ("outbox.sent", "outbox.failed") and isinstance(body.get("id"), str):
                self.finished_mail[body["id"]] = kind

    def _close_decision(self, seq: int) -> None:
        key = self._decisions.pop(seq, None)
        if key is None:
            return
        self._bodies.pop(seq, None)
        q = self._by_key[key]
        q.remove(seq)
        if not q:
            del self._by_key[key]

    @property
    def actions(self) -> list[OpenIntent]:
        return [OpenIntent(s, "policy.decision", self._bodies[s]) for s in sorted(self._decisions)]

    @property
    def mail(self) -> list[OpenIntent]:
        return [OpenIntent(s, "outbox.sending", b) for s, b in sorted(self._attempts.items())]
