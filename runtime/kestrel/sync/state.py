"""Durable sync state: the last offset the broker acknowledged, and the published status.

``STATE/data/sync/offset.json`` (0600, replaced atomically)::

    {"version": 1, "agent": "<did>", "acked": <int>, "checkpoint_size": <int>, "updated": <unix time>}

``acked`` is the number of records (seq 0 .. acked-1) the broker has acknowledged at QoS 1;
after a restart the sync resumes at record ``acked``. ``STATE/data/sync/status.json`` is the
status the running sync last wrote (for ``kestrel sync status`` and ``kestrel status``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._internal.fsutil import atomic_write, ensure_private_dir, read_bytes
from .._internal.paths import StateLayout
from ..errors import DataError

__all__ = ["Offset", "OffsetStore", "SyncStatus", "write_status", "read_status", "sync_dir"]


def sync_dir(state_dir: str | os.PathLike[str]) -> Path:
    return StateLayout(Path(state_dir)).data / "sync"


@dataclass(frozen=True)
class Offset:
    agent: str
    acked: int = 0
    checkpoint_size: int = 0  # size of the last checkpoint the broker acknowledged
    updated: float = 0.0


class OffsetStore:
    """Load and save :class:`Offset`; a corrupt file is an error, never a silent restart from 0."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = sync_dir(state_dir) / "offset.json"

    def load(self, agent: str) -> Offset:
        if not self.path.exists():
            return Offset(agent)
        raw = read_bytes(self.path, what="sync offset", max_size=65536)
        try:
            doc = json.loads(raw)
            off = Offset(
                str(doc["agent"]), int(doc["acked"]), int(doc.get("checkpoint_size", 0)), float(doc.get("updated", 0.0))
            )
            if doc.get("version") != 1 or off.acked < 0:
                raise ValueError("unknown version or negative offset")
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"sync offset {self.path} is corrupt: {exc}",
                hint="delete it to resend the whole ledger (the collector drops duplicates)",
            ) from None
        if off.agent != agent:
            raise DataError(
                f"sync offset {self.path} belongs to {off.agent}, not {agent}",
                hint="the state directory holds another agent's sync state; delete the file",
            ) from None
        return off

    def save(self, offset: Offset) -> None:
        ensure_private_dir(self.path.parent)
        doc = {"version": 1, **asdict(offset)}
        atomic_write(self.path, json.dumps(doc).encode() + b"\n")


@dataclass(frozen=True)
class SyncStatus:
    agent: str
    connected: bool
    acked: int
    ledger_size: int
    rate: float  # records acknowledged per second, recent
    updated: float
    pid: int = 0
    ledger_bytes: int = 0
    retention_limit: int | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    first_seq: int = 0  # the ledger's first stored record (> 0 once pruned)

    @property
    def backlog(self) -> int:
        return max(0, self.ledger_size - max(self.acked, self.first_seq))

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["warnings"] = list(self.warnings)
        doc["backlog"] = self.backlog
        return doc


def write_status(state_dir: str | os.PathLike[str], status: SyncStatus) -> None:
    path = sync_dir(state_dir) / "status.json"
    ensure_private_dir(path.parent)
    atomic_write(path, json.dumps(status.to_json(), indent=1).encode() + b"\n")


def read_status(state_dir: str | os.PathLike[str]) -> SyncStatus | None:
    path = sync_dir(state_dir) / "status.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(read_bytes(path, what="sync status", max_size=65536))
        doc.pop("backlog", None)
        doc["warnings"] = tuple(doc.get("warnings", ()))
        return SyncStatus(**doc)
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataError(
            f"sync status {path} is corrupt: {exc}",
            hint="it is rewritten by the running sync; delete it if the daemon is stopped",
        ) from None
