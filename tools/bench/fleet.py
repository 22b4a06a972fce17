"""Benchmark: a simulated fleet publishing through mosquitto into SQLite and PostgreSQL collectors.

    .venv/bin/python tools/bench/fleet.py [--agents 200] [--records 400] [--batch 64] [--rate 4000]

Agents are real signed logs (records and Ed25519 checkpoints made with the ledger's own
encoders, as in the tests), cut into sync batches of --batch records that each carry the
checkpoint of their own end (what the agent's sync does when a batch ends at a checkpoint).
Collectors are real ``kestrel collector run`` processes (``--group bench``). In one run, each on a
fresh broker and a fresh database:

    sqlite/1      the embedded default, one collector (the baseline)
    postgres/1    PostgreSQL, one collector
    postgres/2    PostgreSQL, two collectors sharing the fleet
    postgres/3    PostgreSQL, three collectors sharing the fleet

For each: *throughput* — every batch published at once, verified-and-stored records/s from the first
publish until the last agent's verified prefix covers all its records; *lag* — batches published
at a steady --rate records/s, p50/p99 of (time the agent's verified prefix first covers the batch,
polled every 20 ms) minus (its publish time); *bytes per record* — database size on disk (SQLite file
after a WAL checkpoint; PostgreSQL tables with their indexes and TOAST) / records stored.
Ratios are against sqlite/1 and postgres/1, measured in the same process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

POLL_S = 0.02


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Watcher:
    """Polls the agents' verified sizes; records when each batch end was first covered."""

    def __init__(self, spec: str, agents) -> None:
        from kestrel.sync.collector.store import open_store

        self.store = open_store(spec)
        self.want = {a.did: a.ends for a in agents}
        self.covered: dict[tuple[str, int], float] = {}
        self.done_at: float | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        total = sum(len(e) for e in self.want.values())
        while not self._stop.is_set():
            now = time.time()
            for did, size in self.store.verified_sizes().items():
                for i, end in enumerate(self.want.get(did, ())):
                    if end <= size and (did, i) not in self.covered:
                        self.covered[(did, i)] = now
            if len(self.covered) == total:
                self.done_at = now
                return
            self._stop.wait(POLL_S)

    def wait(self, timeout: float) -> None:
        self._t.join(timeout)
        self._stop.set()
        self._t.join()

    def close(self) -> None:
        self._stop.set()
        self._t.join()
        self.store.close()


def run_config(name: str, spec: str, collectors: int, agents, args, tmp: Path) -> dict:
    from kestrel.sync.collector.store import open_store
    from tests.fixtures.mosquitto import start_mosquitto
    from tests.sync.fleet import CollectorProcess, FleetPublisher, make_agents, wait_for

    open_store(spec).close()  # schema first
    cm, broker = start_mosquitto(tmp / f"broker-{name.replace('/', '-')}")
    out: dict = {"config": name}
    with cm:
        procs = [
            CollectorProcess(
                broker=f"{broker.host}:{broker.port}",
                db=spec,
                group="bench",
                client_id=f"bench-{i}",
                log_path=tmp / f"{name.replace('/', '-')}-{i}.log",
            )
            for i in range(collectors)
        ]
        for p in procs:
            p.start()
        try:
            wait_for(lambda: all(p.subscribed() for p in procs), timeout=60, what="collectors subscribed")
            pub = FleetPublisher(broker.host, broker.port, connections=4, inflight=1000)
            try:
                # throughput: everything at once
                watcher = Watcher(spec, agents)
                t0 = time.time()
                for a in agents:
                    a.sent_at.clear()
                pub.publish_all(agents)
                watcher.wait(args.timeout)
                if watcher.done_at is None:
                    raise SystemExit(f"{name}: not every record was verified within {args.timeout}s")
                total = sum(a.ends[-1] for a in agents)
                out["records_per_s"] = total / (watcher.done_at - t0)
                watcher.close()
                store = open_store(spec)
                try:
                    stored = sum(store.verified_sizes().values())
                    out["bytes_per_record"] = store.storage_bytes() / max(1, stored)
                finally:
                    store.close()
                # lag at a steady offered load, on a second set of agents (same shape)
                paced = make_agents(len(agents), args.records, per_batch=args.batch, body=_body)
                watcher = Watcher(spec, paced)
                sent: dict[tuple[str, int], float] = {}
                interval = args.batch / args.rate
                start = time.monotonic()
                k = 0
                for i in range(max(len(a.batches) for a in paced)):
                    for a in paced:
                        if i >= len(a.batches):
                            continue
                        due = start + k * interval
                        k += 1
                        delay = due - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                        sent[(a.did, i)] = time.time()
                        pub.clients[k % len(pub.clients)].publish(a.topic, a.batches[i], qos=1)
                watcher.wait(args.timeout)
                lags = [watcher.covered[key] - t for key, t in sent.items() if key in watcher.covered]
                out["lag_p50_ms"] = _p(lags, 0.50) * 1000
                out["lag_p99_ms"] = _p(lags, 0.99) * 1000
                out["lag_missing"] = len(sent) - len(lags)
                watcher.close()
            finally:
                pub.close()
        finally:
            for p in procs:
                p.stop()
    return out


def _body(i: int) -> dict:
    return {"sensor": "temp0", "value": 20.0 + (i % 100) / 10, "i": i}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--records", type=int, default=400, help="records per agent")
    ap.add_argument("--batch", type=int, default=64, help="records per sync batch")
    ap.add_argument("--rate", type=float, default=4000.0, help="offered load of the lag phase, records/s")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--only", help="comma-separated configs to run (default all)")
    args = ap.parse_args()

    from tests.fixtures.postgres import start_postgres
    from tests.sync.fleet import make_agents

    t = time.time()
    agents = make_agents(args.agents, args.records, per_batch=args.batch, body=_body)
    print(
        f"fleet: {args.agents} agents x {args.records} records ({args.agents * args.records} records, batches of "
        f"{args.batch}, each with its checkpoint) built in {time.time() - t:.1f}s",
        flush=True,
    )
    configs = [("sqlite/1", 1), ("postgres/1", 1), ("postgres/2", 2), ("postgres/3", 3)]
    if args.only:
        configs = [c for c in configs if c[0] in args.only.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="kestrel-bench-fleet-", dir="/tmp") as tmpdir:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)
        pg = start_postgres(tmp / "pg")
        try:
            for name, collectors in configs:
                spec = str(tmp / "sqlite.db") if name.startswith("sqlite") else pg.create_database("bench")
                for a in agents:
                    a.acked.clear()
                r = run_config(name, spec, collectors, agents, args, tmp)
                results.append(r)
                print(
                    f"{name:11s} {r['records_per_s']:9.0f} records/s  lag p50 {r['lag_p50_ms']:7.0f} ms  "
                    f"p99 {r['lag_p99_ms']:7.0f} ms  ({r['lag_missing']} not seen)  "
                    f"{r['bytes_per_record']:6.0f} bytes/record",
                    flush=True,
                )
        finally:
            pg.stop()
    by = {r["config"]: r for r in results}
    print()
    if "sqlite/1" in by and "postgres/1" in by:
        print(
            f"postgres/1 / sqlite/1 = {by['postgres/1']['records_per_s'] / by['sqlite/1']['records_per_s']:.2f}x "
            "(target >= 0.8x)"
        )
    for n in (2, 3):
        if f"postgres/{n}" in by and "postgres/1" in by:
            print(
                f"postgres/{n} / postgres/1 = "
                f"{by[f'postgres/{n}']['records_per_s'] / by['postgres/1']['records_per_s']:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
