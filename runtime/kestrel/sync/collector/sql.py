"""The collector store over SQL: one implementation for SQLite and PostgreSQL (docs/collector.md).

A backend (``collector.sqlite``, ``collector.postgres``) supplies the connection, how a
transaction begins and ends, how an agent is locked against other collector processes, and the
few words its SQL dialect spells differently; every query and every schema migration lives here,
written once. Queries use ``?`` placeholders (PostgreSQL's are rewritten to ``%s``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import msgpack

from ...errors import DataError
from ...ledger.errors import RecordError
from ...ledger.record import decode_record
from .store import AgentState, AgentSummary, Fork, LogFilter, LogRow, PendingRecord, Rejection

__all__ = ["SqlStore", "SCHEMA_VERSION", "MIGRATIONS"]

#: Migration N turns a schema-(N-1) database into schema N. Words in braces are the dialect's.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE IF NOT EXISTS agents (did TEXT PRIMARY KEY, size {INT} NOT NULL DEFAULT 0, "
        "frontier {BLOB} NOT NULL, checkpoint {BLOB}, forked INTEGER NOT NULL DEFAULT 0, "
        "first_seen {REAL} NOT NULL, last_seen {REAL} NOT NULL)",
        "CREATE TABLE IF NOT EXISTS records (did TEXT NOT NULL, seq {INT} NOT NULL, raw {BLOB} NOT NULL, "
        "leaf {BLOB} NOT NULL, stored_at {REAL} NOT NULL, PRIMARY KEY (did, seq)) {NOROWID}",
        "CREATE TABLE IF NOT EXISTS pending (did TEXT NOT NULL, seq {INT} NOT NULL, leaf {BLOB} NOT NULL, "
        "raw {BLOB} NOT NULL, prev {BLOB} NOT NULL, received_at {REAL} NOT NULL, "
        "PRIMARY KEY (did, seq, leaf)) {NOROWID}",
        "CREATE TABLE IF NOT EXISTS checkpoints (did TEXT NOT NULL, size {INT} NOT NULL, root {BLOB} NOT NULL, "
        "note {BLOB} NOT NULL, received_at {REAL} NOT NULL, PRIMARY KEY (did, size, root)) {NOROWID}",
        "CREATE TABLE IF NOT EXISTS rejections (id {SERIAL}, did TEXT NOT NULL, seq {INT}, reason TEXT NOT NULL, "
        "detail TEXT NOT NULL, digest TEXT NOT NULL, time {REAL} NOT NULL)",
        "CREATE TABLE IF NOT EXISTS forks (id {SERIAL}, did TEXT NOT NULL, size {INT} NOT NULL, "
        "verified_note {BLOB}, conflicting_note {BLOB} NOT NULL, detail TEXT NOT NULL, time {REAL} NOT NULL)",
    ),
    2: (  # the fleet view (kind/time of each record, stored count) and pruned agents' signed bases
        "ALTER TABLE records ADD COLUMN kind TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE records ADD COLUMN time {REAL} NOT NULL DEFAULT 0",
        "ALTER TABLE pending ADD COLUMN kind TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE pending ADD COLUMN time {REAL} NOT NULL DEFAULT 0",
        "ALTER TABLE agents ADD COLUMN stored {INT} NOT NULL DEFAULT 0",
        "ALTER TABLE agents ADD COLUMN base {INT} NOT NULL DEFAULT 0",
        "ALTER TABLE agents ADD COLUMN tip {BLOB}",
        "CREATE TABLE bases (did TEXT NOT NULL, size {INT} NOT NULL, prev {BLOB} NOT NULL, payload {BLOB} NOT NULL, "
        "received_at {REAL} NOT NULL, PRIMARY KEY (did, size))",
        "CREATE INDEX rejections_did ON rejections (did)",
        "CREATE INDEX forks_did ON forks (did)",
        "UPDATE agents SET stored = (SELECT COUNT(*) FROM records r WHERE r.did = agents.did)",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)
TABLES = ("agents", "records", "pending", "checkpoints", "rejections", "forks", "bases")


def _backfill_v2(store: SqlStore) -> None:
    """Schema 2 keeps each record's kind and time in columns: decode the records stored before."""
    last: tuple[str, int] = ("", -1)
    while True:
        rows = store._all(
            "SELECT did, seq, raw FROM records WHERE did > ? OR (did = ? AND seq > ?) ORDER BY did, seq LIMIT 1000",
            (last[0], last[0], last[1]),
        )
        if not rows:
            return
        out = []
        for did, seq, raw in rows:
            try:
                rec = decode_record(bytes(raw))
                out.append((rec.kind, rec.time, did, seq))
            except RecordError:
                pass  # it verified once; leave the columns empty rather than refuse to open
        store._many("UPDATE records SET kind = ?, time = ? WHERE did = ? AND seq = ?", out)
        last = (rows[-1][0], rows[-1][1])


