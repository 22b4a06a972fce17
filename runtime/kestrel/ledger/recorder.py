"""The typed seams for "something that records" (no I/O; typing only).

Most of the runtime does not need a :class:`~kestrel.ledger.Ledger`, only somewhere to put a
record: the policy engine, the planner, the model store, text memory, OTA. They take a
:class:`Recorder`, so a ledger, the daemon's queued view of it
(``kestrel.daemon.pipeline.QueuedAppends``) or the CLI's "through the running daemon" recorder
all fit. What a recorder's ``append`` returns is its own business (a ``Receipt``, a future, the
daemon's reply): callers that need the record's position use a :class:`RecordLog`.

:class:`RecordReader` reads records back (a ``Ledger``, or a read-only view of a ledger
directory that needs no key). :class:`RecordLog` is the ledger as the daemon's parts use it:
both, with its size and key, and appends that do not block the event loop. ``Ledger`` is one.
:class:`Recorder` itself is defined in ``kestrel._internal.recorder`` (the identity layer, below
this one, names it too).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .._internal.recorder import Recorder

if TYPE_CHECKING:
    from ..identity.keys import PublicKey
    from .checkpoint import SignedCheckpoint
    from .ledger import Receipt
    from .record import Record

__all__ = ["Recorder", "RecordReader", "RecordLog"]


class RecordReader(Protocol):
    """Durable records, oldest first; ``kind`` is exact or ``"prefix.*"``."""

    def records(self, since_seq: int = 0, kind: str | None = None) -> Iterator[Record]: ...


class RecordLog(Recorder, RecordReader, Protocol):
    """A log that records and can be read back: what the daemon, OTA and peers need of a ledger."""

    @property
    def size(self) -> int:
        """Durable records (the next record's seq)."""
        ...

    @property
    def public_key(self) -> PublicKey: ...

    def latest_checkpoint(self) -> SignedCheckpoint | None: ...

    def submit(self, kind: str, body: dict[str, Any]) -> concurrent.futures.Future[Receipt]:
        """Queue an append; the future resolves once the record is durable."""
        ...

    async def append_async(self, kind: str, body: dict[str, Any]) -> Receipt: ...
