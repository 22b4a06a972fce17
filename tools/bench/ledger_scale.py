#!/usr/bin/env python3
"""Benchmark (issue 13): does reading the ledger cost more as it grows? And what does it cost the flash?

Run::

    nice .venv/bin/python tools/bench/ledger_scale.py --sizes 10M,100M,1G [--dir DIR] [--json FILE]
    nice .venv/bin/python tools/bench/ledger_scale.py --sizes 10M,100M --skip-daemon   # quicker

(CI never runs it: the 1 GiB ledger takes about 1.1 GB of disk and minutes to build.)

For each size a ledger of records of about 400 bytes is built through the public API
(``Ledger.open(...).append`` from 16 producer threads, batched mode, 64 MiB segments) in a state
directory with a file-keystore identity, then, each in a fresh process:

* ``kestrel audit verify``: peak RSS (``ru_maxrss`` of the child) and time;
* ``records(since_seq=size-1)`` (``kestrel.ledger.iter_records``, what ``Ledger.records`` and
  ``audit log`` use): peak RSS, and the latency of the call (median of 50, warm page cache);
* ``kestrel audit prove SEQ --binary``: peak RSS; and ``prove()`` latency (median of 50 random SEQ);
* ``Ledger.open`` for writing (then ``close``): seconds, from the resume point the writer saved
  (docs/ledger-format.md 3.4) and with it removed (the whole log walked, as every open did before);
* the idle daemon (``kestrel run`` on the sim board, no MQTT) opened on it: peak RSS once it
  answers ``status`` and has idled 3 s.

The figures are printed side by side with the 10 MB case; targets: verify <= 64 MB, the others
within +8 MB of the 10 MB case, both latencies <= 5 ms at every size.

Then flash write amplification: a fresh process appends ``--wa-records`` records (16 producers,
batched mode, the same records as above) and reads ``write_bytes`` from ``/proc/self/io`` before
and after (the bytes the kernel sent to the block device for it, fsyncs included; ledger opened
and closed inside the window); the same again with commits not padded to a page boundary (the
layout before format version 3, docs/ledger-format.md 3.3); the baseline does the same with SQLite
in WAL mode, ``synchronous=FULL``, one row per transaction (table ``(seq, time, kind, body)``,
checkpointed at close). The figure is bytes written per byte of record payload (the msgpack record
bytes); target <= 1.5 and below SQLite's. Each run's appends/s and segment bytes are printed too.
``--sizes ""`` measures write amplification only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtime"))

RECORD_BYTES = 400  # the target size of one stored record (msgpack), ~110 bytes of it framing and fields
PRODUCERS = 16
_BODY_PAD = 248  # body "note" length that makes a stored record ~400 bytes


def body(p: int, i: int) -> dict:
    return {"producer": p, "i": i, "action": "send_email", "args_digest": "ab" * 32, "note": "n" * _BODY_PAD}


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 10**6, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def label(size: int) -> str:
    return f"{size / (1 << 30):.0f} GiB" if size >= 1 << 30 else f"{size / 1e6:.0f} MB"


# -- building ----------------------------------------------------------------------------------


def build_state(state: Path, target_bytes: int, *, log=print) -> int:
    """A state directory (identity + ledger of about ``target_bytes`` of segments); returns records."""
    from kestrel.identity import create_identity, open_signer
    from kestrel.ledger import Ledger

    state.mkdir(mode=0o700, parents=True)
    create_identity(state, name="scale", backend="file", machine_bound=True)
    signer = open_signer(state)
    ledger = Ledger.open(state / "ledger", signer=signer)
    stop = threading.Event()
    counts = [0] * PRODUCERS

    def produce(p: int) -> None:
        i = 0
        while not stop.is_set():
            ledger.append("action.result", body(p, i))
            i += 1
            counts[p] = i

    threads = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(PRODUCERS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    last = 0.0
    while True:
        time.sleep(0.05)
        used = sum(f.stat().st_size for f in (state / "ledger").glob("*.seg"))
        if used >= target_bytes:
            break
        if time.monotonic() - last > 15:
            last = time.monotonic()
            log(
                f"  building {label(target_bytes)}: {used / 1e6:8.1f} MB, {sum(counts)} records, "
                f"{time.monotonic() - t0:6.1f} s"
            )
    stop.set()
    for t in threads:
        t.join()
    size = ledger.size
    ledger.close()
    return size


# -- measuring in child processes --------------------------------------------------------------


def run_child(argv: list[str], *, stdout=subprocess.DEVNULL, env=None) -> tuple[int, float, float]:
    """(exit status, peak RSS MB, wall seconds) of a child process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err[-2000:]}")
    return proc.returncode, usage.ru_maxrss / 1024, wall


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = str(ROOT / "runtime")
    return env


