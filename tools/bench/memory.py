"""Benchmark: the vector memory at 100k x 384 against exact numpy search.

Run::

    .venv/bin/python tools/bench/memory.py [--n 100000] [--dim 384] [--queries 1000] [--ef 64,128]
                                          [--threads 2] [--dir DIR] [--json]

Data: embedding-like vectors (``tests/memory/data.py``: a 24-dimensional latent mixture
projected to ``--dim`` and normalised; real sentence embeddings have such a low intrinsic
dimension, uniform random vectors do not). Queries are held-out vectors of the same kind.

For each ``ef``: recall@10 of ``VectorMemory.search`` (the runtime call, lock included)
against the exact top 10, and p50/p99 latency per query, beside the baseline: exact search
with numpy (one matrix-vector product + argpartition per query) on the same vectors.
Then: build time (``add_many``), save and load time of the crash-safe format beside bare
hnswlib ``save_index``/``load_index``, and RSS per 100k vectors beside the raw float32 array.
Targets: recall@10 >= 0.98 and p50 <= 1 ms at the chosen ef.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef", default="32,64,128", help="comma-separated ef values to measure")
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2, help="threads for the bulk build only")
    ap.add_argument("--dir", help="where to save (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import hnswlib
    import numpy as np

    from kestrel.memory import IndexParams, VectorMemory
    from tests.memory.data import embedding_like

    work = Path(args.dir or tempfile.mkdtemp(prefix="kestrel-bench-memory-"))
    shutil.rmtree(work / "mem", ignore_errors=True)
    data = embedding_like(args.n + args.queries, dim=args.dim, seed=21)
    base, queries = data[: args.n], data[args.n :]
    del data
    gc.collect()

    rss0 = rss_mb()
    mem = VectorMemory.create(
        work / "mem", IndexParams(dim=args.dim, capacity=args.n, M=args.M, ef_construction=args.ef_construction, ef=64)
    )
    t0 = time.perf_counter()
    step = 10_000
    for i in range(0, args.n, step):
        mem.add_many(base[i : i + step], [{"i": j} for j in range(i, min(args.n, i + step))], num_threads=args.threads)
    build_s = time.perf_counter() - t0
    gc.collect()
    rss_index = rss_mb() - rss0

    # exact baseline
    exact_t, exact = [], []
    for q in queries:
        t = time.perf_counter()
        scores = base @ q
        top = np.argpartition(-scores, 10)[:10]
        top = top[np.argsort(-scores[top])]
        exact_t.append(time.perf_counter() - t)
        exact.append(set(top.tolist()))

    sweeps = []
    for ef in [int(x) for x in args.ef.split(",")]:
        mem.set_ef(ef)
        for q in queries[:50]:
            mem.search(q, 10)
        lat, recall = [], []
        for q, truth in zip(queries, exact, strict=False):
            t = time.perf_counter()
            hits = mem.search(q, 10)
            lat.append(time.perf_counter() - t)
            recall.append(len(truth & {h.id for h in hits}) / 10)
        sweeps.append(
            {
                "ef": ef,
                "recall_at_10": round(float(np.mean(recall)), 4),
                "p50_ms": round(pct(lat, 0.5) * 1e3, 4),
                "p99_ms": round(pct(lat, 0.99) * 1e3, 4),
            }
        )

    t = time.perf_counter()
    mem.save()
    save_s = time.perf_counter() - t
    mem.close()
    t = time.perf_counter()
    loaded = VectorMemory.open(work / "mem")
    load_s = time.perf_counter() - t
    assert len(loaded) == args.n
    bare_path = work / "bare.hnsw"
    t = time.perf_counter()
    loaded._index.save_index(str(bare_path))
    bare_save_s = time.perf_counter() - t
    loaded.close()
    bare = hnswlib.Index(space="cosine", dim=args.dim)
    t = time.perf_counter()
    bare.load_index(str(bare_path), max_elements=args.n)
    bare_load_s = time.perf_counter() - t
    size_mb = sum(p.stat().st_size for p in (work / "mem").iterdir()) / 1e6
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)

    raw_mb = args.n * args.dim * 4 / 2**20
    result = {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "M": args.M,
        "ef_construction": args.ef_construction,
        "hnswlib": hnswlib.__version__ if hasattr(hnswlib, "__version__") else "0.8",
        "build_s": round(build_s, 1),
        "build_threads": args.threads,
        "exact_numpy": {
            "recall_at_10": 1.0,
            "p50_ms": round(pct(exact_t, 0.5) * 1e3, 4),
            "p99_ms": round(pct(exact_t, 0.99) * 1e3, 4),
        },
        "hnsw": sweeps,
        "save_s": round(save_s, 3),
        "bare_save_index_s": round(bare_save_s, 3),
        "load_s": round(load_s, 3),
        "bare_load_index_s": round(bare_load_s, 3),
        "files_mb": round(size_mb, 1),
        "rss_mb_per_100k": round(rss_index * 100_000 / args.n, 1),
        "raw_float32_mb_per_100k": round(raw_mb * 100_000 / args.n, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    ex = result["exact_numpy"]
    print(
        f"Vector memory: {args.n} x {args.dim}, M {args.M}, ef_construction {args.ef_construction}, "
        f"{args.queries} queries, k=10"
    )
    print(f"  build (add_many, {args.threads} threads)   {build_s:.1f} s")
    print(f"  {'contender':<24} {'recall@10':>9} {'p50 ms':>9} {'p99 ms':>9} {'p50 speed-up':>13}")
    print(f"  {'exact numpy (baseline)':<24} {1.0:>9.4f} {ex['p50_ms']:>9.4f} {ex['p99_ms']:>9.4f} {1.0:>12.1f}x")
    for s in sweeps:
        print(
            f"  {'hnsw ef=' + str(s['ef']):<24} {s['recall_at_10']:>9.4f} {s['p50_ms']:>9.4f} {s['p99_ms']:>9.4f} "
            f"{ex['p50_ms'] / s['p50_ms']:>12.1f}x"
        )
    print(f"  save  {save_s:.3f} s (bare save_index {bare_save_s:.3f} s, ratio {save_s / bare_save_s:.2f})")
    print(
        f"  load  {load_s:.3f} s (bare load_index {bare_load_s:.3f} s, ratio {load_s / bare_load_s:.2f}; "
        f"includes checksum and structure check)"
    )
    print(
        f"  files {size_mb:.1f} MB; RSS {result['rss_mb_per_100k']} MB per 100k vectors "
        f"(raw float32 vectors: {result['raw_float32_mb_per_100k']} MB)"
    )
    print("  targets: recall@10 >= 0.98, p50 <= 1 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
