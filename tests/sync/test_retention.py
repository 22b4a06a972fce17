"""Retention: flash stays bounded by the owner's policy; unsynced records go only under drop-oldest."""

from __future__ import annotations

import asyncio
import time

import pytest

from kestrel._internal.paths import StateLayout
from kestrel.identity.keys import SoftwareSigner
from kestrel.io.mqtt import MqttBridge
from kestrel.ledger.ledger import Ledger
from kestrel.ledger.reader import verify_dir
from kestrel.sync.collector.core import CollectorCore
from kestrel.sync.collector.sqlite import SqliteStore
from kestrel.sync.config import SyncConfig, parse_sync_config
from kestrel.sync.limits import RetentionPolicy, prune_point
from kestrel.sync.sync import LedgerSync
from kestrel.sync.wire import SyncBatch, encode_batch, ledger_topic
from tests.fixtures.wait import until

from .conftest import wait_until

SEG = 6000
LIMIT = 100_000


@pytest.fixture
def signer():
    return SoftwareSigner.generate()


@pytest.fixture
def ledger(state_dir, signer):
    led = Ledger.open(StateLayout(state_dir).ledger, signer=signer, max_segment_bytes=SEG)
    yield led
    led.close()


def _cfg(on_full: str) -> SyncConfig:
    return SyncConfig(
        poll_s=0.02,
        retry_s=0.1,
        offset_s=0.01,
        status_s=0.01,
        retention=RetentionPolicy(max_bytes=LIMIT, warn_fraction=0.6, on_full=on_full),
    )


# -- the pure planner ----------------------------------------------------------------------------
SEGS = [(0, 30_000), (100, 30_000), (200, 30_000), (300, 5_000)]


def test_prune_point_keep_never_prunes():
    assert (
        prune_point(RetentionPolicy(LIMIT, 0.6, "keep"), used_bytes=95_000, segments=SEGS, acked=300, size=320) is None
    )


def test_prune_point_below_threshold_prunes_nothing():
    pol = RetentionPolicy(LIMIT, 0.6, "drop-oldest")
    assert pol.prune_at == 80_000
    assert prune_point(pol, used_bytes=79_999, segments=SEGS, acked=0, size=320) is None


def test_prune_point_drop_synced_stops_at_the_acknowledged_offset():
    pol = RetentionPolicy(LIMIT, 0.6, "drop-synced")
    assert prune_point(pol, used_bytes=95_000, segments=SEGS, acked=150, size=320) == 100
    assert prune_point(pol, used_bytes=95_000, segments=SEGS, acked=99, size=320) is None
    # frees just enough to fall below warn_fraction (60 000): two segments
    assert prune_point(pol, used_bytes=95_000, segments=SEGS, acked=320, size=320) == 200


def test_prune_point_drop_oldest_may_drop_unsynced_but_never_the_last_segment():
    pol = RetentionPolicy(LIMIT, 0.6, "drop-oldest")
    assert prune_point(pol, used_bytes=95_000, segments=SEGS, acked=0, size=320) == 200
    assert prune_point(pol, used_bytes=10**9, segments=SEGS, acked=0, size=320) == 300
    assert prune_point(pol, used_bytes=10**9, segments=[(0, 10**9)], acked=0, size=5) is None


def test_on_full_config_values():
    assert (
        parse_sync_config({"retention": {"max_bytes": 5000, "on_full": "drop-oldest"}}).retention.on_full
        == "drop-oldest"
    )
    from kestrel.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_sync_config({"retention": {"max_bytes": 5000, "on_full": "drop-everything"}})


# -- a long append run with the real ledger and sync ---------------------------------------------------
def _append_run(ledger, n: int, usage: list[int]) -> None:
    for i in range(n):
        ledger.append("sensor.reading", {"i": i, "value": "v" * 60})
        usage.append(ledger.disk_usage().total)
        time.sleep(0.001)  # kept: the append rate (~1000/s) the housekeeper must keep flash bounded at


def _run_with_sync(ledger, state_dir, bridge_factory, cfg, n):
    usage: list[int] = []

    async def go():
        async with bridge_factory() as bridge:
            sync = LedgerSync(ledger, bridge, config=cfg, state_dir=state_dir)
            checks = [0]  # the housekeeper's completed retention checks
            check = sync._check_retention

            async def counted() -> None:
                await check()
                checks[0] += 1

            sync._check_retention = counted
            await sync.start()
            try:
                await asyncio.to_thread(_append_run, ledger, n, usage)
                after = checks[0] + 2  # the second one to end from now began after the last append
                await until(lambda: checks[0] >= after, what="a retention check after the last append")
                return sync.status, list(sync.pruned)
            finally:
                await sync.stop()

    status, pruned = asyncio.run(go())
    return usage, status, pruned


def test_drop_oldest_offline_keeps_flash_bounded(ledger, state_dir, signer):
    from tests.fixtures.procs import free_port

    port = free_port()  # no broker for the whole run
    usage, status, pruned = _run_with_sync(
        ledger,
        state_dir,
        lambda: MqttBridge(
            "127.0.0.1", port, agent_id=ledger.public_key.did, reconnect_initial=0.05, reconnect_max=0.3
        ),
        _cfg("drop-oldest"),
        1500,
    )
    assert len(usage) == 1500 and max(usage) <= LIMIT, max(usage)
    assert pruned and ledger.first_seq > 0 and status.acked == 0
    ledger.flush()
    recs = list(ledger.records(kind="ledger.pruned"))
    assert recs and all(r.body["reason"] == "retention drop-oldest" for r in recs)
    assert sum(p.records for p in pruned) == ledger.first_seq  # contiguous prunes from record 0
    assert all(r.body["unsynced"] == r.body["records"] > 0 for r in recs)  # every dropped record was unsynced
    assert recs[-1].body["to"] == ledger.first_seq  # older ledger.pruned records may be pruned themselves
    assert status.backlog == ledger.size - ledger.first_seq
    v = verify_dir(ledger.directory, signer.public_key)
    assert v.first_seq == ledger.first_seq and v.size == ledger.size


