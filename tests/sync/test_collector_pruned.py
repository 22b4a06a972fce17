"""Agents that pruned records before they were synced: the collector verifies on from the signed base."""

from __future__ import annotations

import asyncio
import time

import pytest

from kestrel._internal.paths import StateLayout
from kestrel.identity.keys import SoftwareSigner
from kestrel.io.mqtt import MqttBridge
from kestrel.ledger.export import verify_proof
from kestrel.ledger.ledger import Ledger
from kestrel.sync.collector.core import CollectorCore
from kestrel.sync.collector.evidence import proof_file, verify_runs
from kestrel.sync.collector.sqlite import SqliteStore
from kestrel.sync.config import SyncConfig
from kestrel.sync.sync import LedgerSync
from kestrel.sync.wire import SyncBatch, encode_batch, ledger_topic

from .conftest import wait_until
from .test_retention import _batches  # the ledger's records and checkpoint as sync batches

SEG = 6000


@pytest.fixture
def ledger(state_dir):
    led = Ledger.open(StateLayout(state_dir).ledger, signer=SoftwareSigner.generate(), max_segment_bytes=SEG)
    yield led
    led.close()


@pytest.fixture(params=["sqlite", "postgres"])
def core(request, tmp_path):
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "c.db")
    else:
        from kestrel.sync.collector.postgres import PostgresStore

        store = PostgresStore(request.getfixturevalue("pg_url"))
    yield CollectorCore(store, clock=time.time)
    store.close()


def _fill(ledger, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        ledger.append("sensor.reading", {"i": i, "value": "v" * 60})
    ledger.flush()


def _base_batch(ledger) -> bytes:
    return encode_batch(SyncBatch(ledger.base.size, (), None, ledger.base.payload))


@pytest.mark.parametrize("base_first", [True, False])
def test_pruned_before_sync_verifies_from_the_signed_base(ledger, core, base_first):
    _fill(ledger, 300)
    first = ledger.prune(250, reason="retention drop-oldest").new_first_seq  # nothing was ever synced
    assert first > 0
    _fill(ledger, 20, 300)
    did, topic = ledger.public_key.did, ledger_topic(ledger.public_key.did)
    payloads = _batches(ledger, first)
    payloads = [_base_batch(ledger)] + payloads if base_first else payloads + [_base_batch(ledger)]
    outcomes = [core.handle(topic, p) for p in payloads]
    assert sum(o.verified for o in outcomes) == ledger.size - first and not any(o.refused for o in outcomes)
    assert [o.based for o in outcomes if o.based] == [first]
    state = core.store.agent_state(did)
    assert state.size == ledger.size and core.gap(did) is None
    [summary] = core.store.summaries()
    assert (summary.verified, summary.records, summary.base) == (ledger.size, ledger.size - first, first)
    [run] = verify_runs(core.store, did)
    assert (run.first_seq, run.size) == (first, ledger.size)
    proof = verify_proof(proof_file(core.store, did, first + 3), ledger.public_key)
    assert proof.record.seq == first + 3
    # a copy of a pruned record (which the agent cannot have) is refused, not verified
    out = core.handle(topic, encode_batch(SyncBatch(first - 1, (b"\x85" + b"x" * 10,), None)))
    assert out.refused


def test_collector_that_had_the_start_keeps_it_and_verifies_both_runs(ledger, core, capsys):
    _fill(ledger, 100)
    did, topic = ledger.public_key.did, ledger_topic(ledger.public_key.did)
    for p in _batches(ledger, 0):
        core.handle(topic, p)
    synced = ledger.size
    _fill(ledger, 300, 100)  # the collector is unreachable; the agent prunes records it never sent
    first = ledger.prune(350, reason="retention drop-oldest").new_first_seq
    ledger.flush()
    assert first > synced
    for p in [_base_batch(ledger)] + _batches(ledger, first):
        core.handle(topic, p)
    assert core.store.agent_state(did).size == ledger.size
    runs = verify_runs(core.store, did)
    assert [(r.first_seq, r.size) for r in runs] == [(0, synced), (first, ledger.size)]
    assert verify_proof(proof_file(core.store, did, 5), ledger.public_key).record.seq == 5  # the first run
    from kestrel.cli import main

    assert main(["collector", "verify", "--agent", did, "--db", core.store.location]) == 0
    out = capsys.readouterr().out
    assert f"{synced} records verified" in out
    assert f"records {first}..{ledger.size - 1} from the agent's signed base" in out
    assert main(["collector", "status", "--db", core.store.location]) == 0
    assert f"verified from its signed base at {first}" in capsys.readouterr().out


def test_a_base_below_the_verified_prefix_changes_nothing(ledger, core):
    _fill(ledger, 300)
    did, topic = ledger.public_key.did, ledger_topic(ledger.public_key.did)
    for p in _batches(ledger, 0):
        core.handle(topic, p)
    first = ledger.prune(ledger.size).new_first_seq  # drop-synced: all of it reached the collector
    out = core.handle(topic, _base_batch(ledger))
    assert out.based == 0 and not out.refused
    assert core.store.bases(did) == [] and core.store.agent_state(did).size == 300
    assert first > 0


def test_bad_bases_are_refused(ledger, core):
    _fill(ledger, 300)
    ledger.prune(250)
    did, topic = ledger.public_key.did, ledger_topic(ledger.public_key.did)
    other = Ledger.open(ledger.directory.parent / "other", signer=SoftwareSigner.generate(), max_segment_bytes=SEG)
    try:
        _fill(other, 300)
        other.prune(250)
        out = core.handle(topic, _base_batch(other))  # signed by another key
        assert out.refused == ("bad-base",) and core.store.agent_state(did).size == 0
    finally:
        other.close()
    out = core.handle(topic, encode_batch(SyncBatch(5, (), None, b"\x80")))
    assert out.refused == ("bad-base",)
    assert [r.reason for r in core.store.rejections(did)] == ["bad-base", "bad-base"]


@pytest.mark.mosquitto
def test_agent_sync_sends_its_base_after_pruning_unsynced_records(ledger, state_dir, mosquitto, collector):
    """End to end: the agent's sync finds its first records pruned before they were sent and
    publishes its signed base; the collector verifies everything after it (no gap)."""
    _fill(ledger, 300)
    first = ledger.prune(250, reason="retention drop-oldest").new_first_seq
    _fill(ledger, 30, 300)
    did = ledger.public_key.did

    async def go() -> None:
        async with MqttBridge(mosquitto.host, mosquitto.port, agent_id=did) as bridge:
            sync = LedgerSync(
                ledger, bridge, config=SyncConfig(poll_s=0.02, offset_s=0.01, status_s=0.05), state_dir=state_dir
            )
            await sync.start()
            try:
                assert await sync.wait_synced(timeout=30)
                await asyncio.to_thread(
                    wait_until,
                    lambda: collector.store.agent_state(did).size == ledger.size,
                    what="the collector verified from the base",
                )
            finally:
                await sync.stop()

    asyncio.run(go())
    assert CollectorCore(collector.store, clock=time.time).gap(did) is None
    assert collector.store.rejections() == [] and collector.store.bases(did)[0][0] == first
