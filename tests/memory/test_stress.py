"""Concurrent insert/query/delete/save under stress, and SIGKILL during an index save."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from kestrel.memory import IndexParams, VectorMemory
from tests.memory.data import embedding_like


def _stress(tmp_path, seconds: float) -> None:
    dim, cap = 32, 3000
    pool = embedding_like(20_000, dim=dim, seed=4)
    mem = VectorMemory.create(tmp_path / "mem", IndexParams(dim=dim, capacity=cap, M=8, ef_construction=40))
    mem.add_many(pool[:1000], [{"i": i} for i in range(1000)])
    stop = time.monotonic() + seconds
    errors: list[BaseException] = []
    counts = {"add": 0, "query": 0, "delete": 0, "save": 0}

    def guard(fn):
        def run(seed):
            rng = random.Random(seed)
            try:
                while time.monotonic() < stop:
                    fn(rng)
            except BaseException as exc:  # noqa: BLE001 - the test reports every failure
                errors.append(exc)

        return run

    @guard
    def writer(rng):
        i = rng.randrange(len(pool) - 8)
        mem.add_many(pool[i : i + 8], [{"i": i + k} for k in range(8)])
        counts["add"] += 8

    @guard
    def reader(rng):
        q = pool[rng.randrange(len(pool))]
        hits = mem.search(q, 10)
        assert hits and all(h.distance >= -1e-5 for h in hits)
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        counts["query"] += 1

    @guard
    def deleter(rng):
        ids = mem.ids()
        victim = ids[rng.randrange(len(ids))]
        try:
            if rng.random() < 0.5:
                mem.delete(victim)
            else:
                mem.replace(victim, pool[rng.randrange(len(pool))])
            counts["delete"] += 1
        except Exception as exc:  # the victim may be evicted or deleted meanwhile: only that is fine
            assert "no entry" in str(exc)
        time.sleep(0.001)  # kept: the deleter's pace in the stress mix (it would otherwise empty the index)

    @guard
    def saver(rng):
        mem.save()
        counts["save"] += 1
        time.sleep(0.05)  # kept: the saver's pace in the stress mix (about 20 saves a second)

    threads = [
        threading.Thread(target=f, args=(n,))
        for n, f in enumerate([writer, writer, reader, reader, reader, deleter, saver])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert counts["add"] > 0 and counts["query"] > 0 and counts["save"] > 0, counts
    assert len(mem) <= cap
    mem.save()
    n, ids = len(mem), set(mem.ids())
    mem.close()
    again = VectorMemory.open(tmp_path / "mem")
    assert len(again) == n and set(again.ids()) == ids


def test_concurrent_insert_query_delete_save(tmp_path):
    _stress(tmp_path, 3.0)


@pytest.mark.slow
def test_concurrent_insert_query_delete_save_soak(tmp_path):
    _stress(tmp_path, 60.0)


CHILD = textwrap.dedent("""
    import sys, numpy as np
    from kestrel.memory import VectorMemory, IndexParams
    path = sys.argv[1]
    rng = np.random.default_rng(int(sys.argv[2]))
    mem = VectorMemory.open_or_create(path, IndexParams(dim=128, capacity=20000, M=8, ef_construction=20))
    print("open", len(mem), flush=True)
    while True:
        mem.add_many(rng.standard_normal((25, 128)).astype(np.float32))
        mem.save()
        print("saved", len(mem), flush=True)
""")


def _kill_during_saves(tmp_path, rounds: int) -> None:
    path = tmp_path / "mem"
    rng = random.Random(1)
    last_saved = 0
    for r in range(rounds):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(r)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[0] == "open" and int(first[1]) >= last_saved
        time.sleep(rng.uniform(0.3, 1.2))  # kept: the kill lands at a random point of the child's save loop
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        lines = [ln.split() for ln in out.splitlines() if ln.startswith("saved")]
        if lines:
            last_saved = int(lines[-1][1])
        # the old or the new index loads, and nothing acknowledged is lost
        mem = VectorMemory.open(path)
        assert len(mem) in (last_saved, last_saved + 25), (len(mem), last_saved)
        last_saved = len(mem)
        names = os.listdir(path)
        assert not [n for n in names if n.startswith(".")], names  # strays were cleaned on open
        assert len([n for n in names if n.endswith(".hnsw")]) == 1
        mem.close()
    assert last_saved > 0


def test_sigkill_during_save_leaves_old_or_new_index(tmp_path):
    _kill_during_saves(tmp_path, 4)


@pytest.mark.slow
def test_sigkill_during_save_many_rounds(tmp_path):
    _kill_during_saves(tmp_path, 40)


def test_asyncio_tasks_insert_and_query_at_once(tmp_path):
    """Tasks of one event loop share the memory through worker threads (the daemon's pattern)."""
    import asyncio

    pool = embedding_like(3000, dim=32, seed=6)
    mem = VectorMemory.create(tmp_path / "mem", IndexParams(dim=32, capacity=2000, M=8, ef_construction=40))
    mem.add_many(pool[:100])

    async def inserter(start):
        for i in range(start, start + 400, 4):
            await asyncio.to_thread(mem.add_many, pool[i : i + 4])

    async def querier(seed):
        rng = random.Random(seed)
        found = 0
        for _ in range(150):
            hits = await asyncio.to_thread(mem.search, pool[rng.randrange(3000)], 5)
            found += len(hits)
        return found

    async def main():
        return await asyncio.gather(inserter(100), inserter(500), inserter(900), querier(1), querier(2))

    results = asyncio.run(main())
    assert results[3] == results[4] == 150 * 5
    assert len(mem) == 100 + 3 * 400
    assert mem.search(pool[1299], 1)[0].distance < 1e-5  # inserted by the third task
