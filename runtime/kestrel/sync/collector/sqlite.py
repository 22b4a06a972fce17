"""SQLite backend of :class:`~kestrel.sync.collector.store.CollectorStore` (the embedded default)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import DataError, TransportError
from .sql import SCHEMA_VERSION, SqlStore

__all__ = ["SqliteStore", "SCHEMA_VERSION"]


class SqliteStore(SqlStore):
    """One SQLite file (WAL, synchronous=FULL, mode 0600); safe to call from several threads.

    A single writer: ``BEGIN IMMEDIATE`` serialises whole transactions, so :meth:`lock_agents`
    has nothing to add. Several hosts sharing one fleet need the PostgreSQL backend.
    """

    WORDS = {
        "INT": "INTEGER",
        "BLOB": "BLOB",
        "REAL": "REAL",
        "SERIAL": "INTEGER PRIMARY KEY",
        "NOROWID": "WITHOUT ROWID",
    }
    HOUR = "CAST(time / 3600 AS INTEGER)"  # times are positive: truncation is the floor
    transient = (sqlite3.OperationalError,)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.location = str(self.path)
        try:
            if self.path.parent != Path(""):
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise DataError(
                f"collector database {self.path} is unusable: {exc}",
                hint="point --db at a Kestrel collector database or a new file",
            ) from None
        except OSError as exc:
            raise TransportError(f"cannot open collector database {self.path}: {exc.strerror or exc}") from None

    def _cursor(self, sql: str, params: Sequence[Any]) -> Any:
        return self._db.execute(sql, params)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    def _begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def _end(self, commit: bool) -> None:
        self._db.execute("COMMIT" if commit else "ROLLBACK")

    def storage_bytes(self) -> int:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def close(self) -> None:
        with self._lock:
            self._db.close()
