"""The collector process against a real mosquitto broker."""

from __future__ import annotations

import pytest

from kestrel.ledger.record import encode_record
from kestrel.sync.collector.service import CollectorService, parse_broker
from kestrel.sync.collector.sqlite import SqliteStore
from kestrel.sync.wire import SyncBatch, encode_batch, ledger_topic

from .conftest import wait_until
from .logs import LogBuilder

pytestmark = pytest.mark.mosquitto


def test_collector_verifies_published_batches(collector, publisher):
    log = LogBuilder()
    log.append(40)
    tampered = encode_record(seq=30, time=0.0, kind="action.result", body={"i": -1}, prev=log.leaves[29])
    publisher.publish(ledger_topic(log.did), encode_batch(SyncBatch(30, (tampered,), None)))
    for a in range(0, 40, 8):
        publisher.publish(ledger_topic(log.did),
                          encode_batch(SyncBatch(a, tuple(log.records[a:a + 8]), log.checkpoint(a + 8))))
    publisher.publish(ledger_topic(log.did), b"garbage")
    store = collector.store
    wait_until(lambda: store.agent_state(log.did).size == 40, what="40 verified records")
    wait_until(lambda: len(store.rejections(log.did)) == 2, what="two rejections")
    assert [raw for _, raw in store.verified_records(log.did)] == log.records
    assert sorted(r.reason for r in store.rejections(log.did)) == ["malformed", "not-on-signed-chain"]
    wait_until(lambda: collector.counters.messages == 7, what="counters")  # updated after the acks
    assert collector.counters.verified == 40 and collector.counters.refused == 2


def test_collector_session_keeps_messages_while_down(mosquitto, tmp_path, publisher):
    log = LogBuilder()
    log.append(10)
    store = SqliteStore(tmp_path / "c.db")
    svc = CollectorService(store, host=mosquitto.host, port=mosquitto.port, client_id="persistent")
    svc.start()
    wait_until(svc.subscribed.is_set, what="subscription")
    svc.stop()
    publisher.publish(ledger_topic(log.did), encode_batch(SyncBatch(0, tuple(log.records), log.checkpoint())))
    svc = CollectorService(store, host=mosquitto.host, port=mosquitto.port, client_id="persistent")
    svc.start()
    try:
        wait_until(lambda: store.agent_state(log.did).size == 10, what="queued batch delivered")
    finally:
        svc.stop()
        store.close()


def test_parse_broker():
    from kestrel.errors import UsageError
    assert parse_broker("localhost:1884") == ("localhost", 1884)
    assert parse_broker("broker") == ("broker", 1883)
    assert parse_broker("[::1]:8883") == ("::1", 8883)
    for bad in ("host:0", "host:x", ":1883"):
        with pytest.raises(UsageError):
            parse_broker(bad)
