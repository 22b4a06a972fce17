"""Collector verification against real signed records and checkpoints, on every store backend."""

from __future__ import annotations

import msgpack
import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger.record import encode_record
from kestrel.sync.collector.core import CollectorCore
from kestrel.sync.collector.sqlite import SqliteStore
from kestrel.sync.wire import SyncBatch, encode_batch, ledger_topic

from .logs import LogBuilder


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """Every backend passes the same contract: SQLite (embedded) and a real PostgreSQL server."""
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "collector.db")
    else:
        from kestrel.sync.collector.postgres import PostgresStore

        s = PostgresStore(request.getfixturevalue("pg_url"))
    yield s
    s.close()


@pytest.fixture
def core(store):
    return CollectorCore(store, clock=lambda: 1_800_000_000.0)


def send(core, log, start, end, *, cp=None):
    batch = SyncBatch(start, tuple(log.records[start:end]), cp)
    return core.handle(ledger_topic(log.did), encode_batch(batch))


def test_in_order_batches_verify_and_store(core, store):
    log = LogBuilder()
    log.append(50)
    for a in range(0, 50, 10):
        out = send(core, log, a, a + 10, cp=log.checkpoint(a + 10))
        assert out.verified == 10 and not out.refused
    assert store.agent_state(log.did).size == 50
    assert [raw for _, raw in store.verified_records(log.did)] == log.records


def test_records_wait_for_a_checkpoint(core, store):
    log = LogBuilder()
    log.append(20)
    out = send(core, log, 0, 20)
    assert out.pending == 20 and out.verified == 0
    assert store.agent_state(log.did).size == 0  # never stored as valid without a signed checkpoint
    out = core.handle(ledger_topic(log.did), encode_batch(SyncBatch(20, (), log.checkpoint(20))))
    assert out.verified == 20 and store.agent_state(log.did).size == 20


def test_out_of_order_and_duplicates(core, store):
    log = LogBuilder()
    log.append(30)
    send(core, log, 20, 30, cp=log.checkpoint(30))
    send(core, log, 10, 20, cp=log.checkpoint(20))
    assert store.agent_state(log.did).size == 0
    out = send(core, log, 0, 10, cp=log.checkpoint(10))
    assert out.verified == 30
    out = send(core, log, 0, 30, cp=log.checkpoint(30))
    assert out.duplicates == 30 and out.verified == 0 and not out.refused
    assert sum(1 for _ in store.verified_records(log.did)) == 30


def test_tampered_record_refused_even_when_it_arrives_first(core, store):
    log = LogBuilder()
    log.append(10)
    tampered = encode_record(seq=5, time=1.0, kind="action.result", body={"i": 999}, prev=log.leaves[4])
    core.handle(ledger_topic(log.did), encode_batch(SyncBatch(5, (tampered,), None)))
    out = send(core, log, 0, 10, cp=log.checkpoint(10))
    assert out.verified == 10 and out.refused == ("not-on-signed-chain",)
    assert dict(store.verified_records(log.did))[5] == log.records[5]
    # after verification, the same tampered bytes conflict with the verified record
    out = core.handle(ledger_topic(log.did), encode_batch(SyncBatch(5, (tampered,), None)))
    assert out.refused == ("conflicts-with-verified",)
    reasons = [r.reason for r in store.rejections(log.did)]
    assert reasons == ["not-on-signed-chain", "conflicts-with-verified"]


def test_tampered_last_record_is_not_verified(core, store):
    log = LogBuilder()
    log.append(5)
    tampered = encode_record(seq=4, time=1.0, kind="action.result", body={"x": 1}, prev=log.leaves[3])
    records = tuple(log.records[:4]) + (tampered,)
    out = core.handle(ledger_topic(log.did), encode_batch(SyncBatch(0, records, log.checkpoint(5))))
    assert out.verified == 0  # the root does not match: nothing stored as valid
    out = send(core, log, 4, 5)
    assert out.verified == 5
    assert dict(store.verified_records(log.did))[4] == log.records[4]


def test_checkpoint_signed_by_another_key_refused(core, store):
    log = LogBuilder()
    log.append(3)
    impostor = LogBuilder(SoftwareSigner.generate())
    impostor.records, impostor.leaves = log.records, log.leaves
    out = send(core, log, 0, 3, cp=impostor.checkpoint(3))
    assert out.refused == ("bad-checkpoint",) and out.verified == 0


