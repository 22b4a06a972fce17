"""The collector's storage interface and its values.

The collector's logic (``collector.core``) talks only to :class:`CollectorStore`; SQLite
(``collector.sqlite``) is the embedded default and PostgreSQL (``collector.postgres``) the server
backend, both over the same SQL (``collector.sql``). docs/collector.md lists the schema and the
transactional expectations. :func:`open_store` picks the backend from ``--db``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CollectorStore",
    "AgentState",
    "PendingRecord",
    "Rejection",
    "Fork",
    "AgentSummary",
    "LogRow",
    "LogFilter",
    "open_store",
    "is_server_url",
]


@dataclass(frozen=True)
class AgentState:
    """What has been verified for one agent: records [0, size) match the signed checkpoint."""

    did: str
    size: int = 0
    frontier: tuple[bytes, ...] = ()  # RFC 6962 compact range of leaves [0, size)
    checkpoint: bytes | None = None  # the signed checkpoint note that verified [0, size)
    forked: bool = False
    tip: bytes | None = None  # leaf hash of record size-1 (the next record's ``prev``); None: look it up
    held: bool | None = None  # whether any pending candidate is held for the agent; None: unknown


@dataclass(frozen=True)
class PendingRecord:
    seq: int
    raw: bytes
    leaf: bytes  # RFC 6962 leaf hash of raw
    prev: bytes  # the record's own ``prev`` field (leaf hash it claims precedes it)
    kind: str = ""  # the record's ``kind`` and ``time`` (what the fleet view filters and plots by)
    time: float = 0.0


@dataclass(frozen=True)
class Rejection:
    did: str
    seq: int | None
    reason: str
    detail: str
    digest: str  # hex sha256 of the refused bytes
    time: float


@dataclass(frozen=True)
class Fork:
    did: str
    size: int
    verified_note: bytes | None
    conflicting_note: bytes
    detail: str
    time: float


@dataclass(frozen=True)
class AgentSummary:
    did: str
    verified: int  # the verified prefix: records [0, verified) are vouched for by a signed checkpoint
    pending: int
    rejections: int
    forks: int
    last_seen: float
    records: int = 0  # records stored (fewer than ``verified`` when the agent pruned some before sync)
    base: int = 0  # size of the newest signed base accepted (0: none)
    first_seen: float = 0.0


@dataclass(frozen=True)
class LogRow:
    """One stored record as the fleet view lists it."""

    seq: int
    kind: str
    time: float
    stored_at: float
    size: int


@dataclass(frozen=True)
class LogFilter:
    """Which of an agent's records to list (all bounds optional; seq and time ranges are inclusive)."""

    kind: str | None = None  # exact kind, or a prefix ending in "." (``policy.``)
    seq_min: int | None = None
    seq_max: int | None = None
    since: float | None = None
    until: float | None = None


class CollectorStore(Protocol):
    """Durable storage for verified records, pending candidates, checkpoints and evidence.

    ``commit_verified`` must be atomic: either the records, the new state and the removal of
    their pending candidates all happen, or none does.
    """

    def transaction(self) -> AbstractContextManager[None]:
        """All calls inside happen in one transaction (nested transactions join the outer one)."""
        ...

    def lock_agents(self, dids: Sequence[str]) -> None:
        """Inside a transaction: hold the agents until it ends, so that no other collector process
        works on them meanwhile (taken in one global order, so two collectors never deadlock)."""
        ...

    def agent_state(self, did: str) -> AgentState: ...

    def add_pending(self, did: str, records: Sequence[PendingRecord], *, now: float) -> None: ...

    def pending(self, did: str, start: int, end: int) -> dict[int, list[PendingRecord]]: ...

    def pending_sizes(self, did: str) -> tuple[int, int]:
        """(lowest pending seq or -1, number of pending candidates)."""
        ...

    def pending_count(self, did: str, start: int, end: int) -> int:
        """Number of distinct sequence numbers with a candidate in [start, end)."""
        ...

    def drop_pending(self, did: str, records: Iterable[PendingRecord]) -> None: ...

    def add_checkpoint(self, did: str, size: int, root: bytes, note: bytes, *, now: float) -> bool:
        """Remember a signature-verified checkpoint; False if already known."""
        ...

    def checkpoints(self, did: str, *, min_size: int = 0) -> list[tuple[int, bytes, bytes]]:
        """Known checkpoints ``(size, root, note)`` with size >= min_size, smallest first."""
        ...

    def commit_verified(
        self, did: str, records: Sequence[PendingRecord], state: AgentState, *, now: float, drop_pending: bool = True
    ) -> None:
        """``drop_pending=False``: the caller knows no candidate lies below ``state.size``."""
        ...

    def verified_leaf(self, did: str, seq: int) -> bytes | None: ...

    def verified_leaves(self, did: str, start: int, end: int) -> list[bytes]: ...

    def verified_records(self, did: str, start: int = 0) -> Iterator[tuple[int, bytes]]: ...

    def add_base(self, did: str, size: int, prev: bytes, payload: bytes, state: AgentState, *, now: float) -> None:
        """Accept the agent's signed base of ``size`` (its records below were pruned before sync):
        the verified prefix becomes ``state``; pending candidates below ``size`` are dropped."""
        ...

    def base_prev(self, did: str, size: int) -> bytes | None:
        """The ``prev`` of an accepted base of exactly ``size`` records (the leaf before it), or None."""
        ...

    def bases(self, did: str) -> list[tuple[int, bytes]]:
        """Accepted bases ``(size, payload)``, smallest first."""
        ...

    def add_rejection(self, rejection: Rejection) -> None: ...

    def add_fork(self, fork: Fork) -> None: ...

    def rejections(self, did: str | None = None) -> list[Rejection]: ...

    def forks(self, did: str | None = None) -> list[Fork]: ...

    def summaries(self, did: str | None = None) -> list[AgentSummary]:
        """One row per agent (or only ``did``'s), by AgentID."""
        ...

    def verified_sizes(self) -> dict[str, int]:
        """Each agent's verified prefix size."""
        ...

    def log(self, did: str, flt: LogFilter, *, after: int = -1, limit: int = 100) -> list[LogRow]:
        """Stored records of ``did`` matching ``flt`` with seq > ``after``, by seq."""
        ...

    def record(self, did: str, seq: int) -> bytes | None: ...

    def records_of_kind(self, kind: str, *, limit: int = 10_000) -> list[tuple[str, bytes]]:
        """``(did, raw)`` of stored records of one kind."""
        ...

    def hourly(self, did: str | None = None) -> list[tuple[str, int, int]]:
        """Records per hour of the records' own time: ``(did, hour (unix time // 3600), count)``."""
        ...

    def storage_bytes(self) -> int:
        """Bytes the database uses on disk (tables and indexes)."""
        ...

    def close(self) -> None: ...


def is_server_url(spec: str) -> bool:
    return spec.startswith(("postgresql://", "postgres://"))


def open_store(spec: str) -> CollectorStore:
    """``postgresql://...`` opens PostgreSQL (the ``collector`` extra), anything else a SQLite file."""
    if is_server_url(spec):
        from .postgres import PostgresStore

        return PostgresStore(spec)
    from .sqlite import SqliteStore

    return SqliteStore(spec)