_LATENCY = textwrap.dedent("""
    import json, random, statistics, sys, time
    from pathlib import Path
    from kestrel.identity import load_identity
    from kestrel.ledger import iter_records
    from kestrel.ledger.reader import prove
    state, size, what = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ledger = state / "ledger"
    key = load_identity(state).public_key
    rng = random.Random(1)
    times = []
    for i in range(51):
        t0 = time.perf_counter()
        if what == "records":
            got = [r.seq for r in iter_records(ledger, since_seq=size - 1)]
            assert got == [size - 1], got
        else:
            prove(ledger, key, rng.randrange(size - 1000))
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median_ms": statistics.median(times[1:]) * 1000, "max_ms": max(times[1:]) * 1000}))
""")


_OPEN = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from kestrel.identity import open_signer
    from kestrel.ledger import Ledger
    state = Path(sys.argv[1])
    signer = open_signer(state)
    t0 = time.perf_counter()
    led = Ledger.open(state / "ledger", signer=signer)
    took = time.perf_counter() - t0
    led.close()
    print(json.dumps({"open_s": took, "size": led.size}))
""")


def measure_open(state: Path, size: int) -> dict:
    """Seconds of ``Ledger.open`` for writing, in a fresh process: from the resume point the writer
    saved (docs/ledger-format.md 3.4), and without it (the whole log walked, as before)."""
    out = {}
    resume = state / "ledger" / "resume"
    for what in ("resumed", "full"):
        if what == "full" and resume.exists():
            resume.unlink()  # the open walks everything, then saves a new one
        p = subprocess.run(
            [sys.executable, "-c", _OPEN, str(state)], capture_output=True, env=child_env(), timeout=3600
        )
        if p.returncode:
            raise RuntimeError(p.stderr.decode()[-2000:])
        r = json.loads(p.stdout)
        assert r["size"] == size, r
        out[what] = r["open_s"]
    return out


def measure_latency(state: Path, size: int, what: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _LATENCY, str(state), str(size), what], capture_output=True, env=child_env(), timeout=600
    )
    if out.returncode:
        raise RuntimeError(out.stderr.decode()[-2000:])
    return json.loads(out.stdout)


def measure_rss_records(state: Path, size: int) -> float:
    code = (
        "import sys; from kestrel.ledger import iter_records; "
        f"assert [r.seq for r in iter_records(sys.argv[1], since_seq={size - 1})] == [{size - 1}]"
    )
    return run_child([sys.executable, "-c", code, str(state / "ledger")], env=child_env())[1]


def kestrel(*args: str) -> list[str]:
    return [sys.executable, "-m", "kestrel.cli", *args]


def measure_daemon(state: Path, workdir: Path, *, idle_s: float = 3.0) -> float:
    """Peak RSS (MB) of `kestrel run` opened on the state, after it answers status and idles."""
    from kestrel.sdk import Client

    cfg = workdir / "device.yaml"
    cfg.write_text("version: 1\n")
    err = open(workdir / "daemon.log", "wb")
    proc = subprocess.Popen(
        kestrel("run", "--config", str(cfg), "--state", str(state), "--log-level", "warning"),
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        deadline = time.monotonic() + 900
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited {proc.returncode}; see {workdir / 'daemon.log'}")
            try:
                with Client(state, timeout=2) as c:
                    c.status()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not answer status") from None
                time.sleep(0.5)
        time.sleep(idle_s)
    finally:
        proc.terminate()
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


def measure_size(state: Path, size: int, workdir: Path, *, daemon: bool, log=print) -> dict:
    r: dict = {"records": size, "bytes": sum(f.stat().st_size for f in (state / "ledger").glob("*.seg"))}
    _, r["verify_rss_mb"], r["verify_s"] = run_child(kestrel("audit", "verify", "--state", str(state)), env=child_env())
    log(f"  verify: {r['verify_rss_mb']:.1f} MB peak, {r['verify_s']:.1f} s")
    r["records_rss_mb"] = measure_rss_records(state, size)
    r["records_latency"] = measure_latency(state, size, "records")
    seq = size // 2
    prove_cmd = kestrel("audit", "prove", str(seq), "--binary", "--state", str(state))
    _, r["prove_rss_mb"], r["prove_s"] = run_child(prove_cmd, env=child_env())
    r["prove_latency"] = measure_latency(state, size, "prove")
    log(
        f"  records(since_seq=size-1): {r['records_rss_mb']:.1f} MB, {r['records_latency']['median_ms']:.2f} ms; "
        f"prove: {r['prove_rss_mb']:.1f} MB, {r['prove_latency']['median_ms']:.2f} ms"
    )
    r["open"] = measure_open(state, size)
    log(
        f"  Ledger.open for writing: {r['open']['resumed']:.2f} s from the resume point, "
        f"{r['open']['full']:.2f} s whole log"
    )
    if daemon:
        r["daemon_rss_mb"] = measure_daemon(state, workdir)
        log(f"  idle daemon: {r['daemon_rss_mb']:.1f} MB peak")
    return r


# -- write amplification -----------------------------------------------------------------------

_WA = textwrap.dedent("""
    import json, os, sqlite3, sys, threading, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[4])
    from ledger_scale import PRODUCERS, body
    from kestrel.identity.keys import SoftwareSigner
    from kestrel.ledger import Ledger

    what, d, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    PRODUCERS = int(sys.argv[5])

    def written():
        for line in open("/proc/self/io"):
            if line.startswith("write_bytes:"):
                return int(line.split()[1])

    per = n // PRODUCERS
    lock = threading.Lock()

    disk = 0
    t0 = time.perf_counter()
    if what.startswith("kestrel"):
        if what == "kestrel-unpadded":  # the baseline: commits not padded to a page boundary (as before)
            from kestrel.ledger import engine
            engine.PAD_SHARE = 1 << 40
        before = written()
        t0 = time.perf_counter()
        led = Ledger.open(d / "ledger", signer=SoftwareSigner.generate())
        def produce(p):
            for i in range(per):
                led.append("action.result", body(p, i))
        threads = [threading.Thread(target=produce, args=(p,)) for p in range(PRODUCERS)]
        [t.start() for t in threads]; [t.join() for t in threads]
        size = led.size
        led.close()
        elapsed = time.perf_counter() - t0
        os.sync()
        after = written()
        disk = sum(f.stat().st_size for f in (d / "ledger").glob("*.seg"))
    else:
        before = written()
        db = sqlite3.connect(d / "bench.db", check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, time REAL, kind TEXT, body BLOB)")
        seq = [0]
        def produce(p):
            import msgpack
            for i in range(per):
                with lock:
                    db.execute("BEGIN")
                    db.execute("INSERT INTO log VALUES (?, ?, ?, ?)", (seq[0], time.time(), "action.result",
                               msgpack.packb(body(p, i), use_bin_type=True)))
                    db.execute("COMMIT")
                    seq[0] += 1
        threads = [threading.Thread(target=produce, args=(p,)) for p in range(PRODUCERS)]
        [t.start() for t in threads]; [t.join() for t in threads]
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        elapsed = time.perf_counter() - t0
        os.sync()
        after = written()
        size = seq[0]
    print(json.dumps({"written": after - before, "records": size, "disk": disk, "appends_per_s": size / elapsed}))
