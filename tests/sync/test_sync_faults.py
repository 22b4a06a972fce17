"""Fault injection: broker restarts and SIGKILLs of the syncing process during a sync (real mosquitto)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kestrel._internal.paths import StateLayout
from kestrel.identity import create_identity
from kestrel.identity.envelope import KdfParams
from kestrel.ledger.reader import iter_records
from kestrel.sync.collector.service import CollectorService
from kestrel.sync.collector.sqlite import SqliteStore
from kestrel.sync.state import OffsetStore
from tests.fixtures.mosquitto import start_mosquitto
from tests.fixtures.procs import free_port

from .conftest import wait_until

pytestmark = pytest.mark.mosquitto
ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "tools" / "faults" / "sync_agent.py"
PASSPHRASE = "fault-test-passphrase"


class Broker:
    """mosquitto on a fixed port and persistence directory, restartable."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port, self._cm = tmp, free_port(), None

    def start(self) -> None:
        self._cm, _ = start_mosquitto(self.tmp, port=self.port)
        self._cm.__enter__()

    def stop(self) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)


def _agent(state: Path, port: int, records: int, *, until_synced: bool = False) -> subprocess.Popen:
    env = dict(os.environ, KESTREL_PASSPHRASE=PASSPHRASE, PYTHONPATH=str(ROOT))
    argv = [
        sys.executable,
        str(AGENT),
        "--state",
        str(state),
        "--broker",
        f"127.0.0.1:{port}",
        "--records",
        str(records),
        "--chunk",
        "40",
        "--pause",
        "0.01",
    ]
    if until_synced:
        argv.append("--exit-when-synced")
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _run_faults(tmp_path: Path, broker_dir: Path, *, records: int, restarts: int, kills: int, interval: float) -> None:
    state = tmp_path / "agent"
    ident = create_identity(
        state,
        name="fault",
        passphrase=PASSPHRASE.encode(),
        kdf=KdfParams.argon2id(memory_kib=1024, iterations=1, lanes=1),
    )
    broker = Broker(broker_dir)
    broker.start()
    store = SqliteStore(tmp_path / "collector.db")
    svc = CollectorService(store, host="127.0.0.1", port=broker.port, client_id="fault-collector")
    svc.start()
    assert svc.subscribed.wait(20), "the collector did not subscribe"
    agent = _agent(state, broker.port, records)
    kill_at = {round(i * restarts / kills) for i in range(kills)}
    killed = 0
    try:
        for i in range(restarts):
            time.sleep(interval)  # kept: the fault schedule's pace (faults land anywhere in the sync)
            if i in kill_at:
                agent.send_signal(signal.SIGKILL)
                agent.wait()
                killed += 1
                agent = _agent(state, broker.port, records)
            broker.stop()
            time.sleep(0.1)  # kept: the outage under test (the broker down for a moment)
            broker.start()
        assert killed == kills
        agent.terminate()
        agent.wait(10)
        final = _agent(state, broker.port, records, until_synced=True)
        try:
            rc = final.wait(120)
        except subprocess.TimeoutExpired:
            final.kill()
            raise
        assert rc == 0, final.stderr.read().decode()[-3000:]
        ledger_dir = StateLayout(state).ledger
        expected = [r.raw for r in iter_records(ledger_dir)]
        acked = OffsetStore(state).load(ident.did).acked
        assert len(expected) >= records and acked == len(expected)
        wait_until(
            lambda: store.agent_state(ident.did).size == acked,
            timeout=60,
            what=f"collector to verify all {acked} acknowledged records",
        )
        stored = list(store.verified_records(ident.did))
        assert [seq for seq, _ in stored] == list(range(acked))  # each acknowledged record exactly once
        assert [raw for _, raw in stored] == expected
        assert store.rejections(ident.did) == [] and store.forks(ident.did) == []
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        svc.stop()
        store.close()
        broker.stop()


def test_broker_restarts_and_sigkills(tmp_path, broker_dir):
    _run_faults(tmp_path, broker_dir, records=3000, restarts=20, kills=5, interval=0.8)


@pytest.mark.slow
def test_broker_restarts_and_sigkills_large(tmp_path, broker_dir):
    _run_faults(tmp_path, broker_dir, records=30000, restarts=40, kills=10, interval=2.0)
