"""The PostgreSQL backend on a real server: CLI, schema migrations, several connections at once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from kestrel.sync.collector.core import CollectorCore
from kestrel.sync.collector.postgres import PostgresStore, redact
from kestrel.sync.collector.sql import SCHEMA_VERSION
from kestrel.sync.collector.sqlite import SqliteStore
from kestrel.sync.wire import SyncBatch, encode_batch, ledger_topic

from .logs import LogBuilder


def kestrel(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kestrel.cli", *argv], capture_output=True, text=True, timeout=60)


def _batch(log: LogBuilder, a: int, b: int, *, cp: bool = True) -> bytes:
    return encode_batch(SyncBatch(a, tuple(log.records[a:b]), log.checkpoint(b) if cp else None))


def test_status_verify_export_on_postgres(pg_url, tmp_path):
    log, other = LogBuilder(), LogBuilder()
    log.append(25)
    other.append(3)
    store = PostgresStore(pg_url)
    core = CollectorCore(store, clock=time.time)
    core.handle(ledger_topic(log.did), _batch(log, 0, 25))
    core.handle(ledger_topic(other.did), _batch(other, 0, 3, cp=False))  # held: no checkpoint yet
    core.handle(ledger_topic(log.did), b"junk")
    store.close()
    r = kestrel("collector", "status", "--db", pg_url, "--json")
    assert r.returncode == 0, r.stderr
    got = {
        a["did"]: (a["verified"], a["pending"], a["rejections"], a["records"]) for a in json.loads(r.stdout)["agents"]
    }
    assert got == {log.did: (25, 0, 1, 25), other.did: (0, 3, 0, 0)}
    r = kestrel("collector", "verify", "--agent", log.did, "--db", pg_url)
    assert r.returncode == 0 and "25 records verified" in r.stdout, r.stdout + r.stderr
    out = tmp_path / "export.bin"
    assert kestrel("collector", "export", "--agent", log.did, str(out), "--db", pg_url).returncode == 0
    r = kestrel("audit", "verify", "--export", str(out), "--agent", log.did)
    assert r.returncode == 0, r.stdout + r.stderr


def test_verify_catches_a_record_altered_in_the_database(pg_url):
    """`collector verify` re-checks from scratch: a row changed behind the collector's back fails."""
    import psycopg

    log = LogBuilder()
    log.append(8)
    store = PostgresStore(pg_url)
    CollectorCore(store, clock=time.time).handle(ledger_topic(log.did), _batch(log, 0, 8))
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE records SET raw = %s WHERE did = %s AND seq = 5", (log.records[4], log.did))
    r = kestrel("collector", "verify", "--agent", log.did, "--db", pg_url)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


def test_database_errors_are_clear(postgres_server):
    r = kestrel("collector", "status", "--db", postgres_server.url("no_such_db"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "no_such_db" in r.stderr
    r = kestrel("collector", "status", "--db", "postgresql://x:secret@127.0.0.1:1/db")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "cannot connect" in r.stderr
    assert "secret" not in r.stderr  # the password never lands in a message
    assert redact("postgresql://u:pw@h:1/d") == "postgresql://u:***@h:1/d"


def test_schema_is_versioned_and_refuses_a_newer_one(pg_url):
    import psycopg

    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(SCHEMA_VERSION)
        conn.execute("UPDATE meta SET value = %s WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    from kestrel.errors import DataError

    with pytest.raises(DataError, match="upgrade kestrel"):
        PostgresStore(pg_url)


def test_concurrent_opens_migrate_once(pg_url):
    """Several collectors starting together on an empty database: one migrates, the others wait."""
    errors: list[BaseException] = []

    def open_close() -> None:
        try:
            PostgresStore(pg_url).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_close) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_sqlite_schema_1_database_is_migrated(tmp_path):
    """A database written by the schema-1 collector opens, its records get their kind and time columns."""
    log = LogBuilder()
    log.append(6)
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    from kestrel.sync.collector.sql import MIGRATIONS

    for stmt in MIGRATIONS[1]:  # exactly what the schema-1 collector created
        db.execute(stmt.format(**SqliteStore.WORDS))
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema', '1')")
    import msgpack

    from kestrel.ledger.merkle import Frontier

    f = Frontier()
    f.extend(log.leaves)
    db.execute(
        "INSERT INTO agents VALUES (?, 6, ?, ?, 0, 1.0, 2.0)",
        (log.did, msgpack.packb(list(f.hashes)), log.checkpoint()),
    )
    db.executemany(
        "INSERT INTO records VALUES (?, ?, ?, ?, 3.0)",
        [(log.did, i, raw, log.leaves[i]) for i, raw in enumerate(log.records)],
    )
    db.commit()
    db.close()
    store = SqliteStore(path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        [summary] = store.summaries()
        assert (summary.verified, summary.records) == (6, 6)
        from kestrel.sync.collector.store import LogFilter

        rows = store.log(log.did, LogFilter(kind="action.result"))
        assert [(r.seq, r.time) for r in rows] == [(i, 1_800_000_000.0 + i) for i in range(6)]
        log.append(2)
        out = CollectorCore(store, clock=time.time).handle(ledger_topic(log.did), _batch(log, 6, 8))
        assert out.verified == 2
    finally:
        store.close()


def test_two_connections_racing_on_one_agent_store_each_record_once(pg_url):
    """Batches of one agent handled at once by two stores (two collector processes' connections), in
    any order: the advisory lock serialises them, the pending table holds the early ones."""
    logs = [LogBuilder() for _ in range(3)]
    for log in logs:
        log.append(200)
    stores = [PostgresStore(pg_url) for _ in range(2)]
    cores = [CollectorCore(s, clock=time.time) for s in stores]
    messages = [
        (ledger_topic(log.did), _batch(log, a, a + 10, cp=(a // 10) % 3 != 1 or a == 190))
        for a in range(0, 200, 10)
        for log in logs
    ]
    messages.reverse()  # the worst order: every batch arrives before its predecessor
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            mine = messages[i::2]
            for j in range(0, len(mine), 4):
                cores[i].handle_many(mine[j : j + 4])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for log in logs:
        assert stores[0].agent_state(log.did).size == 200
        assert [raw for _, raw in stores[0].verified_records(log.did)] == log.records
    assert stores[0].rejections() == [] and stores[0].forks() == []
    for s in stores:
        s.close()
