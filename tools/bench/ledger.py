"""Benchmark: durable appends and verification of Kestrel's ledger against what a user would write.

Run::

    .venv/bin/python tools/bench/ledger.py [--seconds 3] [--producers 16] [--dir DIR] [--no-tpm] [--json]

Same disk (``--dir``, default a temporary directory beside this checkout), same
workload for every contender: ``--producers`` threads, each waiting for its own
receipt before its next append, ~200-byte bodies. Contenders:

* ``sqlite``: SQLite in WAL mode, ``synchronous=FULL``, one transaction and one
  Ed25519 signature per row (the baseline);
* ``strict`` and ``batched``: Kestrel's ledger with a software Ed25519 identity;
* ``tpm-batched``: Kestrel batched with a P-256 key in swtpm (started here if
  ``swtpm`` is on PATH), compared with ``batched``.

Then verification: records/s of verifying the exported log against the
baseline of one Ed25519 signature verification per record. Prints absolute
figures and ratios; targets: batched >= 5x sqlite, verification >= 10x,
tpm-batched >= 0.8x batched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtime"))
sys.path.insert(0, str(ROOT))  # tests.fixtures: the swtpm starter

from kestrel.identity.keys import SoftwareSigner  # noqa: E402
from kestrel.ledger import Ledger  # noqa: E402


def _body(p: int, i: int) -> dict:
    return {"producer": p, "i": i, "action": "send_email", "args_digest": "ab" * 32, "note": "n" * 80}


def _drive(append: Callable[[int, int], None], *, producers: int, seconds: float) -> dict:
    """Closed loop: each producer appends, waits for its receipt, repeats. Returns rate and latencies."""
    lat: list[list[float]] = [[] for _ in range(producers)]
    stop = time.perf_counter() + seconds
    barrier = threading.Barrier(producers + 1)

    def worker(p: int) -> None:
        barrier.wait()
        mine, i = lat[p], 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            append(p, i)
            mine.append(time.perf_counter() - t0)
            i += 1

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    all_lat = sorted(x for mine in lat for x in mine)
    return {
        "appends": len(all_lat),
        "appends_per_s": len(all_lat) / elapsed,
        "p50_ms": all_lat[len(all_lat) // 2] * 1000,
        "p99_ms": all_lat[int(len(all_lat) * 0.99)] * 1000,
    }


def bench_sqlite(d: Path, *, producers: int, seconds: float) -> tuple[dict, list[tuple[bytes, bytes]]]:
    signer = SoftwareSigner.generate()
    d.mkdir()
    path = d / "baseline.sqlite"
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, sig BLOB NOT NULL)")
    setup.commit()
    setup.close()
    # One connection shared under a lock: SQLite has one writer at a time anyway, and this avoids
    # its busy-wait back-off between connections (the fastest way to use it from threads).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=FULL")
    lock = threading.Lock()

    import msgpack

    def append(p: int, i: int) -> None:
        body = msgpack.packb({"time": time.time(), "kind": "bench.append", "body": _body(p, i)})
        sig = signer.sign(body)
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO log (body, sig) VALUES (?, ?)", (body, sig))
            conn.execute("COMMIT")

    result = _drive(append, producers=producers, seconds=seconds)
    rows = conn.execute("SELECT body, sig FROM log").fetchall()
    conn.close()
    result["public_key"] = signer.public_key
    return result, rows


def bench_kestrel(d: Path, signer, *, mode: str, producers: int, seconds: float) -> tuple[dict, Ledger]:
    led = Ledger.open(d, signer=signer, durability=mode)
    result = _drive(lambda p, i: led.append("bench.append", _body(p, i)), producers=producers, seconds=seconds)
    led.flush()
    verified = led.verify()
    assert verified.size == verified.signed_size == result["appends"], (verified, result["appends"])
    return result, led


def bench_verify(led: Ledger, rows: list[tuple[bytes, bytes]], public_key, *, repeat: int = 3) -> dict:
    from kestrel.ledger.export import verify_export

    export = led.directory.parent / f"{led.directory.name}.export"
    led.export(export)
    data = export.read_bytes()
    best = min(_timed(lambda: verify_export(data, led.public_key)) for _ in range(repeat))
    n = verify_export(data, led.public_key).size
    sample = rows[: max(1, min(len(rows), 5000))]

    def baseline() -> None:
        for body, sig in sample:
            public_key.verify(sig, body)

    base = min(_timed(baseline) for _ in range(repeat))
    return {"records": n, "records_per_s": n / best, "baseline_records_per_s": len(sample) / base}


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def start_swtpm(d: Path) -> tuple[contextlib.AbstractContextManager, str] | None:
    """A fresh swtpm on free loopback ports (the test suite's fixture), or None without swtpm."""
    if shutil.which("swtpm") is None:
        return None
    from tests.fixtures.swtpm import start_swtpm as start

    cm = start(d / "swtpm")
    server = cm.__enter__()
    return cm, server.tcti


def tpm_signer(tcti: str):
    from kestrel.identity.tpm import TPMSigner, create_tpm_key

    pem, public = create_tpm_key(tcti)
    return TPMSigner(pem, tcti=tcti, expected=public)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each append run")
    ap.add_argument("--producers", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per contender (medians reported)")
    ap.add_argument("--dir", help="directory on the disk to measure (default: a temp dir beside the checkout)")
    ap.add_argument("--no-tpm", action="store_true", help="skip the swtpm contender")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="kestrel-bench-", dir=args.dir or ROOT))
    results: dict[str, dict] = {}
    runs: dict[str, list[dict]] = {}
    swtpm = None
    signers = {}
    try:
        kw = dict(producers=args.producers, seconds=args.seconds)
        signers["strict"] = signers["batched"] = SoftwareSigner.generate()
        if not args.no_tpm:
            swtpm = start_swtpm(base)
            if swtpm is None:
                print("note: swtpm not found on PATH; TPM contender skipped", file=sys.stderr)
            else:
                signers["tpm-batched"] = tpm_signer(swtpm[1])
                t0 = time.perf_counter()
                for _ in range(50):
                    signers["tpm-batched"].sign(b"x")
                results["tpm_sign_ms"] = (time.perf_counter() - t0) / 50 * 1000
        batched = rows = sqlite_key = None
        for rep in range(args.repeat):  # contenders interleaved, medians reported: the machine is shared
            res, rows = bench_sqlite(base / f"sqlite{rep}", **kw)
            sqlite_key = res.pop("public_key")
            runs.setdefault("sqlite", []).append(res)
            for name, signer in signers.items():
                mode = "strict" if name == "strict" else "batched"
                res, led = bench_kestrel(base / f"{name}{rep}", signer, mode=mode, **kw)
                runs.setdefault(name, []).append(res)
                if name == "batched" and rep == args.repeat - 1:
                    batched = led
                else:
                    led.close()
        for name, rs in runs.items():
            results[name] = {k: statistics.median(r[k] for r in rs) for k in ("appends_per_s", "p50_ms", "p99_ms")}
            results[name]["runs_appends_per_s"] = [round(r["appends_per_s"]) for r in rs]
        results["verify"] = bench_verify(batched, rows, sqlite_key)
        batched.close()
    finally:
        for signer in signers.values():
            getattr(signer, "close", lambda: None)()
        if swtpm is not None:
            swtpm[0].__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)
    results["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    _report(results, args)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    return 0


def _report(r: dict, args: argparse.Namespace) -> None:
    print(
        f"ledger benchmark: {args.producers} producers, {args.repeat} x {args.seconds:.1f} s per contender, "
        f"~200-byte bodies, python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    (b1, b5, _), (a1, a5, _) = r["loadavg"]["before"], r["loadavg"]["after"]
    print(
        f"load average (1 min, 5 min): {b1:.2f} {b5:.2f} before, {a1:.2f} {a5:.2f} after"
        + ("" if b1 < 1 else "   (busy before the run: ratios are not comparable)")
    )
    print(f"{'contender':<14}{'appends/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'vs sqlite':>11}   runs (appends/s)")
    base = r["sqlite"]["appends_per_s"]
    for name in ("sqlite", "strict", "batched", "tpm-batched"):
        if name in r:
            x = r[name]
            print(
                f"{name:<14}{x['appends_per_s']:>12.0f}{x['p50_ms']:>10.2f}{x['p99_ms']:>10.2f}"
                f"{x['appends_per_s'] / base:>10.2f}x   {x['runs_appends_per_s']}"
            )
    ratio = r["batched"]["appends_per_s"] / base
    print(f"batched / sqlite: {ratio:.2f}x (target >= 5x) {'PASS' if ratio >= 5 else 'FAIL'}")
    v = r["verify"]
    vr = v["records_per_s"] / v["baseline_records_per_s"]
    print(
        f"verification: {v['records_per_s']:.0f} records/s (export of {v['records']} records) vs "
        f"{v['baseline_records_per_s']:.0f} records/s one Ed25519 verify per record: {vr:.2f}x "
        f"(target >= 10x) {'PASS' if vr >= 10 else 'FAIL'}"
    )
    if "tpm-batched" in r:
        t = r["tpm-batched"]
        tr = t["appends_per_s"] / r["batched"]["appends_per_s"]
        print(
            f"tpm-batched / batched: {tr:.2f}x (target >= 0.8x) {'PASS' if tr >= 0.8 else 'FAIL'}; "
            f"swtpm signature {r['tpm_sign_ms']:.2f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())
