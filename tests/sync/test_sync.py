"""LedgerSync with the real ledger, the runtime's MqttBridge, mosquitto and the collector."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from kestrel._internal.paths import StateLayout
from kestrel.identity.keys import SoftwareSigner
from kestrel.io.mqtt import MqttBridge
from kestrel.ledger.ledger import Ledger
from kestrel.sync.collector.service import CollectorService
from kestrel.sync.collector.sqlite import SqliteStore
from kestrel.sync.config import SyncConfig
from kestrel.sync.limits import RetentionPolicy
from kestrel.sync.state import OffsetStore, read_status
from kestrel.sync.sync import LedgerSync
from tests.fixtures.wait import until

from .conftest import wait_until

pytestmark = pytest.mark.mosquitto
FAST = SyncConfig(poll_s=0.02, retry_s=0.1, offset_s=0.02, status_s=0.1)


@pytest.fixture
def ledger(state_dir):
    led = Ledger.open(StateLayout(state_dir).ledger, signer=SoftwareSigner.generate())
    yield led
    led.close()


def _bridge(host, port, ledger):
    return MqttBridge(host, port, agent_id=ledger.public_key.did, reconnect_initial=0.05, reconnect_max=0.3)


def _status_written(state_dir, **want):
    def check() -> bool:
        st = read_status(state_dir)
        return st is not None and all(getattr(st, k) == v for k, v in want.items())

    return check


def _fill(ledger, n):
    for i in range(n):
        ledger.submit("action.result", {"i": i})
    ledger.flush()


def test_sync_reaches_collector_verified(ledger, state_dir, mosquitto, collector):
    _fill(ledger, 600)

    async def go():
        async with _bridge(mosquitto.host, mosquitto.port, ledger) as bridge:
            sync = LedgerSync(ledger, bridge, config=FAST, state_dir=state_dir)
            await sync.start()
            assert await sync.wait_synced(timeout=30)
            await ledger.append_async("action.result", {"late": True})
            ledger.flush()
            assert await sync.wait_synced(timeout=30)
            await until(_status_written(state_dir, acked=601), what="status.json with every record acked")
            status = sync.status
            await sync.stop()
            return status

    status = asyncio.run(go())
    assert status.acked == 601 and status.backlog == 0 and status.connected
    assert OffsetStore(state_dir).load(ledger.public_key.did).acked == 601
    store = collector.store
    wait_until(lambda: store.agent_state(ledger.public_key.did).size == 601, what="601 verified")
    assert [raw for _, raw in store.verified_records(ledger.public_key.did)] == list(ledger.entries_raw(0))
    assert store.rejections() == []
    assert read_status(state_dir).acked == 601


def test_resume_from_acknowledged_offset(ledger, state_dir, mosquitto, collector):
    _fill(ledger, 300)

    async def run_once(expect):
        async with _bridge(mosquitto.host, mosquitto.port, ledger) as bridge:
            sync = LedgerSync(ledger, bridge, config=FAST, state_dir=state_dir)
            await sync.start()
            assert await sync.wait_synced(timeout=30)
            published = sync.published
            await sync.stop()
            return published

    first = asyncio.run(run_once(300))
    _fill(ledger, 10)
    second = asyncio.run(run_once(310))
    assert first >= 2 and second == 1  # only the 10 new records (one message) were sent again
    wait_until(lambda: collector.store.agent_state(ledger.public_key.did).size == 310, what="310 verified")
    assert collector.counters.duplicates == 0


def test_broker_unreachable_then_up(ledger, state_dir, tmp_path):
    """The runtime keeps working offline (appends, a responsive loop) and syncs all once the broker is up."""
    from tests.fixtures.mosquitto import start_mosquitto
    from tests.fixtures.procs import free_port

    port = free_port()

    async def go():
        async with _bridge("127.0.0.1", port, ledger) as bridge:
            sync = LedgerSync(ledger, bridge, config=FAST, state_dir=state_dir)
            await sync.start()
            worst = 0.0
            for i in range(200):  # the loop keeps ticking and appends keep succeeding while offline
                t = time.perf_counter()
                await ledger.append_async("sensor.reading", {"i": i})
                await asyncio.sleep(0.001)  # kept: a loop tick, timed with the append (a stalled loop delays it)
                worst = max(worst, time.perf_counter() - t)
            assert not bridge.connected and sync.status.acked == 0 and sync.status.backlog == 200, sync.status
            cm, broker = start_mosquitto(tmp_path / "late-broker", port=port)
            with cm:
                store = SqliteStore(tmp_path / "c.db")
                svc = CollectorService(store, host=broker.host, port=broker.port, client_id="late")
                svc.start()
                try:
                    ledger.flush()
                    assert await sync.wait_synced(timeout=30), sync.status
                    await asyncio.to_thread(
                        wait_until, lambda: store.agent_state(ledger.public_key.did).size == 200, what="200 verified"
                    )
                finally:
                    await sync.stop()
                    svc.stop()
                    store.close()
            return worst

    worst = asyncio.run(go())
    # no append (a durable group commit) nor loop tick stalled behind the missing broker; the bound
    # is generous because a loaded 2-core CI machine can delay one fsync by a few hundred ms
    assert worst < 2.0, f"an append or loop tick took {worst:.3f} s while the broker was down"


def test_bandwidth_cap_is_honoured(ledger, state_dir, mosquitto):
    for i in range(200):
        ledger.submit("action.result", {"i": i, "pad": "x" * 200})
    ledger.flush()
    total = sum(len(r) for r in ledger.entries_raw(0))
    cap = total / 1.0  # bytes per second: the whole ledger in about a second, after the burst
    cfg = SyncConfig(poll_s=0.02, offset_s=0.02, status_s=0.1, bandwidth=cap, burst=4096, batch_bytes=4096)

    async def go():
        async with _bridge(mosquitto.host, mosquitto.port, ledger) as bridge:
            await bridge.wait_connected(10)
            sync = LedgerSync(ledger, bridge, config=cfg, state_dir=state_dir)
            t = time.perf_counter()
            await sync.start()
            assert await sync.wait_synced(timeout=30)
            elapsed = time.perf_counter() - t
            await sync.stop()
            return elapsed

    elapsed = asyncio.run(go())
    assert elapsed >= 0.7  # (total - burst) / cap, less the first batch


def test_retention_warning_recorded_and_reported(ledger, state_dir):
    from tests.fixtures.procs import free_port

    _fill(ledger, 100)
    cfg = SyncConfig(poll_s=0.02, offset_s=0.02, status_s=0.05, retention=RetentionPolicy(max_bytes=4096))

    async def go():
        async with _bridge("127.0.0.1", free_port(), ledger) as bridge:  # no broker: the backlog stays
            sync = LedgerSync(ledger, bridge, config=cfg, state_dir=state_dir)
            await sync.start()
            await until(
                lambda: (st := read_status(state_dir)) is not None and st.warnings,
                what="the retention warning in status.json",
            )
            status = sync.status
            await sync.stop()
            return status

    status = asyncio.run(go())
    assert status.warnings and "limit reached" in status.warnings[0]
    ledger.flush()
    warnings = list(ledger.records(kind="sync.retention"))
    assert len(warnings) == 1 and warnings[0].body["level"] == "limit"
    assert warnings[0].body["backlog"] == 100
    assert read_status(state_dir).warnings == status.warnings


def test_corrupt_offset_file_is_refused_not_reset(ledger, state_dir):
    store = OffsetStore(state_dir)
    store.path.parent.mkdir(parents=True, mode=0o700)
    store.path.write_text("{not json")
    from kestrel.errors import DataError

    with pytest.raises(DataError, match="corrupt"):
        store.load(ledger.public_key.did)
    store.path.write_text(json.dumps({"version": 1, "agent": "did:key:zother", "acked": 5}))
    with pytest.raises(DataError, match="belongs to"):
        store.load(ledger.public_key.did)


def test_sync_never_blocks_the_loop(ledger, state_dir, mosquitto, collector):
    """A ticker on the loop keeps its pace while thousands of records are read, encoded and published."""
    for i in range(6000):
        ledger.submit("action.result", {"i": i, "pad": "y" * 64})
    ledger.flush()

    async def go():
        lag = 0.0
        stop = asyncio.Event()

        async def ticker():
            nonlocal lag
            while not stop.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.005)  # kept: the ticker's period; its lateness is what is measured
                lag = max(lag, time.perf_counter() - t - 0.005)

        tick = asyncio.create_task(ticker())
        async with _bridge(mosquitto.host, mosquitto.port, ledger) as bridge:
            sync = LedgerSync(ledger, bridge, config=FAST, state_dir=state_dir)
            await sync.start()
            assert await sync.wait_synced(timeout=60)
            await sync.stop()
        stop.set()
        await tick
        return lag

    lag = asyncio.run(go())
    assert lag < 0.5, f"the event loop stalled for {lag:.3f}s"  # a blocking sync would stall it for seconds
    wait_until(lambda: collector.store.agent_state(ledger.public_key.did).size == 6000, what="6000 verified")


def test_late_collector_gets_everything_by_resend_request(ledger, state_dir, mosquitto, tmp_path):
    """Batches acknowledged while no collector listened are requested again and resent."""
    _fill(ledger, 200)
    cfg = SyncConfig(poll_s=0.02, offset_s=0.02, status_s=0.1, resend_interval_s=0.0)

    async def go():
        async with _bridge(mosquitto.host, mosquitto.port, ledger) as bridge:
            sync = LedgerSync(ledger, bridge, config=cfg, state_dir=state_dir)
            await sync.start()
            assert await sync.wait_synced(timeout=30)  # acknowledged by the broker, seen by nobody
            store = SqliteStore(tmp_path / "late.db")
            svc = CollectorService(
                store, host=mosquitto.host, port=mosquitto.port, client_id="late", resend_after_s=0.3
            )
            svc.start()
            try:
                assert await asyncio.to_thread(svc.subscribed.wait, 20), "the collector did not subscribe"
                await ledger.append_async("action.result", {"after": True})
                ledger.flush()
                await asyncio.to_thread(
                    wait_until,
                    lambda: store.agent_state(ledger.public_key.did).size == 201,
                    what="the whole ledger verified after a resend",
                )
                return sync.resends, svc.resend_requests, store.rejections()
            finally:
                await sync.stop()
                svc.stop()
                store.close()

    resends, requests, rejections = asyncio.run(go())
    assert resends >= 1 and requests >= 1 and rejections == []


def test_malformed_or_useless_resend_requests_are_ignored(ledger, state_dir, mosquitto, publisher):
    from kestrel.sync.wire import encode_resend, resend_topic

    _fill(ledger, 20)

    async def go():
        async with _bridge(mosquitto.host, mosquitto.port, ledger) as bridge:
            sync = LedgerSync(
                ledger, bridge, config=SyncConfig(poll_s=0.02, resend_interval_s=3600), state_dir=state_dir
            )
            await sync.start()
            assert await sync.wait_synced(timeout=30)
            requests = (b"\xc1junk", encode_resend(500), encode_resend(0), encode_resend(0))
            for payload in requests:
                await asyncio.to_thread(publisher.publish, resend_topic(ledger.public_key.did), payload)
            inbox = sync._resend_sub.queue  # the sync's resend requests; it handles each one without awaiting
            await until(lambda: inbox.pushed == len(requests) and not len(inbox), what="the four requests handled")
            n = sync.resends
            await sync.stop()
            return n

    assert asyncio.run(go()) == 1  # junk ignored, beyond-the-offset ignored, the repeat rate-limited


def test_record_too_large_for_the_broker_is_skipped_and_reported(ledger, state_dir, mosquitto):
    ledger.append("action.result", {"i": 0})
    big = ledger.append("action.result", {"blob": b"z" * 2000})
    ledger.append("action.result", {"i": 2})

    async def go():
        bridge = MqttBridge(mosquitto.host, mosquitto.port, agent_id=ledger.public_key.did, max_payload=1024)
        async with bridge:
            await bridge.wait_connected(10)
            sync = LedgerSync(ledger, bridge, config=SyncConfig(poll_s=0.02, retry_s=0.05), state_dir=state_dir)
            await sync.start()
            synced = await sync.wait_synced(3, timeout=10.0)  # the three records: no endless retry
            await until(lambda: any("not sent" in w for w in sync.status.warnings), what="the skip reported")
            status = sync.status
            await sync.stop()
            return synced, status

    synced, status = asyncio.run(go())
    assert synced and status.acked >= 3
    assert any(f"record {big.seq} (" in w and "not sent" in w for w in status.warnings)
    ledger.flush()
    skipped = list(ledger.records(kind="sync.skipped"))
    assert len(skipped) == 1 and skipped[0].body["seq"] == big.seq and skipped[0].body["digest"] == big.digest
    assert skipped[0].body["limit_bytes"] == 1024


def test_run_sync_with_the_raw_config_section(ledger, state_dir, mosquitto, collector):
    from kestrel.sync.sync import run_sync

    _fill(ledger, 50)

    async def go():
        async with _bridge(mosquitto.host, mosquitto.port, ledger) as bridge:
            task = asyncio.create_task(
                run_sync(ledger, bridge, config={"poll_s": 0.02, "offset_s": 0.02}, state_dir=state_dir)
            )

            def acked_all() -> bool:
                assert not task.done(), task
                return OffsetStore(state_dir).load(ledger.public_key.did).acked >= 50

            await until(acked_all, timeout=20, what="50 records acknowledged (the offset file)")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    wait_until(lambda: collector.store.agent_state(ledger.public_key.did).size == 50, what="50 verified")


def test_sync_status_command_while_running(ledger, state_dir, mosquitto):
    import subprocess
    import sys

    _fill(ledger, 30)

    async def go():
        async with _bridge(mosquitto.host, mosquitto.port, ledger) as bridge:
            sync = LedgerSync(ledger, bridge, config=FAST, state_dir=state_dir)
            await sync.start()
            assert await sync.wait_synced(timeout=20)
            await until(_status_written(state_dir, acked=30, backlog=0), what="a status write")
            r = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "kestrel.cli", "sync", "status", "--state", str(state_dir), "--json"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            await sync.stop()
            return r

    r = asyncio.run(go())
    doc = json.loads(r.stdout)
    assert (doc["state"], doc["acked"], doc["backlog"], doc["agent"]) == ("connected", 30, 0, ledger.public_key.did)
