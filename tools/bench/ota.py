"""Benchmark: verify and activate a 1 MiB bundle, beside a bare signature check on the same bytes.

Run::

    .venv/bin/python tools/bench/ota.py [--size-mib 1] [--repeat 15] [--dir DIR] [--json]

Same bytes for every contender (a bundle holding a small policy and a
``--size-mib`` model of random bytes, signed by one owner key):

* baseline: one Ed25519 ``verify`` of an owner signature over the whole bundle;
* ``verify_bundle``: framing, owner-threshold signature over the manifest, strict
  manifest parse, targets/expiry/counter, SHA-256 of every content;
* ``apply_bundle``: the above plus staging into the inactive slot with fsyncs,
  the health check (re-hash from disk, policy load), the atomic pointer switch,
  the counter and one durable ledger record (``ota.applied``).

Prints medians and p90s in milliseconds and the ratios to the baseline. Target:
apply (verify + activate) <= 200 ms for 1 MiB. ``--dir`` picks the disk
(default: a temporary directory beside this checkout, i.e. the same disk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtime"))

from kestrel.identity.keys import SoftwareSigner  # noqa: E402
from kestrel.ledger import Ledger  # noqa: E402
from kestrel.ota import apply_bundle, verify_bundle  # noqa: E402
from kestrel.ota.build import make_bundle  # noqa: E402
from kestrel.ota.bundle import sign_bundle  # noqa: E402
from kestrel.ota.store import OtaDir  # noqa: E402

TARGET_MS = 200.0


def timed(fn, repeat: int) -> list[float]:
    out = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="kestrel-bench-ota-", dir=args.dir or ROOT.parent))
    try:
        state = base / "state"
        state.mkdir(mode=0o700)
        owner, agent = SoftwareSigner.generate(), SoftwareSigner.generate()
        OtaDir(state).init_root([owner.public_key.did], 1)
        root = OtaDir(state).trust_root()
        model = os.urandom(int(args.size_mib * (1 << 20)))
        now = time.time()

        def bundle(counter: int) -> bytes:
            data = make_bundle(
                policy=b"actions: [send_email, schedule_event]\n",
                models=(("model.onnx", model),),
                counter=counter,
                now=now,
                expires=now + 3600,
                agents=[agent.public_key.did],
            )
            return sign_bundle(data, owner)

        bundles = [bundle(i + 1) for i in range(args.repeat)]
        size = len(bundles[0])
        bare_sig = owner.sign(bundles[0])
        baseline = timed(lambda i: owner.public_key.verify(bare_sig, bundles[0]), args.repeat)
        verify = timed(
            lambda i: verify_bundle(bundles[0], root=root, now=now, agent_id=agent.public_key.did), args.repeat
        )
        with Ledger.open(state / "ledger", signer=agent) as ledger:
            apply = timed(lambda i: apply_bundle(state, bundles[i], ledger=ledger, now=now), args.repeat)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def p90(xs: list[float]) -> float:
        return xs[min(len(xs) - 1, int(0.9 * len(xs)))]

    res = {
        "bundle_bytes": size,
        "repeat": args.repeat,
        "baseline_signature_check_ms": statistics.median(baseline),
        "verify_bundle_ms": statistics.median(verify),
        "verify_bundle_p90_ms": p90(verify),
        "apply_bundle_ms": statistics.median(apply),
        "apply_bundle_p90_ms": p90(apply),
    }
    res["verify_vs_baseline"] = res["verify_bundle_ms"] / res["baseline_signature_check_ms"]
    res["apply_vs_baseline"] = res["apply_bundle_ms"] / res["baseline_signature_check_ms"]
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"bundle: {size} bytes (policy + {args.size_mib:g} MiB model), {args.repeat} runs each, medians")
    print(f"baseline Ed25519 verify of the whole bundle: {res['baseline_signature_check_ms']:8.2f} ms")
    print(
        f"verify_bundle:                               {res['verify_bundle_ms']:8.2f} ms "
        f"(p90 {res['verify_bundle_p90_ms']:.2f})  {res['verify_vs_baseline']:.2f}x baseline"
    )
    print(
        f"apply_bundle (verify + stage + switch):      {res['apply_bundle_ms']:8.2f} ms "
        f"(p90 {res['apply_bundle_p90_ms']:.2f})  {res['apply_vs_baseline']:.2f}x baseline"
    )
    print(f"target apply <= {TARGET_MS:.0f} ms: {'MET' if res['apply_bundle_ms'] <= TARGET_MS else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