def test_fork_detected_and_kept(core, store):
    log = LogBuilder()
    log.append(10)
    send(core, log, 0, 10, cp=log.checkpoint(10))
    other = log.fork(6)
    other.append(4, body={"evil": True})
    out = send(core, other, 6, 10, cp=other.checkpoint(10))
    assert out.forks == 1 and "fork" in out.refused
    forks = store.forks(log.did)
    assert len(forks) == 1 and forks[0].size == 10 and forks[0].conflicting_note == other.checkpoint(10)
    assert store.agent_state(log.did).forked


def test_fork_on_smaller_checkpoint(core, store):
    log = LogBuilder()
    log.append(10)
    send(core, log, 0, 10, cp=log.checkpoint(10))
    other = log.fork(3)
    other.append(4, body={"evil": True})
    out = core.handle(ledger_topic(log.did), encode_batch(SyncBatch(0, (), other.checkpoint(7))))
    assert out.forks == 1


def test_fork_between_two_pending_checkpoints(core, store):
    log = LogBuilder()
    log.append(10)
    other = log.fork(2)
    other.append(3, body={"evil": True})
    core.handle(ledger_topic(log.did), encode_batch(SyncBatch(0, (), other.checkpoint(5))))
    out = send(core, log, 0, 10, cp=log.checkpoint(10))
    assert out.verified == 10 and out.forks == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        msgpack.packb({"v": 2}),
        msgpack.packb({"v": 1, "start": -1, "records": []}),
        msgpack.packb({"v": 1, "start": 0, "records": [1]}),
        b"\x00" * 2_000_000,
    ],
)
def test_garbage_payload_refused(core, store, payload):
    log = LogBuilder()
    out = core.handle(ledger_topic(log.did), payload)
    assert out.refused == ("malformed",)
    assert store.rejections(log.did)[0].reason == "malformed"


def test_bad_topic_and_bad_record(core, store):
    assert core.handle("kestrel/not-a-did/ledger/batch", b"x").refused == ("bad-topic",)
    log = LogBuilder()
    out = core.handle(ledger_topic(log.did), encode_batch(SyncBatch(0, (b"\x93garbage",), None)))
    assert out.refused == ("malformed-record",)
    log.append(2)
    out = core.handle(ledger_topic(log.did), encode_batch(SyncBatch(1, (log.records[0],), None)))
    assert out.refused == ("wrong-seq",)


def test_pending_limit(store):
    core = CollectorCore(store, clock=lambda: 0.0, max_pending=5)
    log = LogBuilder()
    log.append(10)
    send(core, log, 0, 5)
    out = send(core, log, 5, 10)
    assert out.refused == ("pending-limit",) * 5


def test_state_survives_reopen(tmp_path):
    log = LogBuilder()
    log.append(7)
    s = SqliteStore(tmp_path / "c.db")
    CollectorCore(s, clock=lambda: 0.0).handle(
        ledger_topic(log.did), encode_batch(SyncBatch(0, tuple(log.records[:5]), log.checkpoint(5)))
    )
    s.close()
    s = SqliteStore(tmp_path / "c.db")
    out = CollectorCore(s, clock=lambda: 0.0).handle(
        ledger_topic(log.did), encode_batch(SyncBatch(5, tuple(log.records[5:]), log.checkpoint(7)))
    )
    assert out.verified == 2 and s.agent_state(log.did).size == 7
    s.close()
    import stat

    for name in ("c.db", "c.db-wal"):
        if (tmp_path / name).exists():
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_corrupt_database_is_a_clear_error(tmp_path):
    from kestrel.errors import DataError

    bad = tmp_path / "c.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="unusable"):
        SqliteStore(bad)


def test_held_records_that_do_not_reach_the_tip_leave_the_fast_path(core, store):
    """A redelivered batch whose held records number exactly the distance to the tip, without the
    ones just above it: it waits (found by three collectors sharing a fleet: it broke handling)."""
    log = LogBuilder()
    log.append(16)
    send(core, log, 4, 8)
    send(core, log, 8, 12)
    send(core, log, 12, 16, cp=log.checkpoint(16))  # records 0..3 are not here yet
    out = send(core, log, 12, 16, cp=log.checkpoint(16))  # redelivered: 12 held above a tip of 0
    assert out.verified == 0 and not out.refused
    out = send(core, log, 0, 4, cp=log.checkpoint(4))
    assert out.verified == 16 and store.agent_state(log.did).size == 16