def test_warning_is_recorded_before_the_prune(ledger, state_dir):
    from tests.fixtures.procs import free_port

    for i in range(1200):
        ledger.submit("sensor.reading", {"i": i, "value": "v" * 60})
    ledger.flush()
    assert ledger.disk_usage().total > LIMIT
    port = free_port()
    usage, status, pruned = _run_with_sync(
        ledger, state_dir, lambda: MqttBridge("127.0.0.1", port, agent_id=ledger.public_key.did), _cfg("drop-oldest"), 1
    )
    assert len(pruned) == 1 and ledger.disk_usage().total < 0.6 * LIMIT
    ledger.flush()
    (warning,) = list(ledger.records(kind="sync.retention"))
    (rec,) = list(ledger.records(kind="ledger.pruned"))
    assert warning.body["level"] == "limit" and warning.seq < rec.seq
    assert rec.body["from"] == 0 and rec.body["to"] == ledger.first_seq == pruned[0].new_first_seq


def test_drop_synced_offline_never_drops_unsynced(ledger, state_dir):
    from tests.fixtures.procs import free_port

    port = free_port()
    cfg = SyncConfig(
        poll_s=0.02,
        offset_s=0.01,
        status_s=0.01,
        retention=RetentionPolicy(max_bytes=20_000, warn_fraction=0.6, on_full="drop-synced"),
    )
    usage, status, pruned = _run_with_sync(
        ledger, state_dir, lambda: MqttBridge("127.0.0.1", port, agent_id=ledger.public_key.did), cfg, 300
    )
    assert max(usage) > 20_000  # over the limit, but nothing unsynced may go under drop-synced
    assert not pruned and ledger.first_seq == 0
    assert any("limit reached" in w for w in status.warnings)


@pytest.mark.mosquitto
def test_drop_synced_online_bounds_flash_and_drops_only_synced(ledger, state_dir, signer, mosquitto, collector):
    usage, status, pruned = _run_with_sync(
        ledger,
        state_dir,
        lambda: MqttBridge(mosquitto.host, mosquitto.port, agent_id=ledger.public_key.did),
        _cfg("drop-synced"),
        1500,
    )
    assert max(usage) <= LIMIT and pruned and ledger.first_seq > 0
    ledger.flush()
    recs = list(ledger.records(kind="ledger.pruned"))
    assert recs and all(r.body["unsynced"] == 0 for r in recs)
    # the collector holds every record, pruned ones included, verified
    did = ledger.public_key.did
    wait_until(lambda: collector.store.agent_state(did).size >= ledger.first_seq, what="collector caught up")
    assert collector.store.rejections() == []
    assert CollectorCore(collector.store, clock=time.time).gap(did) is None


# -- the collector and a pruned ledger -------------------------------------------------------------
def _batches(ledger, start: int, size: int = 50):
    raws = list(ledger.entries_raw(start))
    cp = ledger.latest_checkpoint()
    out = []
    for i in range(0, len(raws), size):
        chunk = tuple(raws[i : i + size])
        last = start + i + len(chunk) == cp.size
        out.append(encode_batch(SyncBatch(start + i, chunk, cp.note if last else None)))
    return out


def test_collector_with_a_ledger_pruned_after_sync_verifies_everything(ledger, tmp_path):
    for i in range(300):
        ledger.append("sensor.reading", {"i": i, "value": "v" * 60})
    ledger.flush()
    core = CollectorCore(SqliteStore(tmp_path / "c.db"), clock=time.time)
    topic = ledger_topic(ledger.public_key.did)
    for payload in _batches(ledger, 0):
        core.handle(topic, payload)
    synced = ledger.size
    first = ledger.prune(synced).new_first_seq  # drop-synced: only what the collector has
    assert first > 0
    for i in range(50):
        ledger.append("sensor.reading", {"i": i})
    ledger.flush()
    for payload in _batches(ledger, synced):
        core.handle(topic, payload)
    assert core.store.agent_state(ledger.public_key.did).size == ledger.size
    assert core.gap(ledger.public_key.did) is None and core.store.rejections() == []


def test_collector_reports_the_gap_of_records_pruned_before_sync(ledger, tmp_path, capsys):
    for i in range(300):
        ledger.append("sensor.reading", {"i": i, "value": "v" * 60})
    ledger.flush()
    first = ledger.prune(250, reason="retention drop-oldest").new_first_seq  # nothing was synced
    ledger.flush()
    db = tmp_path / "c.db"
    core = CollectorCore(SqliteStore(db), clock=time.time)
    topic = ledger_topic(ledger.public_key.did)
    for payload in _batches(ledger, first):
        core.handle(topic, payload)
    did = ledger.public_key.did
    assert core.store.agent_state(did).size == 0  # nothing links the kept records to a verified log
    assert core.gap(did) == (0, first - 1)
    core.store.close()
    from kestrel.cli import main

    assert main(["collector", "status", "--db", str(db)]) == 0
    assert f"GAP: records 0..{first - 1} missing" in capsys.readouterr().out