""")


def record_payload(n: int, producers: int) -> int:
    """Bytes of the stored records (msgpack) for ``n`` records of the benchmark's shape."""
    from kestrel.ledger.record import ZERO_HASH, encode_record

    per = max(1, n // producers)
    sample = [
        len(encode_record(seq=n // 2, time=time.time(), kind="action.result", body=body(p, i), prev=ZERO_HASH))
        for p in range(producers)
        for i in range(0, per, max(1, per // 20))
    ]
    return int(statistics.mean(sample) * n)


def write_amplification(workdir: Path, n: int, producers: int = PRODUCERS) -> dict:
    """Bytes written per payload byte: kestrel (commits padded to a page boundary), the same without
    padding (the previous layout, same process tree and disk), and SQLite; and each one's appends/s."""
    out = {}
    for what in ("kestrel", "kestrel-unpadded", "sqlite"):
        d = workdir / f"wa-{what}"
        d.mkdir()
        p = subprocess.run(
            [sys.executable, "-c", _WA, what, str(d), str(n), str(ROOT / "tools" / "bench"), str(producers)],
            capture_output=True,
            env=child_env(),
            timeout=3600,
        )
        if p.returncode:
            raise RuntimeError(p.stderr.decode()[-2000:])
        out[what] = json.loads(p.stdout)
        shutil.rmtree(d)
    payload = record_payload(out["kestrel"]["records"], producers)
    return {
        "records": out["kestrel"]["records"],
        "payload_bytes": payload,
        "producers": producers,
        "kestrel_written": out["kestrel"]["written"],
        "sqlite_written": out["sqlite"]["written"],
        "kestrel_wa": out["kestrel"]["written"] / payload,
        "unpadded_wa": out["kestrel-unpadded"]["written"] / payload,
        "sqlite_wa": out["sqlite"]["written"] / payload,
        "kestrel_disk": out["kestrel"]["disk"] / payload,
        "unpadded_disk": out["kestrel-unpadded"]["disk"] / payload,
        "kestrel_appends_per_s": out["kestrel"]["appends_per_s"],
        "unpadded_appends_per_s": out["kestrel-unpadded"]["appends_per_s"],
        "sqlite_appends_per_s": out["sqlite"]["appends_per_s"],
    }


# -- report ------------------------------------------------------------------------------------


def _size_table(results: dict) -> list[str]:
    sizes = list(results)
    base = results[sizes[0]]
    lines: list[str] = []
    head = f"{'':34}" + "".join(f"{label(s):>12}" for s in sizes) + "   target"
    lines.append(head)

    def row(name: str, key, fmt: str, target: str) -> None:
        vals = []
        for s in sizes:
            v = key(results[s])
            vals.append(f"{v:{fmt}}" if v is not None else "-")
        lines.append(f"{name:34}" + "".join(f"{v:>12}" for v in vals) + f"   {target}")

    row("records", lambda r: r["records"], "d", "")
    row("verify peak RSS (MB)", lambda r: r["verify_rss_mb"], ".1f", "<= 64")
    row("verify time (s)", lambda r: r["verify_s"], ".1f", "")
    row(
        "records(since=size-1) RSS (MB)",
        lambda r: r["records_rss_mb"],
        ".1f",
        f"<= {base['records_rss_mb'] + 8:.1f} ({label(sizes[0])} + 8)",
    )
    row("records(since=size-1) median ms", lambda r: r["records_latency"]["median_ms"], ".2f", "<= 5")
    row("audit prove peak RSS (MB)", lambda r: r["prove_rss_mb"], ".1f", f"<= {base['prove_rss_mb'] + 8:.1f}")
    row("prove(SEQ) median ms", lambda r: r["prove_latency"]["median_ms"], ".2f", "<= 5")
    row("Ledger.open (writer) s, resumed", lambda r: r["open"]["resumed"], ".2f", "bounded (one segment)")
    row("Ledger.open (writer) s, whole log", lambda r: r["open"]["full"], ".2f", "(before: always)")
    if "daemon_rss_mb" in base:
        row("idle daemon peak RSS (MB)", lambda r: r.get("daemon_rss_mb"), ".1f", f"<= {base['daemon_rss_mb'] + 8:.1f}")
    verdicts = []
    for s in sizes:
        r = results[s]
        ok = (
            r["verify_rss_mb"] <= 64
            and r["records_latency"]["median_ms"] <= 5
            and r["prove_latency"]["median_ms"] <= 5
            and r["records_rss_mb"] <= base["records_rss_mb"] + 8
            and r["prove_rss_mb"] <= base["prove_rss_mb"] + 8
            and (r.get("daemon_rss_mb") is None or r["daemon_rss_mb"] <= base["daemon_rss_mb"] + 8)
        )
        verdicts.append(f"{label(s)}: {'PASS' if ok else 'FAIL'}")
    lines.append("targets: " + ", ".join(verdicts))
    return lines


def report(results: dict, was: list[dict]) -> list[str]:
    sizes = list(results)
    lines = [
        f"ledger scale benchmark ({PRODUCERS} producers, ~{RECORD_BYTES}-byte records, batched; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs)"
    ]
    if sizes:
        lines += _size_table(results)
    for wa in was:
        ratio = wa["kestrel_wa"] / wa["sqlite_wa"]
        lines.append(
            f"flash write amplification, {wa['producers']} producers, {wa['records']} records "
            f"({wa['payload_bytes'] / 1e6:.1f} MB of record payload): kestrel {wa['kestrel_wa']:.2f} bytes "
            f"written per payload byte, sqlite WAL FULL {wa['sqlite_wa']:.2f}: {ratio:.2f}x sqlite; "
            f"target <= 1.5 and below sqlite: {'PASS' if wa['kestrel_wa'] <= 1.5 and ratio < 1 else 'FAIL'}"
        )
        lines.append(
            f"  without padding (commits not ended on a page boundary, the previous layout): "
            f"{wa['unpadded_wa']:.2f} ({wa['kestrel_wa'] / wa['unpadded_wa']:.2f}x); segment bytes per payload "
            f"byte {wa['kestrel_disk']:.3f} padded vs {wa['unpadded_disk']:.3f}; appends/s "
            f"{wa['kestrel_appends_per_s']:.0f} padded vs {wa['unpadded_appends_per_s']:.0f} unpadded "
            f"({wa['kestrel_appends_per_s'] / wa['unpadded_appends_per_s']:.2f}x), "
            f"sqlite {wa['sqlite_appends_per_s']:.0f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10M,100M,1G", help="ledger sizes, comma separated (first = the baseline)")
    ap.add_argument("--size", help="one extra size to measure after --sizes (e.g. 2G)")
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one beside the checkout)")
    ap.add_argument("--keep", action="store_true", help="keep the built ledgers")
    ap.add_argument("--skip-daemon", action="store_true", help="do not measure the idle daemon")
    ap.add_argument("--wa-records", type=int, default=100_000, help="records for write amplification (0: skip)")
    ap.add_argument("--wa-producers", default="16,64", help="producer threads for write amplification (runs)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]  # none: write amplification only
    if args.size:
        sizes.append(parse_size(args.size))
    work = Path(tempfile.mkdtemp(prefix="ledger-scale-", dir=args.dir or ROOT.parent))
    results: dict = {}
    try:
        for size in sizes:
            state = work / f"state-{size}"
            print(f"{label(size)}:", flush=True)
            t0 = time.monotonic()
            n = build_state(state, size)
            print(f"  built {n} records in {time.monotonic() - t0:.0f} s", flush=True)
            results[size] = measure_size(state, n, work, daemon=not args.skip_daemon)
            if not args.keep:
                shutil.rmtree(state)
        was = [
            write_amplification(work, args.wa_records, int(p)) for p in args.wa_producers.split(",") if args.wa_records
        ]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    lines = report(results, was)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps({"sizes": {str(k): v for k, v in results.items()}, "write_amplification": was}, indent=2)
        )
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
