"""VectorMemory on real hnswlib: operations, eviction, persistence, ef, recall, dimension checks."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from kestrel.errors import DataError, UsageError
from kestrel.memory import (
    DimensionMismatchError,
    IndexParams,
    MemoryBusyError,
    MemoryFullError,
    VectorMemory,
)
from tests.memory.data import embedding_like


def make(tmp_path, n=0, *, dim=16, capacity=100, **kw):
    mem = VectorMemory.create(tmp_path / "mem", IndexParams(dim=dim, capacity=capacity, **kw))
    if n:
        mem.add_many(embedding_like(n, dim=dim), [{"i": i} for i in range(n)])
    return mem


def test_add_search_delete_replace(tmp_path):
    vecs = embedding_like(60, dim=16, seed=2)
    mem = make(tmp_path, dim=16)
    ids = [mem.add(v, {"i": i}).id for i, v in enumerate(vecs[:50])]
    assert ids == list(range(50)) and len(mem) == 50
    hit = mem.search(vecs[7], 3)[0]
    assert hit.id == 7 and hit.meta == {"i": 7} and hit.distance < 1e-5
    mem.delete(7)
    hits = mem.search(vecs[7], 10)
    assert hits and all(h.id != 7 for h in hits)
    with pytest.raises(DataError, match="no entry 7"):
        mem.delete(7)
    mem.replace(8, vecs[55], {"i": "new"})
    assert mem.search(vecs[55], 1)[0].id == 8 and mem.get(8) == {"i": "new"}
    assert mem.ids()[-1] == 8  # replace makes it the youngest
    assert len(mem.search(vecs[0], 500)) == 49  # k is clamped to the entries there are


def test_bounded_size_evicts_oldest_first(tmp_path):
    mem = make(tmp_path, 100, capacity=100)
    vecs = embedding_like(130, dim=16, seed=9)[100:]
    first = mem.add(vecs[0], {"new": 0})
    assert first.evicted == (0,) and len(mem) == 100
    results = mem.add_many(vecs[1:], [{"new": i} for i in range(1, 30)])
    assert results[0].evicted == tuple(range(1, 30))
    assert len(mem) == 100 and mem.ids()[:2] == [30, 31]
    assert mem.search(vecs[5], 1)[0].meta == {"new": 5}
    with pytest.raises(MemoryFullError):
        mem.add_many(embedding_like(101, dim=16))


def test_save_load_restores_everything_including_ef(tmp_path):
    mem = make(tmp_path, 80, ef=123)
    mem.delete(3)
    mem.save()
    mem.close()
    loaded = VectorMemory.open(tmp_path / "mem")
    assert loaded.ef == 123 and loaded._index.ef == 123  # hnswlib's load_index alone resets ef to 10
    assert len(loaded) == 79 and 3 not in loaded.ids()
    q = embedding_like(80, dim=16)[10]
    assert loaded.search(q, 1)[0].id == 10
    loaded.close()
    files = sorted(os.listdir(tmp_path / "mem"))
    assert files == ["index-0000000000000002.hnsw", "lock", "memory.kmem"], files
    for f in files:
        assert stat.S_IMODE(os.stat(tmp_path / "mem" / f).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "mem").st_mode) == 0o700


def test_one_writer_process_at_a_time_and_read_only_refuses_save(tmp_path):
    mem = make(tmp_path, 5)
    with pytest.raises(MemoryBusyError):
        VectorMemory.open(tmp_path / "mem")
    ro = VectorMemory.open(tmp_path / "mem", read_only=True)
    with pytest.raises(UsageError):
        ro.save()
    mem.close()
    VectorMemory.open(tmp_path / "mem").close()


def test_dimension_mismatch_is_refused(tmp_path):
    mem = make(tmp_path, 5, dim=16)
    for bad in (np.zeros(15, np.float32), np.zeros((2, 17), np.float32), np.zeros((2, 2, 16), np.float32)):
        with pytest.raises(DimensionMismatchError):
            mem.add(bad)
        with pytest.raises(DimensionMismatchError):
            mem.search(bad)
    with pytest.raises(DataError, match="NaN"):
        mem.add(np.full(16, np.nan, np.float32))
    mem.close()
    with pytest.raises(DimensionMismatchError, match="16-dimensional"):
        VectorMemory.open_or_create(tmp_path / "mem", IndexParams(dim=384))


def test_recall_at_10_on_20k_vectors_against_exact_search(tmp_path):
    n, dim = 20_000, 384
    data = embedding_like(n + 200, dim=dim, seed=11)
    base, queries = data[:n], data[n:]
    mem = VectorMemory.create(tmp_path / "mem", IndexParams(dim=dim, capacity=n, M=16, ef_construction=64, ef=64))
    mem.add_many(base, num_threads=2)
    exact = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    found = [[h.id for h in mem.search(q, 10)] for q in queries]
    recall = np.mean([len(set(e.tolist()) & set(f)) / 10 for e, f in zip(exact, found, strict=False)])
    assert recall >= 0.95, recall
