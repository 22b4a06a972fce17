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
        publisher.publish(
            ledger_topic(log.did), encode_batch(SyncBatch(a, tuple(log.records[a : a + 8]), log.checkpoint(a + 8)))
        )
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
    assert svc.subscribed.wait(20), "the collector did not subscribe"
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


def test_two_collectors_share_the_fleet(mosquitto, tmp_path, publisher):
    """$share/<group>: each batch goes to one member; the shared store still verifies every agent fully."""
    store = SqliteStore(tmp_path / "shared.db")
    members = [
        CollectorService(store, host=mosquitto.host, port=mosquitto.port, group="fleet", client_id=f"member-{i}")
        for i in range(2)
    ]
    for m in members:
        m.start()
    try:
        for m in members:
            assert m.subscribed.wait(20), "the collector did not subscribe"
        logs = [LogBuilder() for _ in range(3)]
        for log in logs:
            log.append(60)
        for a in range(0, 60, 5):
            for log in logs:
                publisher.publish(
                    ledger_topic(log.did),
                    encode_batch(SyncBatch(a, tuple(log.records[a : a + 5]), log.checkpoint(a + 5))),
                )
        for log in logs:
            wait_until(lambda log=log: store.agent_state(log.did).size == 60, what="all records verified")
        wait_until(lambda: sum(m.counters.messages for m in members) == 36, what="counters")
        assert all(m.counters.messages > 0 for m in members)  # the broker split the load
        assert store.rejections() == []
    finally:
        for m in members:
            m.stop()
        store.close()


def test_a_message_that_breaks_handling_is_refused_not_looped_on(collector, publisher):
    """A damaged row (here: an agent's stored frontier) must not wedge the collector for everyone."""
    import msgpack

    bad, good = LogBuilder(), LogBuilder()
    bad.append(4)
    good.append(4)
    store = collector.store
    publisher.publish(ledger_topic(bad.did), encode_batch(SyncBatch(0, tuple(bad.records[:2]), bad.checkpoint(2))))
    wait_until(lambda: store.agent_state(bad.did).size == 2, what="first batch")
    with store.transaction():
        store._db.execute("UPDATE agents SET frontier=? WHERE did=?", (msgpack.packb([b"x", b"y", b"z"]), bad.did))
    publisher.publish(ledger_topic(bad.did), encode_batch(SyncBatch(2, tuple(bad.records[2:]), bad.checkpoint())))
    publisher.publish(ledger_topic(good.did), encode_batch(SyncBatch(0, tuple(good.records), good.checkpoint())))
    wait_until(lambda: store.agent_state(good.did).size == 4, what="the other agent still served")
    assert [r.reason for r in store.rejections(bad.did)] == ["internal-error"]
