"""SQLite backend of :class:`~kestrel.sync.collector.store.CollectorStore` (the embedded default)."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import msgpack

from ...errors import DataError, TransportError
from .store import AgentState, AgentSummary, Fork, PendingRecord, Rejection

__all__ = ["SqliteStore", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
  did TEXT PRIMARY KEY, size INTEGER NOT NULL DEFAULT 0, frontier BLOB NOT NULL,
  checkpoint BLOB, forked INTEGER NOT NULL DEFAULT 0, first_seen REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (
  did TEXT NOT NULL, seq INTEGER NOT NULL, raw BLOB NOT NULL, leaf BLOB NOT NULL, stored_at REAL NOT NULL,
  PRIMARY KEY (did, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
  did TEXT NOT NULL, seq INTEGER NOT NULL, leaf BLOB NOT NULL, raw BLOB NOT NULL, prev BLOB NOT NULL,
  received_at REAL NOT NULL, PRIMARY KEY (did, seq, leaf)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
  did TEXT NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL, note BLOB NOT NULL, received_at REAL NOT NULL,
  PRIMARY KEY (did, size, root)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejections (
  id INTEGER PRIMARY KEY, did TEXT NOT NULL, seq INTEGER, reason TEXT NOT NULL, detail TEXT NOT NULL,
  digest TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS forks (
  id INTEGER PRIMARY KEY, did TEXT NOT NULL, size INTEGER NOT NULL, verified_note BLOB,
  conflicting_note BLOB NOT NULL, detail TEXT NOT NULL, time REAL NOT NULL);
"""


