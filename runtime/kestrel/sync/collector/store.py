"""The collector's storage interface and its values.

The collector's logic (``collector.core``) talks only to :class:`CollectorStore`; SQLite
(``collector.sqlite``) is the embedded default and a PostgreSQL backend can implement the
same methods (docs/collector.md lists the schema and the transactional expectations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ContextManager, Iterable, Iterator, Protocol, Sequence

__all__ = ["CollectorStore", "AgentState", "PendingRecord", "Rejection", "Fork", "AgentSummary"]


@dataclass(frozen=True)
class AgentState:
    """What has been verified for one agent: records [0, size) match the signed checkpoint."""

    did: str
    size: int = 0
    frontier: tuple[bytes, ...] = ()  # RFC 6962 compact range of leaves [0, size)
    checkpoint: bytes | None = None  # the signed checkpoint note that verified [0, size)
    forked: bool = False


@dataclass(frozen=True)
class PendingRecord:
    seq: int
    raw: bytes
    leaf: bytes  # RFC 6962 leaf hash of raw
    prev: bytes  # the record's own ``prev`` field (leaf hash it claims precedes it)


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
    verified: int
    pending: int
    rejections: int
    forks: int
    last_seen: float


class CollectorStore(Protocol):
    """Durable storage for verified records, pending candidates, checkpoints and evidence.

    ``commit_verified`` must be atomic: either the records, the new state and the removal of
    their pending candidates all happen, or none does.
    """

    def transaction(self) -> ContextManager[None]:
        """All calls inside happen in one transaction (nested transactions join the outer one)."""
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

    def commit_verified(self, did: str, records: Sequence[PendingRecord], state: AgentState,
                        *, now: float) -> None: ...

    def verified_leaf(self, did: str, seq: int) -> bytes | None: ...

    def verified_leaves(self, did: str, start: int, end: int) -> list[bytes]: ...

    def verified_records(self, did: str, start: int = 0) -> Iterator[tuple[int, bytes]]: ...

    def add_rejection(self, rejection: Rejection) -> None: ...

    def add_fork(self, fork: Fork) -> None: ...

    def rejections(self, did: str | None = None) -> list[Rejection]: ...

    def forks(self, did: str | None = None) -> list[Fork]: ...

    def summaries(self) -> list[AgentSummary]: ...

    def close(self) -> None: ...