_AFTER: dict[int, Callable[[SqlStore], None]] = {2: _backfill_v2}


class SqlStore:
    """A :class:`~kestrel.sync.collector.store.CollectorStore` over a DB-API connection.

    One connection, used under a lock from the collector's threads; ``transaction()`` nests.
    """

    #: the dialect's words for the migrations
    WORDS: ClassVar[dict[str, str]]
    #: an SQL expression for the hour (unix time // 3600) of the column ``time``
    HOUR: ClassVar[str]
    #: errors meaning "the database is unavailable right now" (retry later, do not refuse the data)
    transient: ClassVar[tuple[type[BaseException], ...]] = ()
    location: str

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        # Inside a transaction (which holds the agents it touches) an agent's state changes only through
        # this store: its state and checkpoints are read once (lock_agents prefetches them for a whole
        # message group) and kept; its writes (records, state, last seen, new checkpoints) are buffered
        # and sent in a few statements just before the commit, or before a read that needs them.
        self._states: dict[str, AgentState] = {}
        self._locked: set[str] = set()
        self._cps: dict[str, tuple[int, list[tuple[int, bytes, bytes]]]] = {}  # did -> (min_size, checkpoints)
        self._rows: list[tuple[Any, ...]] = []  # records to insert
        self._dirty: dict[str, tuple[AgentState, int, int | None, float]] = {}  # did -> (state, +stored, base, now)
        self._seen: dict[str, float] = {}  # did -> last seen
        self._new_cps: list[tuple[Any, ...]] = []  # checkpoints to insert
        self._tx_thread: int | None = None

    # -- what a backend provides ------------------------------------------------------------------
    def _q(self, sql: str) -> str:
        return sql

    def _cursor(self, sql: str, params: Sequence[Any]) -> Any:
        raise NotImplementedError

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _insert_records(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert (did, seq, raw, leaf, stored_at, kind, time) rows (PostgreSQL uses COPY)."""
        self._many(
            "INSERT INTO records (did, seq, raw, leaf, stored_at, kind, time) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
        )

    def _begin(self) -> None:
        raise NotImplementedError

    def _end(self, commit: bool) -> None:
        raise NotImplementedError

    def _lock_keys(self, keys: Sequence[int]) -> None:
        """Hold these 64-bit keys until the transaction ends (sorted ascending by the caller)."""

    def _migration_lock(self) -> None:
        """Keep other processes out of the migration (inside the transaction)."""

    def storage_bytes(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- plumbing ---------------------------------------------------------------------------------
    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._cursor(self._q(sql), params)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._cursor(self._q(sql), params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return list(self._cursor(self._q(sql), params).fetchall())

    def transaction(self) -> _Tx:
        """Group several calls into one transaction (one commit); nested calls join it."""
        return _Tx(self)

    def _migrate(self) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION`, one versioned step at a time, atomically."""
        with self.transaction():
            self._migration_lock()
            self._exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = self._one("SELECT value FROM meta WHERE key = 'schema'")
            have = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
            if row is not None and not str(row[0]).isdigit():
                raise DataError(f"collector database {self.location} has an unreadable schema version {row[0]!r}")
            if have > SCHEMA_VERSION:
                raise DataError(
                    f"collector database {self.location} has schema {have}; this Kestrel knows up to {SCHEMA_VERSION}",
                    hint="upgrade kestrel on this host (the database was migrated by a newer collector)",
                )
            for version in range(have + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[version]:
                    self._exec(stmt.format(**self.WORDS))
                if version in _AFTER and have:
                    _AFTER[version](self)
            if have < SCHEMA_VERSION:
                self._exec("DELETE FROM meta WHERE key = 'schema'")
                self._exec("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def schema_version(self) -> int:
        row = self._one("SELECT value FROM meta WHERE key = 'schema'")
        return int(row[0])

    def lock_agents(self, dids: Sequence[str]) -> None:
        import hashlib

        new = set(dids) - self._locked if self._in_tx() else set(dids)
        self._lock_keys(
            sorted({int.from_bytes(hashlib.sha256(d.encode()).digest()[:8], "big", signed=True) for d in new})
        )
        if self._in_tx() and new:
            self._locked |= new
            self._prefetch(sorted(new))

    def _prefetch(self, dids: Sequence[str]) -> None:
        """Read the states and the checkpoints at or above the verified prefix of held agents at once."""
        todo = [d for d in dids if d not in self._states]
        if not todo:
            return
        marks = ", ".join("?" * len(todo))
        for did, size, frontier, note, forked, tip, held in self._all(
            "SELECT did, size, frontier, checkpoint, forked, tip, EXISTS (SELECT 1 FROM pending p WHERE "
            f"p.did = a.did) FROM agents a WHERE did IN ({marks})",
            todo,
        ):
            self._states[did] = AgentState(
                did, size, tuple(msgpack.unpackb(frontier)), _b(note), bool(forked), _b(tip), bool(held)
            )
        cps: dict[str, list[tuple[int, bytes, bytes]]] = {d: [] for d in todo}
        for did, size, root, note in self._all(
            "SELECT c.did, c.size, c.root, c.note FROM checkpoints c JOIN agents a ON a.did = c.did "
            f"WHERE c.did IN ({marks}) AND c.size >= a.size ORDER BY c.did, c.size, c.root",
            todo,
        ):
            cps[did].append((size, _b(root), _b(note)))
        for did in todo:
            state = self._states.setdefault(did, AgentState(did, held=False))
            self._cps[did] = (state.size, cps[did])

    def _flush(self) -> None:
        """Send the buffered writes of this transaction."""
        if self._rows:
            rows, self._rows = self._rows, []
            self._insert_records(rows)
        upsert = (
            "INSERT INTO agents (did, size, frontier, checkpoint, forked, tip, stored, base, first_seen, "
            "last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (did) DO UPDATE SET size = "
            "excluded.size, frontier = excluded.frontier, checkpoint = excluded.checkpoint, forked = "
            "excluded.forked, tip = excluded.tip, stored = agents.stored + excluded.stored, "
            "last_seen = excluded.last_seen"
        )
        for with_base in (False, True):
            rows = [
                (
                    st.did,
                    st.size,
                    msgpack.packb(list(st.frontier)),
                    st.checkpoint,
                    int(st.forked),
                    st.tip,
                    n,
                    base or 0,
                    max(now, self._seen.get(st.did, 0.0)),
                    max(now, self._seen.get(st.did, 0.0)),
                )
                for st, n, base, now in self._dirty.values()
                if (base is not None) == with_base
            ]
            if rows:
                self._many(upsert + (", base = excluded.base" if with_base else ""), rows)
        touches = [(did, msgpack.packb([]), now, now) for did, now in self._seen.items() if did not in self._dirty]
        self._dirty.clear()
        self._seen.clear()
        if touches:
            self._many(
                "INSERT INTO agents (did, frontier, first_seen, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (did) DO UPDATE SET last_seen = excluded.last_seen",
                touches,
            )
        if self._new_cps:
            rows, self._new_cps = self._new_cps, []
            self._many(
                "INSERT INTO checkpoints (did, size, root, note, received_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                rows,
            )

    def _flushed(self) -> None:
        """Before a read of what the buffers hold."""
        if self._in_tx() and (self._rows or self._dirty or self._seen or self._new_cps):
            with self._lock:
                self._flush()

    # -- agents -----------------------------------------------------------------------------------
    def _forget(self) -> None:
        self._states.clear()
        self._locked.clear()
        self._cps.clear()
        self._rows.clear()
        self._dirty.clear()
        self._seen.clear()
        self._new_cps.clear()

    def _in_tx(self) -> bool:
        return self._depth > 0 and self._tx_thread == threading.get_ident()

    def agent_state(self, did: str) -> AgentState:
        if self._in_tx() and did in self._states:
            return self._states[did]
        row = self._one(
            "SELECT size, frontier, checkpoint, forked, tip, "
            "EXISTS (SELECT 1 FROM pending p WHERE p.did = a.did) FROM agents a WHERE did = ?",
            (did,),
        )
        state = (
            AgentState(did, held=False)
            if row is None
            else AgentState(
                did, row[0], tuple(msgpack.unpackb(row[1])), _b(row[2]), bool(row[3]), _b(row[4]), bool(row[5])
            )
        )
        if self._in_tx():
            self._states[did] = state
        return state

    def _touch(self, did: str, now: float) -> None:
        """Note that ``did`` was seen (its row is created at the flush if need be). Always in a transaction."""
        self._seen[did] = now

    def _set_state(self, state: AgentState, *, now: float, stored: int = 0, base: int | None = None) -> None:
        """Write the agent's verified state (creating its row if need be) at the flush. Always in a transaction."""
        old_dirty = self._dirty.get(state.did)
        if old_dirty is not None:
            stored += old_dirty[1]
            base = base if base is not None else old_dirty[2]
        self._dirty[state.did] = (state, stored, base, now)
        old = self._states.get(state.did)
        self._states[state.did] = dataclasses.replace(state, held=old.held if old is not None else None)

    # -- pending candidates -----------------------------------------------------------------------
    def add_pending(self, did: str, records: Sequence[PendingRecord], *, now: float) -> None:
        with self.transaction():
            self._touch(did, now)
            self._many(
                "INSERT INTO pending (did, seq, leaf, raw, prev, received_at, kind, time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(did, r.seq, r.leaf, r.raw, r.prev, now, r.kind, r.time) for r in records],
            )
            self._note_held(did)

    def _note_held(self, did: str) -> None:
        """Candidates may be held for ``did`` now: the cached state must not say otherwise."""
        if did in self._states:
            self._states[did] = dataclasses.replace(self._states[did], held=None)

    def pending(self, did: str, start: int, end: int) -> dict[int, list[PendingRecord]]:
        if self._in_tx() and did in self._states and self._states[did].held is False:
            return {}
        out: dict[int, list[PendingRecord]] = {}
        for seq, raw, leaf, prev, kind, t in self._all(
            "SELECT seq, raw, leaf, prev, kind, time FROM pending WHERE did = ? AND seq >= ? AND seq < ? "
            "ORDER BY seq, received_at",
            (did, start, end),
        ):
            out.setdefault(seq, []).append(PendingRecord(seq, _b(raw), _b(leaf), _b(prev), kind, t))
        return out

    def pending_sizes(self, did: str) -> tuple[int, int]:
        lo, n = self._one("SELECT MIN(seq), COUNT(*) FROM pending WHERE did = ?", (did,))
        return (-1 if lo is None else lo), n

    def pending_count(self, did: str, start: int, end: int) -> int:
        return self._one(
            "SELECT COUNT(DISTINCT seq) FROM pending WHERE did = ? AND seq >= ? AND seq < ?", (did, start, end)
        )[0]

    def drop_pending(self, did: str, records: Iterable[PendingRecord]) -> None:
        with self.transaction():
            self._many(
                "DELETE FROM pending WHERE did = ? AND seq = ? AND leaf = ?", [(did, r.seq, r.leaf) for r in records]
            )

    # -- checkpoints ------------------------------------------------------------------------------
    def add_checkpoint(self, did: str, size: int, root: bytes, note: bytes, *, now: float) -> bool:
        with self.transaction():
            self._touch(did, now)
            cached = self._cps.get(did)
            if cached is not None and size >= cached[0]:  # the cache holds every checkpoint of this size
                if any(c[0] == size and c[1] == root for c in cached[1]):
                    return False
                cached[1].append((size, root, note))
                cached[1].sort(key=lambda c: (c[0], c[1]))
                self._new_cps.append((did, size, root, note, now))
                return True
            self._flushed()
            cur = self._exec(
                "INSERT INTO checkpoints (did, size, root, note, received_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (did, size, root, note, now),
            )
            added = cur.rowcount > 0
            cached = self._cps.get(did)
            if added and cached is not None and size >= cached[0]:
                cached[1].append((size, root, note))
                cached[1].sort(key=lambda c: (c[0], c[1]))
            return added

    def checkpoints(self, did: str, *, min_size: int = 0) -> list[tuple[int, bytes, bytes]]:
        cached = self._cps.get(did) if self._in_tx() else None
        if cached is not None and cached[0] <= min_size:
            return [c for c in cached[1] if c[0] >= min_size]
        self._flushed()
        got = [
            (s, _b(r), _b(n))
            for s, r, n in self._all(
                "SELECT size, root, note FROM checkpoints WHERE did = ? AND size >= ? ORDER BY size, root",
                (did, min_size),
            )
        ]
        if self._in_tx():
            self._cps[did] = (min_size, got)
        return list(got)

    # -- verified records -------------------------------------------------------------------------
    def commit_verified(
        self, did: str, records: Sequence[PendingRecord], state: AgentState, *, now: float, drop_pending: bool = True
    ) -> None:
        with self.transaction():
            self._rows.extend((did, r.seq, r.raw, r.leaf, now, r.kind, r.time) for r in records)
            if records and drop_pending:
                self._exec("DELETE FROM pending WHERE did = ? AND seq < ?", (did, state.size))
            self._set_state(state, now=now, stored=len(records))

    def add_base(self, did: str, size: int, prev: bytes, payload: bytes, state: AgentState, *, now: float) -> None:
        with self.transaction():
            self._exec(
                "INSERT INTO bases (did, size, prev, payload, received_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (did, size, prev, payload, now),
            )
            self._exec("DELETE FROM pending WHERE did = ? AND seq < ?", (did, size))
            self._set_state(state, now=now, base=size)

    def base_prev(self, did: str, size: int) -> bytes | None:
        row = self._one("SELECT prev FROM bases WHERE did = ? AND size = ?", (did, size))
        return None if row is None else _b(row[0])

    def bases(self, did: str) -> list[tuple[int, bytes]]:
        return [(s, _b(p)) for s, p in self._all("SELECT size, payload FROM bases WHERE did = ? ORDER BY size", (did,))]

    def verified_leaf(self, did: str, seq: int) -> bytes | None:
        self._flushed()
        row = self._one("SELECT leaf FROM records WHERE did = ? AND seq = ?", (did, seq))
        return None if row is None else _b(row[0])

    def verified_leaves(self, did: str, start: int, end: int) -> list[bytes]:
        self._flushed()
        return [
            _b(r[0])
            for r in self._all(
                "SELECT leaf FROM records WHERE did = ? AND seq >= ? AND seq < ? ORDER BY seq", (did, start, end)
            )
        ]

    def verified_records(self, did: str, start: int = 0) -> Iterator[tuple[int, bytes]]:
        self._flushed()
        seq = start
        while True:
            rows = self._all(
                "SELECT seq, raw FROM records WHERE did = ? AND seq >= ? ORDER BY seq LIMIT 1000", (did, seq)
            )
            if not rows:
                return
            yield from ((s, _b(r)) for s, r in rows)
            seq = rows[-1][0] + 1

    def record(self, did: str, seq: int) -> bytes | None:
        self._flushed()
        row = self._one("SELECT raw FROM records WHERE did = ? AND seq = ?", (did, seq))
        return None if row is None else _b(row[0])

    # -- evidence ---------------------------------------------------------------------------------
    def add_rejection(self, rejection: Rejection) -> None:
        with self.transaction():
            self._exec(
                "INSERT INTO rejections (did, seq, reason, detail, digest, time) VALUES (?, ?, ?, ?, ?, ?)",
                (rejection.did, rejection.seq, rejection.reason, rejection.detail, rejection.digest, rejection.time),
            )

    def add_fork(self, fork: Fork) -> None:
        with self.transaction():
            self._flushed()
            self._exec(
                "INSERT INTO forks (did, size, verified_note, conflicting_note, detail, time) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (fork.did, fork.size, fork.verified_note, fork.conflicting_note, fork.detail, fork.time),
            )
            self._exec("UPDATE agents SET forked = 1 WHERE did = ?", (fork.did,))
            self._states.pop(fork.did, None)

    def rejections(self, did: str | None = None) -> list[Rejection]:
        sql = "SELECT did, seq, reason, detail, digest, time FROM rejections"
        rows = self._all(sql + (" WHERE did = ? ORDER BY id" if did else " ORDER BY id"), (did,) if did else ())
        return [Rejection(*r) for r in rows]

    def forks(self, did: str | None = None) -> list[Fork]:
        sql = "SELECT did, size, verified_note, conflicting_note, detail, time FROM forks"
        rows = self._all(sql + (" WHERE did = ? ORDER BY id" if did else " ORDER BY id"), (did,) if did else ())
        return [Fork(d, s, _b(v), _b(c), detail, t) for d, s, v, c, detail, t in rows]

    # -- the fleet view ---------------------------------------------------------------------------
    def summaries(self, did: str | None = None) -> list[AgentSummary]:
        self._flushed()
        rows = self._all(
            "SELECT a.did, a.size, (SELECT COUNT(*) FROM pending p WHERE p.did = a.did), "
            "(SELECT COUNT(*) FROM rejections r WHERE r.did = a.did), "
            "(SELECT COUNT(*) FROM forks f WHERE f.did = a.did), a.last_seen, a.stored, a.base, a.first_seen "
            "FROM agents a" + (" WHERE a.did = ?" if did else "") + " ORDER BY a.did",
            (did,) if did else (),
        )
        return [AgentSummary(*r) for r in rows]

    def verified_sizes(self) -> dict[str, int]:
        """Each agent's verified prefix (one cheap query; what a monitor polls)."""
        self._flushed()
        return {d: n for d, n in self._all("SELECT did, size FROM agents")}

    def log(self, did: str, flt: LogFilter, *, after: int = -1, limit: int = 100) -> list[LogRow]:
        self._flushed()
        where, params = ["did = ?", "seq > ?"], [did, after]
        if flt.kind:
            if flt.kind.endswith("."):
                where.append("substr(kind, 1, ?) = ?")
                params += [len(flt.kind), flt.kind]
            else:
                where.append("kind = ?")
                params.append(flt.kind)
        for col, op, value in (
            ("seq", ">=", flt.seq_min),
            ("seq", "<=", flt.seq_max),
            ("time", ">=", flt.since),
            ("time", "<=", flt.until),
        ):
            if value is not None:
                where.append(f"{col} {op} ?")
                params.append(value)
        rows = self._all(
            f"SELECT seq, kind, time, stored_at, length(raw) FROM records WHERE {' AND '.join(where)} "
            "ORDER BY seq LIMIT ?",
            (*params, limit),
        )
        return [LogRow(*r) for r in rows]

    def records_of_kind(self, kind: str, *, limit: int = 10_000) -> list[tuple[str, bytes]]:
        """``(did, raw)`` of stored records of one kind (the fleet view reads ``agent.created`` for names)."""
        self._flushed()
        return [
            (d, _b(r))
            for d, r in self._all(
                "SELECT did, raw FROM records WHERE kind = ? ORDER BY did, seq LIMIT ?", (kind, limit)
            )
        ]

    def hourly(self, did: str | None = None) -> list[tuple[str, int, int]]:
        self._flushed()
        sql = f"SELECT did, {self.HOUR} AS h, COUNT(*) FROM records"
        sql += (" WHERE did = ?" if did else "") + " GROUP BY did, h ORDER BY did, h"
        return [(d, int(h), n) for d, h, n in self._all(sql, (did,) if did else ())]


def _b(value: Any) -> Any:
    """bytes from a BLOB/BYTEA column (psycopg may hand out memoryview); None stays None."""
    return bytes(value) if isinstance(value, (memoryview, bytearray)) else value


class _Tx:
    """The store's lock and one database transaction around the outermost ``with``; rollback on error."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        st = self._store
        st._lock.acquire()
        try:
            if st._depth == 0:
                st._forget()
                st._tx_thread = threading.get_ident()
                st._begin()
        except BaseException:
            st._lock.release()
            raise
        st._depth += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        st = self._store
        try:
            if st._depth == 1:
                ok = exc_type is None
                try:
                    if ok:
                        st._flush()
                except BaseException:
                    ok = False
                    raise
                finally:
                    st._forget()
                    st._tx_thread = None
                    st._end(ok)
        finally:
            st._depth -= 1
            st._lock.release()
