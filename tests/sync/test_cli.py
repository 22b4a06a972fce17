"""The CLI: sync status, collector status|verify|export (read by audit verify --export), agent-connect."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kestrel._internal.paths import StateLayout
from kestrel.identity import create_identity
from kestrel.identity.envelope import KdfParams
from kestrel.ledger.reader import iter_records
from kestrel.sync.collector.core import CollectorCore
from kestrel.sync.collector.sqlite import SqliteStore
from kestrel.sync.state import SyncStatus, write_status
from kestrel.sync.wire import SyncBatch, encode_batch, ledger_topic
from tests.fixtures.wait import wait_until

from .logs import LogBuilder

PASS = "cli-test-passphrase"


def kestrel(*argv, env=None):
    import os

    e = dict(os.environ, KESTREL_PASSPHRASE=PASS, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "kestrel.cli", *argv], capture_output=True, text=True, env=e, timeout=60
    )


@pytest.fixture
def agent_state(state_dir):
    create_identity(
        state_dir, name="cli", passphrase=PASS.encode(), kdf=KdfParams.argon2id(memory_kib=1024, iterations=1, lanes=1)
    )
    return state_dir


@pytest.fixture
def db(tmp_path):
    log = LogBuilder()
    log.append(25)
    path = tmp_path / "collector.db"
    store = SqliteStore(path)
    core = CollectorCore(store, clock=lambda: 1_800_000_000.0)
    core.handle(ledger_topic(log.did), encode_batch(SyncBatch(0, tuple(log.records), log.checkpoint())))
    core.handle(ledger_topic(log.did), b"junk")
    store.close()
    return path, log


def test_collector_status_verify_export_roundtrip(db, tmp_path):
    path, log = db
    r = kestrel("collector", "status", "--db", str(path), "--json")
    assert r.returncode == 0, r.stderr
    agents = json.loads(r.stdout)["agents"]
    assert [(a["did"], a["verified"], a["rejections"]) for a in agents] == [(log.did, 25, 1)]
    r = kestrel("collector", "verify", "--agent", log.did, "--db", str(path))
    assert r.returncode == 0 and "25 records verified" in r.stdout and "malformed" in r.stdout
    out = tmp_path / "export.bin"
    r = kestrel("collector", "export", "--agent", log.did, str(out), "--db", str(path))
    assert r.returncode == 0, r.stderr
    r = kestrel("audit", "verify", "--export", str(out), "--agent", log.did)
    assert r.returncode == 0, r.stdout + r.stderr


def test_collector_verify_reports_fork_nonzero(db):
    path, log = db
    other = log.fork(10)
    other.append(15, body={"evil": 1})
    store = SqliteStore(path)
    CollectorCore(store, clock=lambda: 0.0).handle(
        ledger_topic(log.did), encode_batch(SyncBatch(25, (), other.checkpoint()))
    )
    store.close()
    r = kestrel("collector", "verify", "--agent", log.did, "--db", str(path))
    assert r.returncode == 2 and "FORK at size 25" in r.stdout and "forked checkpoint" in r.stderr
    assert "Traceback" not in r.stderr


def test_collector_errors_are_clear(tmp_path, db):
    path, log = db
    r = kestrel("collector", "status", "--db", str(tmp_path / "missing.db"))
    assert r.returncode == 64 and "no collector database" in r.stderr
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 1000)
    r = kestrel("collector", "status", "--db", str(bad))
    assert r.returncode == 2 and "unusable" in r.stderr and "Traceback" not in r.stderr
    r = kestrel("collector", "export", "--agent", "did:key:zNOPE", str(tmp_path / "x"), "--db", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = kestrel("collector", "run", "--broker", "host:notaport", "--db", str(path))
    assert r.returncode == 64 and "invalid broker address" in r.stderr


def test_agent_connect_trust_list(agent_state):
    peer = LogBuilder().did
    r = kestrel("agent-connect", peer, "--name", "porch", "--state", str(agent_state))
    assert r.returncode == 0 and "trusted" in r.stdout, r.stderr
    r = kestrel("agent-connect", peer, "--state", str(agent_state))
    assert r.returncode == 0 and "already trusted" in r.stdout
    r = kestrel("agent-connect", "--list", "--state", str(agent_state))
    assert peer in r.stdout and "porch" in r.stdout
    r = kestrel("agent-connect", "did:key:zBAD0", "--state", str(agent_state))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = kestrel("agent-connect", peer, "--remove", "--state", str(agent_state))
    assert r.returncode == 0
    bodies = [
        (rec.kind, rec.body.get("peer"))
        for rec in iter_records(StateLayout(agent_state).ledger)
        if rec.kind.startswith("peer.")
    ]
    assert bodies == [("peer.trusted", peer), ("peer.untrusted", peer)]
    (StateLayout(agent_state).data / "peers.json").write_text("{broken")
    r = kestrel("agent-connect", peer, "--state", str(agent_state))
    assert r.returncode == 2 and "corrupt" in r.stderr
    assert (StateLayout(agent_state).data / "peers.json").read_text() == "{broken"  # never overwritten


def test_sync_status(agent_state):
    r = kestrel("sync", "status", "--state", str(agent_state))
    assert r.returncode == 0 and "has not run" in r.stdout
    import os
    import time

    write_status(
        agent_state,
        SyncStatus(
            agent="did:key:zX",
            connected=False,
            acked=40,
            ledger_size=100,
            rate=0.0,
            updated=time.time(),
            pid=os.getpid(),
            warnings=("ledger uses 90%",),
        ),
    )
    r = kestrel("sync", "status", "--state", str(agent_state), "--json")
    doc = json.loads(r.stdout)
    assert doc["state"] == "offline" and doc["backlog"] == 60 and doc["acked"] == 40  # this pid is alive
    r = kestrel("sync", "status", "--state", str(agent_state))
    assert "backlog 60" in r.stdout and "warning: ledger uses 90%" in r.stdout
    write_status(
        agent_state,
        SyncStatus(
            agent="did:key:zX",
            connected=False,
            acked=40,
            ledger_size=100,
            rate=0.0,
            updated=time.time(),
            pid=os.getpid(),
            first_seq=70,
        ),
    )
    r = kestrel("sync", "status", "--state", str(agent_state))
    assert "backlog 30" in r.stdout and "pruned:       records 0..69" in r.stdout  # pruned ones are not backlog
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_status(
        agent_state,
        SyncStatus(
            agent="did:key:zX", connected=True, acked=1, ledger_size=1, rate=0.0, updated=time.time(), pid=dead.pid
        ),
    )
    assert json.loads(kestrel("sync", "status", "--state", str(agent_state), "--json").stdout)["state"] == "stopped"
    (StateLayout(agent_state).data / "sync" / "status.json").write_text("[1, 2")
    r = kestrel("sync", "status", "--state", str(agent_state))
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.mosquitto
def test_collector_run_command(mosquitto, publisher, tmp_path):

    log = LogBuilder()
    log.append(30)
    db_path = tmp_path / "run.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kestrel.cli",
            "collector",
            "run",
            "--broker",
            f"{mosquitto.host}:{mosquitto.port}",
            "--db",
            str(db_path),
            "--duration",
            "30",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )

    def stored() -> bool:  # published again until the collector's session exists and stores it
        publisher.publish(ledger_topic(log.did), encode_batch(SyncBatch(0, tuple(log.records), log.checkpoint())))
        r = kestrel("collector", "status", "--db", str(db_path), "--json") if db_path.exists() else None
        agents = json.loads(r.stdout)["agents"] if r is not None and r.returncode == 0 else []
        return bool(agents) and agents[0]["verified"] == 30

    try:
        wait_until(stored, timeout=20, poll=0.3, what="`kestrel collector run` stored the batch")
    finally:
        proc.send_signal(__import__("signal").SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "30 records verified" in err