class SqliteStore:
    """One SQLite file (WAL, synchronous=FULL); safe to call from several threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            if self.path.parent != Path(""):
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"collector database {self.path} is unusable: {exc}",
                            hint="point --db at a Kestrel collector database or a new file") from None
        except OSError as exc:
            raise TransportError(f"cannot open collector database {self.path}: {exc.strerror or exc}") from None
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            raise DataError(f"collector database {self.path} has schema {row[0]}, expected {SCHEMA_VERSION}")
        self._lock = threading.RLock()
        self._depth = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> "_Tx":
        return _Tx(self)

    def transaction(self) -> "_Tx":
        """Group several calls into one transaction (one fsync); nested calls join it."""
        return _Tx(self)

    # -- agents --------------------------------------------------------------------------------
    def agent_state(self, did: str) -> AgentState:
        with self._lock:
            row = self._db.execute("SELECT size, frontier, checkpoint, forked FROM agents WHERE did=?",
                                   (did,)).fetchone()
        if row is None:
            return AgentState(did)
        return AgentState(did, row[0], tuple(msgpack.unpackb(row[1])), row[2], bool(row[3]))

    def _touch(self, did: str, now: float) -> None:
        self._db.execute("INSERT INTO agents (did, frontier, first_seen, last_seen) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(did) DO UPDATE SET last_seen=excluded.last_seen",
                         (did, msgpack.packb([]), now, now))

    # -- pending candidates ---------------------------------------------------------------------
    def add_pending(self, did: str, records: Sequence[PendingRecord], *, now: float) -> None:
        with self._tx():
            self._touch(did, now)
            self._db.executemany("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?, ?, ?)",
                                 [(did, r.seq, r.leaf, r.raw, r.prev, now) for r in records])

    def pending(self, did: str, start: int, end: int) -> dict[int, list[PendingRecord]]:
        out: dict[int, list[PendingRecord]] = {}
        with self._lock:
            rows = self._db.execute("SELECT seq, raw, leaf, prev FROM pending WHERE did=? AND seq>=? AND seq<? "
                                    "ORDER BY seq, received_at", (did, start, end)).fetchall()
        for seq, raw, leaf, prev in rows:
            out.setdefault(seq, []).append(PendingRecord(seq, raw, leaf, prev))
        return out

    def pending_sizes(self, did: str) -> tuple[int, int]:
        with self._lock:
            lo, n = self._db.execute("SELECT MIN(seq), COUNT(*) FROM pending WHERE did=?", (did,)).fetchone()
        return (-1 if lo is None else lo), n

    def pending_count(self, did: str, start: int, end: int) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(DISTINCT seq) FROM pending WHERE did=? AND seq>=? AND seq<?",
                                    (did, start, end)).fetchone()[0]

    def drop_pending(self, did: str, records: Iterable[PendingRecord]) -> None:
        with self._tx():
            self._db.executemany("DELETE FROM pending WHERE did=? AND seq=? AND leaf=?",
                                 [(did, r.seq, r.leaf) for r in records])

    # -- checkpoints ------------------------------------------------------------------------------
    def add_checkpoint(self, did: str, size: int, root: bytes, note: bytes, *, now: float) -> bool:
        with self._tx():
            self._touch(did, now)
            cur = self._db.execute("INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                                   (did, size, root, note, now))
            return cur.rowcount > 0

    def checkpoints(self, did: str, *, min_size: int = 0) -> list[tuple[int, bytes, bytes]]:
        with self._lock:
            return [tuple(r) for r in self._db.execute(  # type: ignore[misc]
                "SELECT size, root, note FROM checkpoints WHERE did=? AND size>=? ORDER BY size",
                (did, min_size)).fetchall()]

    # -- verified records -------------------------------------------------------------------------
    def commit_verified(self, did: str, records: Sequence[PendingRecord], state: AgentState,
                        *, now: float) -> None:
        with self._tx():
            self._touch(did, now)
            self._db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)",
                                 [(did, r.seq, r.raw, r.leaf, now) for r in records])
            if records:
                self._db.execute("DELETE FROM pending WHERE did=? AND seq<?", (did, state.size))
            self._db.execute("UPDATE agents SET size=?, frontier=?, checkpoint=?, forked=? WHERE did=?",
                             (state.size, msgpack.packb(list(state.frontier)), state.checkpoint,
                              int(state.forked), did))

    def verified_leaf(self, did: str, seq: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT leaf FROM records WHERE did=? AND seq=?", (did, seq)).fetchone()
        return None if row is None else row[0]

    def verified_leaves(self, did: str, start: int, end: int) -> list[bytes]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT leaf FROM records WHERE did=? AND seq>=? AND seq<? ORDER BY seq", (did, start, end))]

    def verified_records(self, did: str, start: int = 0) -> Iterator[tuple[int, bytes]]:
        seq = start
        while True:
            with self._lock:
                rows = self._db.execute("SELECT seq, raw FROM records WHERE did=? AND seq>=? ORDER BY seq "
                                        "LIMIT 1000", (did, seq)).fetchall()
            if not rows:
                return
            yield from ((s, r) for s, r in rows)
            seq = rows[-1][0] + 1

    # -- evidence ---------------------------------------------------------------------------------
    def add_rejection(self, rejection: Rejection) -> None:
        with self._tx():
            self._db.execute("INSERT INTO rejections (did, seq, reason, detail, digest, time) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (rejection.did, rejection.seq, rejection.reason, rejection.detail,
                              rejection.digest, rejection.time))

    def add_fork(self, fork: Fork) -> None:
        with self._tx():
            self._db.execute("INSERT INTO forks (did, size, verified_note, conflicting_note, detail, time) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (fork.did, fork.size, fork.verified_note,
                                                           fork.conflicting_note, fork.detail, fork.time))
            self._db.execute("UPDATE agents SET forked=1 WHERE did=?", (fork.did,))

    def rejections(self, did: str | None = None) -> list[Rejection]:
        sql = "SELECT did, seq, reason, detail, digest, time FROM rejections"
        with self._lock:
            rows = self._db.execute(sql + (" WHERE did=? ORDER BY id" if did else " ORDER BY id"),
                                    (did,) if did else ()).fetchall()
        return [Rejection(*r) for r in rows]

    def forks(self, did: str | None = None) -> list[Fork]:
        sql = "SELECT did, size, verified_note, conflicting_note, detail, time FROM forks"
        with self._lock:
            rows = self._db.execute(sql + (" WHERE did=? ORDER BY id" if did else " ORDER BY id"),
                                    (did,) if did else ()).fetchall()
        return [Fork(*r) for r in rows]

    def summaries(self) -> list[AgentSummary]:
        with self._lock:
            rows = self._db.execute(
                "SELECT a.did, a.size, (SELECT COUNT(*) FROM pending p WHERE p.did=a.did), "
                "(SELECT COUNT(*) FROM rejections r WHERE r.did=a.did), "
                "(SELECT COUNT(*) FROM forks f WHERE f.did=a.did), a.last_seen FROM agents a ORDER BY a.did"
            ).fetchall()
        return [AgentSummary(*r) for r in rows]


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT under the store's lock; ROLLBACK on error."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        st = self._store
        st._lock.acquire()
        st._depth += 1
        if st._depth == 1:
            st._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        st = self._store
        try:
            if st._depth == 1:
                st._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            st._depth -= 1
            st._lock.release()
