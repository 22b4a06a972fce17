"""Benchmark: ledger sync to a local mosquitto, backlog catch-up, collector verifications/s.

    .venv/bin/python tools/bench/sync.py [--records 20000] [--backlog 100000]

1. Sync throughput: LedgerSync publishing a prefilled ledger, beside two baselines run in the same
   process against the same broker: raw paho QoS 1 publishes of the *same batch payloads* (same
   bytes, same in-flight window), and raw paho QoS 1 with one record per message.
2. Catch-up: time for a --backlog record ledger to be acknowledged from offset 0, and until a
   collector on the same broker has verified and stored all of it.
3. Collector verifications/s: CollectorCore into SQLite, in process (no network).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _ledger(dirpath: Path, n: int, *, flush_every: int = 5000):
    """A ledger of ``n`` sensor records; a signed checkpoint at least every ``flush_every`` records."""
    from kestrel.identity.keys import SoftwareSigner
    from kestrel.ledger.ledger import Ledger

    led = Ledger.open(dirpath, signer=SoftwareSigner.generate())
    for i in range(n):
        led.submit("sensor.reading", {"sensor": "temp0", "value": 20.0 + (i % 100) / 10, "i": i})
        if i % flush_every == flush_every - 1:
            led.flush()
    led.flush()
    return led


def _payloads(led) -> list[bytes]:
    """The sync's own batches of a whole ledger (its reader and encoder, no broker)."""
    from kestrel.sync.config import SyncConfig
    from kestrel.sync.sync import _Reader
    from kestrel.sync.wire import encode_batch

    reader, start, sent, out = _Reader(led, SyncConfig()), 0, 0, []
    while (got := reader.read(start, sent)) is not None:
        batch, cp = got
        out.append(encode_batch(batch))
        start, sent = batch.end, max(sent, cp)
    return out


async def _sync_all(led, host: str, port: int, state: Path) -> tuple[float, list[bytes]]:
    from kestrel.io.mqtt import MqttBridge
    from kestrel.sync.config import SyncConfig
    from kestrel.sync.sync import LedgerSync

    payloads: list[bytes] = []
    async with MqttBridge(host, port, agent_id=led.public_key.did, max_queued=10000) as bridge:
        await bridge.wait_connected(10)
        orig = bridge.publish

        async def capture(topic, payload, **kw):
            payloads.append(payload)
            return await orig(topic, payload, **kw)

        bridge.publish = capture
        sync = LedgerSync(led, bridge, config=SyncConfig(poll_s=0.01, offset_s=0.1), state_dir=state)
        t = time.perf_counter()
        await sync.start()
        assert await sync.wait_synced(timeout=600)
        elapsed = time.perf_counter() - t
        await sync.stop()
    return elapsed, payloads


def _paho(host: str, port: int, topic: str, payloads: list[bytes], *, window: int) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(window)
    c.max_queued_messages_set(0)
    c.connect(host, port)
    c.loop_start()
    t = time.perf_counter()
    infos = [c.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(120)
    elapsed = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return elapsed


def _collector_rate(led, payloads: list[bytes], db: Path, *, group: int) -> tuple[float, int]:
    from kestrel.sync.collector.core import CollectorCore
    from kestrel.sync.collector.sqlite import SqliteStore
    from kestrel.sync.wire import ledger_topic

    store = SqliteStore(db)
    core = CollectorCore(store, clock=time.time)
    topic = ledger_topic(led.public_key.did)
    t = time.perf_counter()
    for i in range(0, len(payloads), group):  # as the collector service does: a group per transaction
        core.handle_many([(topic, p) for p in payloads[i : i + group]])
    elapsed = time.perf_counter() - t
    n = store.agent_state(led.public_key.did).size
    store.close()
    return elapsed, n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=20000)
    p.add_argument("--backlog", type=int, default=100000)
    args = p.parse_args()
    from kestrel.sync.collector.service import CollectorService
    from kestrel.sync.collector.sqlite import SqliteStore
    from tests.fixtures.mosquitto import start_mosquitto

    tmp = Path(tempfile.mkdtemp(prefix="kestrel-bench-sync-"))
    cm, broker = start_mosquitto(tmp / "broker")
    with cm:
        host, port = broker.host, broker.port
        # 1. throughput
        led = _ledger(tmp / "a" / "ledger", args.records)
        records = list(led.entries_raw(0))
        rec_bytes = sum(map(len, records))
        t_sync, payloads = asyncio.run(_sync_all(led, host, port, tmp / "a"))
        t_same = _paho(host, port, "bench/same", payloads, window=8)
        t_one = _paho(host, port, "bench/one", records, window=20)
        n = len(records)
        print(f"sync throughput, {n} records ({rec_bytes / n:.0f} B each), {len(payloads)} messages:")
        print(
            f"  LedgerSync                         {n / t_sync:10.0f} records/s  {rec_bytes / t_sync / 1e6:6.2f} MB/s"
        )
        print(
            f"  raw paho QoS1, same payloads       {n / t_same:10.0f} records/s  ratio sync/raw = {t_same / t_sync:.2f}"
        )
        print(
            f"  raw paho QoS1, 1 record/message    {n / t_one:10.0f} records/s  ratio sync/raw = {t_one / t_sync:.2f}"
        )
        # 3. collector
        live = _ledger(tmp / "live" / "ledger", n, flush_every=64)  # a checkpoint every 64 records
        for name, source in (
            ("bulk-written ledger (checkpoint every ~1000+ records)", led),
            ("ledger with a checkpoint every 64 records", live),
        ):
            msgs = _payloads(source)
            for group in (1, 16):
                t_col, verified = _collector_rate(source, msgs, tmp / f"bench-{id(source)}-{group}.db", group=group)
                assert verified == n, (verified, n)
                print(
                    f"collector verifications, {name}, {group:2d} message(s)/transaction: "
                    f"{n / t_col:.0f} records/s ({len(msgs) / t_col:.0f} messages/s)"
                )
        live.close()
        led.close()
        # 2. catch-up
        big = _ledger(tmp / "b" / "ledger", args.backlog)
        store = SqliteStore(tmp / "catchup.db")
        svc = CollectorService(store, host=host, port=port, client_id="bench-collector")
        svc.start()
        svc.subscribed.wait(10)
        t0 = time.perf_counter()
        t_acked, _ = asyncio.run(_sync_all(big, host, port, tmp / "b"))
        while store.agent_state(big.public_key.did).size < args.backlog:
            time.sleep(0.05)
        t_stored = time.perf_counter() - t0
        svc.stop()
        store.close()
        big.close()
        print(
            f"catch-up of a {args.backlog}-record backlog: acknowledged by the broker in {t_acked:.1f} s "
            f"({args.backlog / t_acked:.0f} records/s); verified and stored by the collector in {t_stored:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
