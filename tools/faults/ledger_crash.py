"""Crash harness for the ledger: SIGKILL an appending process at random moments.

A child process appends in a loop from several threads and prints
``<seq> <writer> <n>`` for each receipt as ``append`` returns. The parent kills
it with SIGKILL at a random moment, reopens the ledger (tail recovery),
verifies it and checks that every receipted append is there with its body.

    python tools/faults/ledger_crash.py --kills 200 [--dir DIR] [--mode batched|strict|both]

Exit status 0 if every round held every receipted append. Used by
tests/ledger/test_crash.py (bounded) and as a soak run (unbounded).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SEED = bytes(range(32))  # a fixed Ed25519 key: parent and child must agree


def _signer():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from kestrel.identity.keys import SoftwareSigner

    return SoftwareSigner(ed25519.Ed25519PrivateKey.from_private_bytes(SEED))


def child(ledger_dir: str, mode: str, writers: int) -> None:
    from kestrel.ledger import Ledger

    led = Ledger.open(ledger_dir, signer=_signer(), durability=mode, max_batch_delay_ms=2, max_segment_bytes=64 << 10)
    out = sys.stdout
    lock = threading.Lock()

    def loop(w: int) -> None:
        n = 0
        while True:
            r = led.append("fault.append", {"writer": w, "n": n, "pad": "p" * 150})
            with lock:
                out.write(f"{r.seq} {w} {n}\n")
                out.flush()
            n += 1

    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@dataclass
class Round:
    receipted: int
    size: int
    cut_bytes: int


def one_round(ledger_dir: Path, *, mode: str, rng: random.Random, writers: int = 4) -> Round:
    """Start a child, kill it at a random moment, check the ledger. Raises AssertionError on loss."""
    from kestrel.ledger import Ledger

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(ledger_dir), "--mode", mode, "--writers", str(writers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    # wait until it is appending, then kill it at a random moment
    deadline = time.monotonic() + 30
    while not lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is not None:
        raise AssertionError(f"child exited early: {proc.stderr.read().decode()[-2000:]}")
    time.sleep(rng.uniform(0.0, 0.25))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join()
    proc.stderr.close()
    receipted = {}
    for line in lines:
        if line.endswith(b"\n"):  # a partly printed line was not fully reported: ignore it
            seq, w, n = map(int, line.split())
            receipted[seq] = (w, n)
    torn_dir = ledger_dir / "torn"
    before = len(list(torn_dir.iterdir())) if torn_dir.exists() else 0
    with Ledger.open(ledger_dir, signer=_signer(), durability=mode) as led:
        verified = led.verify()
        assert verified.unsigned == 0, verified
        held = {
            r.seq: (r.body["writer"], r.body["n"])  # (ledger.recovered records say what a kill cut)
            for r in led.records(since_seq=min(receipted, default=0))
            if r.kind != "ledger.recovered"
        }
    lost = {s: v for s, v in receipted.items() if held.get(s) != v}
    assert not lost, f"receipted appends lost or changed after SIGKILL: {sorted(lost)[:10]}"
    cut = (len(list(torn_dir.iterdir())) if torn_dir.exists() else 0) - before
    return Round(len(receipted), verified.size, cut)


def run(kills: int, *, ledger_dir: Path, modes: list[str], seed: int | None = None, log=print) -> list[Round]:
    rng = random.Random(seed)
    rounds = []
    for i in range(kills):
        mode = modes[i % len(modes)]
        r = one_round(ledger_dir, mode=mode, rng=rng)
        rounds.append(r)
        log(
            f"kill {i + 1}/{kills} ({mode}): {r.receipted} receipts held, log size {r.size}, "
            f"torn tails cut {r.cut_bytes}"
        )
    return rounds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--dir", help="ledger directory (default: a fresh temporary one)")
    ap.add_argument("--mode", choices=("batched", "strict", "both"), default="both")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.mode, args.writers)
        return 0
    modes = ["batched", "strict"] if args.mode == "both" else [args.mode]
    ledger_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="kestrel-crash-")) / "ledger"
    run(args.kills, ledger_dir=ledger_dir, modes=modes, seed=args.seed)
    print(f"OK: {args.kills} SIGKILLs, every receipted append held; ledger at {ledger_dir}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtime"))
    sys.exit(main())
