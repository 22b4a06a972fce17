"""PostgreSQL backend of :class:`~kestrel.sync.collector.store.CollectorStore` (psycopg 3).

Installed with the ``collector`` extra; the device runtime never imports it. Several collector
processes, on several hosts, share one database: each message group runs in one transaction
that first takes a transaction-scoped advisory lock per agent it touches (ascending key order,
so two collectors cannot deadlock), so that one agent's verified prefix is extended by one
collector at a time while different agents proceed in parallel. READ COMMITTED is enough: every
read after the lock sees what the previous holder committed. The ``records`` primary key
(did, seq) stays the last line of defence against a double insert.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from ...errors import DataError, TransportError, UsageError
from .sql import SCHEMA_VERSION, TABLES, SqlStore

__all__ = ["PostgresStore", "SCHEMA_VERSION", "redact"]

_MIGRATION_LOCK = 0x4B45535452454C  # "KESTREL": one key for schema migrations


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise UsageError(
            "the PostgreSQL collector backend needs psycopg", hint="pip install 'kestrel-sovereign[collector]'"
        ) from None
    return psycopg


class PostgresStore(SqlStore):
    """One connection to a PostgreSQL database (``postgresql://user@host:port/db``; libpq's
    environment variables and ~/.pgpass apply). Reconnects on the next transaction after the
    server went away; an unreachable server is a :class:`TransportError`."""

    WORDS = {
        "INT": "BIGINT",
        "BLOB": "BYTEA",
        "REAL": "DOUBLE PRECISION",
        "SERIAL": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "NOROWID": "",
    }
    HOUR = "CAST(floor(time / 3600) AS BIGINT)"

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        super().__init__()
        psycopg = _psycopg()
        self.url = url
        self.location = redact(url)
        self._timeout = connect_timeout
        self.transient = (psycopg.OperationalError,)  # type: ignore[misc]
        self._db: Any = None
        self._tx: Any = None
        self._connect()
        try:
            self._migrate()
        except psycopg.Error as exc:
            raise DataError(
                f"collector database {self.location} is unusable: {exc}",
                hint="point --db at a database for Kestrel's collector (an empty one is set up)",
            ) from None

    def _connect(self) -> None:
        psycopg = _psycopg()
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                self._db = psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=max(1, int(self._timeout)),
                    application_name="kestrel-collector",
                )
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise TransportError(
                        f"cannot connect to the collector database {self.location}: {str(exc).strip()}"
                    ) from None
                time.sleep(0.2)
            except psycopg.ProgrammingError as exc:  # a malformed URL
                raise UsageError(
                    f"invalid database URL {self.location}: {exc}", hint="use postgresql://USER@HOST:PORT/DBNAME"
                ) from None

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _cursor(self, sql: str, params: Sequence[Any]) -> Any:
        return self._db.execute(sql, params)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self._lock, self._db.cursor() as cur:
                cur.executemany(self._q(sql), rows)

    def _insert_records(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:  # binary COPY: the fastest bulk path (no text escaping of the record bytes)
            with (
                self._lock,
                self._db.cursor() as cur,
                cur.copy(
                    "COPY records (did, seq, raw, leaf, stored_at, kind, time) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["text", "int8", "bytea", "bytea", "float8", "text", "float8"])
                for row in rows:
                    copy.write_row(row)

    def _begin(self) -> None:
        if self._db is None or self._db.closed or self._db.broken:
            self._connect()
        self._tx = self._db.transaction()
        self._tx.__enter__()

    def _end(self, commit: bool) -> None:
        tx, self._tx = self._tx, None
        if commit:
            tx.__exit__(None, None, None)
        else:
            try:
                tx.__exit__(RuntimeError, RuntimeError("rollback"), None)
            except Exception:
                pass  # the connection is gone: the server rolled the transaction back

    def _lock_keys(self, keys: Sequence[int]) -> None:
        if keys:
            self._exec(
                "SELECT count(pg_advisory_xact_lock(k)) FROM "
                "(SELECT k FROM unnest(?::bigint[]) AS t(k) ORDER BY k) AS s",
                (list(keys),),
            )

    def _migration_lock(self) -> None:
        self._exec("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    def storage_bytes(self) -> int:
        row = self._one(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = current_schema() AND c.relname = ANY(?)",
            (list(TABLES),),
        )
        return int(row[0] or 0)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
