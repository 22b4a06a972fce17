"""Benchmark: identity signing and unlocking costs, TPM (swtpm) beside software keys.

Run::

    .venv/bin/python tools/bench/tpm_sign.py [--seconds 2] [--threads 4] [--json]

Contenders, in one process on one machine:

* ``software-p256`` (baseline) and ``software-ed25519``: SoftwareSigner, one thread;
* ``tpm-p256``: TPMSigner against a swtpm started here (skipped if swtpm is missing),
  one thread, then ``--threads`` threads sharing one signer (the lock serialises them);
* open costs: ``open_signer`` for a TPM identity (connect, CreatePrimary, Load), a
  passphrase keystore (Argon2id 64 MiB, t=3, p=4) and a machine-bound keystore.

Prints signatures/s, p50/p99 latency, and the ratio to the software P-256 baseline.
A real discrete TPM is one to two orders of magnitude slower than swtpm; the ledger
signs once per group commit, so its throughput does not follow these numbers.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtime"))

from kestrel.identity import Algorithm, SoftwareSigner, create_identity, open_signer  # noqa: E402


def _sign_loop(sign: Callable[[bytes], bytes], seconds: float, threads: int) -> dict[str, float]:
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        mine: list[float] = []
        n = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            sign(f"checkpoint {i} {n}".encode())
            mine.append(time.perf_counter() - t0)
            n += 1
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "per_s": len(lat) / elapsed,
        "p50_ms": 1e3 * lat[len(lat) // 2],
        "p99_ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "n": len(lat),
    }


def _timed(fn: Callable[[], Any], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        close = getattr(result, "close", None)
        if close:
            close()
    return 1e3 * statistics.median(times)


def _free_port_pair() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def _start_swtpm(state: Path) -> tuple[subprocess.Popen | None, str]:
    port = _free_port_pair()
    try:
        proc = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--server",
                f"type=tcp,port={port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
                "--tpmstate",
                f"dir={state}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return None, ""
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.02)
    return proc, f"swtpm:host=127.0.0.1,port={port}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for alg in (Algorithm.P256, Algorithm.ED25519):
            results[f"software-{alg.value}"] = _sign_loop(SoftwareSigner.generate(alg).sign, args.seconds, 1)
        create_identity(d / "pass", name="bench", passphrase=b"bench passphrase")
        create_identity(d / "machine", name="bench", machine_bound=True)
        results["open-passphrase-ms"] = _timed(lambda: open_signer(d / "pass", passphrase=b"bench passphrase"))
        results["open-machine-bound-ms"] = _timed(lambda: open_signer(d / "machine"))
        (d / "tpm-nv").mkdir()
        proc, tcti = _start_swtpm(d / "tpm-nv")
        if proc is not None:
            try:
                create_identity(d / "tpm", name="bench", backend="tpm", algorithm=Algorithm.P256, tcti=tcti)
                results["open-tpm-ms"] = _timed(lambda: open_signer(d / "tpm"))
                with open_signer(d / "tpm") as signer:
                    results["tpm-p256"] = _sign_loop(signer.sign, args.seconds, 1)
                    results[f"tpm-p256-{args.threads}threads"] = _sign_loop(signer.sign, args.seconds, args.threads)
            finally:
                proc.terminate()
                proc.wait()
    base = results["software-p256"]["per_s"]
    for r in results.values():
        if isinstance(r, dict):
            r["ratio_to_software_p256"] = r["per_s"] / base
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'contender':<24}{'sigs/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x baseline':>12}")
    for name, r in results.items():
        if isinstance(r, dict):
            print(
                f"{name:<24}{r['per_s']:>10.0f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}"
                f"{r['ratio_to_software_p256']:>12.3f}"
            )
    for name, v in results.items():
        if not isinstance(v, dict):
            print(f"{name:<24}{v:>10.1f}")
    if "tpm-p256" not in results:
        print("swtpm not found: TPM rows skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
