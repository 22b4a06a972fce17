"""Torn-write and bit-rot harness for a ledger directory (a copy is damaged, never the original).

    python tools/faults/ledger_torn.py [--ledger DIR] [--tail-bytes 600] [--flips 500] [--seed N]

Without ``--ledger`` a fresh 50-record ledger is made with a fixed Ed25519 key.
With ``--ledger`` (e.g. a copy of a device's STATE/ledger) pass ``--agent DID``;
only the bit-flip half runs (reopening for writing needs the agent's key).

1. Torn writes: the last segment is cut at every offset of its last ``--tail-bytes``
   bytes; each cut must open (tail recovery), verify and keep every record that a checkpoint or a
   tail seal after it vouches for (the rest was never acknowledged: cut, saved, recorded).
2. Bit rot: ``--flips`` random single-bit flips anywhere in any segment; each must
   make verification fail (100% detection is the requirement).

Exit status 0 only if every case behaved.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtime"))

from kestrel.errors import DataError  # noqa: E402
from kestrel.identity.keys import PublicKey  # noqa: E402
from kestrel.ledger import Ledger, verify_dir  # noqa: E402
from kestrel.ledger.frame import CHECKPOINT, RECORD, TAIL_SEAL, Frame, iter_frames  # noqa: E402
from kestrel.ledger.store import SEGMENT_MAGIC  # noqa: E402

SEED = bytes(range(32))


def _signer():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from kestrel.identity.keys import SoftwareSigner

    return SoftwareSigner(ed25519.Ed25519PrivateKey.from_private_bytes(SEED))


def torn_writes(src: Path, work: Path, *, tail: int) -> int:
    signer = _signer()
    seg = sorted(src.glob("*.seg"))[-1]
    data = seg.read_bytes()
    size = len(data)
    frames = [f for f in iter_frames(data, len(SEGMENT_MAGIC)) if isinstance(f, Frame)]
    earlier = verify_dir(src, signer.public_key).size - sum(1 for f in frames if f.type == RECORD)
    bad = 0
    for cut in range(max(8, size - tail), size):
        d = work / f"cut{cut}"
        shutil.copytree(src, d)
        with open(d / seg.name, "r+b") as fh:
            fh.truncate(cut)
        try:
            with Ledger.open(d, signer=signer) as led:
                v = led.verify()
            # records stay if a checkpoint or the writer's tail seal after them survived the cut (format
            # version 2): the others were never acknowledged, or are not the writer's, and are cut too
            safe = max((f.end for f in frames if f.type in (CHECKPOINT, TAIL_SEAL) and f.end <= cut), default=8)
            whole = earlier + sum(1 for f in frames if f.type == RECORD and f.end <= safe)
            whole += cut > safe  # the ledger.recovered record
            if v.unsigned or v.size != whole:
                bad += 1
                print(f"cut at {cut}: unexpected state {v}")
        except DataError as exc:
            bad += 1
            print(f"cut at {cut}: refused to open: {exc}")
        shutil.rmtree(d)
    print(f"torn writes: {min(tail, size - 8)} cuts, {bad} misbehaved")
    return bad


def bit_flips(src: Path, work: Path, key: PublicKey, *, flips: int, rng: random.Random) -> int:
    segs = sorted(src.glob("*.seg"))
    missed = 0
    for _ in range(flips):
        d = work / "flip"
        shutil.copytree(src, d)
        seg = d / rng.choice(segs).name
        data = bytearray(seg.read_bytes())
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        seg.write_bytes(bytes(data))
        try:
            verify_dir(d, key)
            missed += 1
            print(f"undetected flip: {seg.name} bit {bit}")
        except DataError:
            pass
        shutil.rmtree(d)
    print(f"bit flips: {flips} flips, {flips - missed} detected ({100 * (flips - missed) / max(flips, 1):.1f}%)")
    return missed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ledger", help="a ledger directory to damage copies of")
    ap.add_argument("--agent", help="its AgentID (did:key), with --ledger")
    ap.add_argument("--tail-bytes", type=int, default=600)
    ap.add_argument("--flips", type=int, default=500)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kestrel-torn-"))
    try:
        if args.ledger:
            if not args.agent:
                ap.error("--agent DID is required with --ledger")
            src, key, failures = Path(args.ledger), PublicKey.from_did(args.agent), 0
        else:
            src, key = work / "src", _signer().public_key
            with Ledger.open(src, signer=_signer(), durability="strict", max_segment_bytes=8 << 10) as led:
                for i in range(50):
                    led.append("fault.sample", {"i": i, "pad": "p" * rng.randrange(200)})
            failures = torn_writes(src, work, tail=args.tail_bytes)
        failures += bit_flips(src, work, key, flips=args.flips, rng=rng)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("OK" if not failures else f"FAILED: {failures} cases")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
