"""Benchmark: int8 MiniLM against fp32, and the runtime's inference call against bare onnxruntime.

Run (builds models/minilm first if needed, a minute or two)::

    .venv/bin/python tools/bench/models.py [--rounds 30] [--calls 400] [--threads 1] [--json]

1. Quality and speed of the shipped int8 model against fp32 on the 32 fixed sentences of
   ``models/minilm/sentences.txt``, one sentence per call (as the runtime embeds): min and mean
   cosine of the mean-pooled embeddings against the fp32 export (target min >= 0.99), and the
   median latency per call. The baseline is the *fused* fp32 graph (``model-fused-fp32.onnx``,
   the same onnxruntime transformer fusions as the int8 model, the same SessionOptions), so the
   ratio int8/fp32 (target <= 0.45) measures quantization alone; the plain optimum export is
   timed too, for reference. The three are called in turn on each sentence, the order rotating
   every round, so all share the same machine noise; ``--repeats`` repeats the whole measurement
   and reports the median of the per-repeat ratios beside their range.
2. Overhead of ``kestrel.inference`` (``OrtSession.run``: input checks against the manifest,
   output naming) against a bare ``InferenceSession.run`` on the same int8 model file, with the
   same InferenceSession and input, interleaved (target <= 3% overhead).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _interleaved(a, b, rounds: int) -> tuple[list[float], list[float]]:
    """Alternating A,B then B,A so neither always runs first (cache and scheduler bias)."""
    ta, tb = [], []
    for r in range(rounds):
        for fn, out in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return ta, tb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="passes over the 32 sentences per repeat (default 10)")
    ap.add_argument("--repeats", type=int, default=3, help="independent repeats of the latency measurement (default 3)")
    ap.add_argument("--calls", type=int, default=400, help="calls per contender for the overhead (default 400)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1, as on a Pi profile)")
    ap.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        metavar="ONNX",
        help="another int8 model file to time in the same loop (e.g. a previous build), repeatable",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort

    from kestrel.inference import Embedder, RuntimeOptions, open_session
    from kestrel.inference.build import build_model
    from kestrel.inference.embedding import mean_pool

    model = build_model("minilm", models_dir=ROOT / "models")
    fp32_path = model.path / "work" / "model-fused-fp32.onnx"
    plain_path = model.path / "work" / "model-fp32.onnx"
    options = RuntimeOptions(intra_op_threads=args.threads)
    int8 = open_session(model, options)
    emb = Embedder(model, session=int8)
    fused = ort.InferenceSession(str(fp32_path), sess_options=int8.session_options, providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(plain_path), sess_options=int8.session_options, providers=["CPUExecutionProvider"])
    sentences = [s for s in (ROOT / "models" / "minilm" / "sentences.txt").read_text().splitlines() if s]
    feeds = []
    for enc in emb._tok.encode_batch(sentences):
        ids = np.array([enc.ids], np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})

    # 1. int8 vs fp32: cosine and latency
    e8 = np.array([mean_pool(int8.run(f)["last_hidden_state"], f["attention_mask"])[0] for f in feeds])
    e32 = np.array([mean_pool(plain.run(None, f)[0], f["attention_mask"])[0] for f in feeds])
    cos = (e8 * e32).sum(1)
    e32n = e32 / np.linalg.norm(e32, axis=1, keepdims=True)
    contenders = {
        "int8": lambda f: int8.run(f),
        "fused": lambda f: fused.run(None, f),
        "plain": lambda f: plain.run(None, f),
    }
    also_cos = {}
    for path in args.also:
        other = ort.InferenceSession(str(path), sess_options=int8.session_options, providers=["CPUExecutionProvider"])
        eo = np.array([mean_pool(other.run(None, f)[0], f["attention_mask"])[0] for f in feeds])
        also_cos[str(path)] = float(((eo / np.linalg.norm(eo, axis=1, keepdims=True)) * e32n).sum(1).min())
        contenders[str(path)] = lambda f, s=other: s.run(None, f)
    for f in feeds[:4]:
        for fn in contenders.values():
            fn(f)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    ratios: list[float] = []
    ratios_plain: list[float] = []
    also_ratios: dict[str, list[float]] = {str(p): [] for p in args.also}
    order = list(contenders)
    for _ in range(args.repeats):
        rep: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(args.rounds):
            order = order[1:] + order[:1]  # rotate: nobody always runs first
            for f in feeds:
                for name in order:
                    t0 = time.perf_counter()
                    contenders[name](f)
                    rep[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in rep.items()}
        for k in also_ratios:
            also_ratios[k].append(med[k] / med["fused"])
        ratios.append(med["int8"] / med["fused"])
        ratios_plain.append(med["int8"] / med["plain"])
        for k in times:
            times[k] += rep[k]
    med8, med32, medplain = (statistics.median(times[k]) for k in ("int8", "fused", "plain"))

    # 2. runtime call vs bare InferenceSession.run, same model file and options
    bare = int8._sess  # the very InferenceSession the runtime wraps: only the wrapper differs
    feed = feeds[3]
    names = [o.name for o in bare.get_outputs()]
    for _ in range(20):
        int8.run(feed), bare.run(names, feed)
    tk, tb = _interleaved(lambda: int8.run(feed), lambda: bare.run(names, feed), args.calls)
    medk, medb = statistics.median(tk), statistics.median(tb)
    # control: the bare call against itself, same protocol; shows this machine's noise floor
    ta1, ta2 = _interleaved(lambda: bare.run(names, feed), lambda: bare.run(names, feed), args.calls)
    aa_pct = (statistics.median(ta1) / statistics.median(ta2) - 1) * 100
    # the runtime's own work per call, without the model: input checks and output naming
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        int8._check(feed)
        dict(zip(names, names, strict=False))
    own_us = (time.perf_counter() - t0) / n * 1e6

    result = {
        "machine": {"cpus": __import__("os").cpu_count(), "onnxruntime": ort.__version__, "threads": args.threads},
        "minilm": {
            "sentences": len(sentences),
            "calls_each": len(times["int8"]),
            "min_cosine": round(float(cos.min()), 5),
            "mean_cosine": round(float(cos.mean()), 5),
            "fp32_ms_p50": round(med32 * 1e3, 3),
            "fp32_plain_export_ms_p50": round(medplain * 1e3, 3),
            "int8_ms_p50": round(med8 * 1e3, 3),
            "int8_over_fp32": round(statistics.median(ratios), 3),
            "int8_over_fp32_repeats": [round(r, 3) for r in ratios],
            "int8_over_fp32_plain_export": round(statistics.median(ratios_plain), 3),
            "quantization": model.manifest.quantization.get("candidate"),
            "also": {
                k: {
                    "min_cosine": round(also_cos[k], 5),
                    "ms_p50": round(statistics.median(times[k]) * 1e3, 3),
                    "over_fp32": round(statistics.median(v), 3),
                }
                for k, v in also_ratios.items()
            },
            "int8_size_mb": round(model.model_path.stat().st_size / 1e6, 1),
            "fp32_size_mb": round(fp32_path.stat().st_size / 1e6, 1),
        },
        "overhead": {
            "calls_each": args.calls,
            "bare_ms_p50": round(medb * 1e3, 4),
            "kestrel_ms_p50": round(medk * 1e3, 4),
            "overhead_pct": round((medk / medb - 1) * 100, 2),
            "overhead_pct_best_of": round((min(tk) / min(tb) - 1) * 100, 2),
            "control_bare_vs_bare_pct": round(aa_pct, 2),
            "runtime_own_us_per_call": round(own_us, 2),
            "runtime_own_pct_of_bare": round(own_us / (medb * 1e6) * 100, 3),
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m, o = result["minilm"], result["overhead"]
    print(
        f"MiniLM on {len(sentences)} sentences, one per call, {args.threads} thread(s), onnxruntime {ort.__version__}"
    )
    print(f"  cosine int8 vs fp32     min {m['min_cosine']:.4f}  mean {m['mean_cosine']:.4f}   (target min >= 0.99)")
    print(f"  int8 model              {m['quantization']}")
    print(
        f"  latency p50             fp32 (fused) {m['fp32_ms_p50']:.3f} ms   int8 {m['int8_ms_p50']:.3f} ms   "
        f"fp32 plain export {m['fp32_plain_export_ms_p50']:.3f} ms"
    )
    print(
        f"  int8 / fp32 (fused)     {m['int8_over_fp32']:.3f}   (target <= 0.45; median of {args.repeats} repeats, "
        f"range {min(ratios):.3f}-{max(ratios):.3f})"
    )
    print(f"  int8 / fp32 plain       {m['int8_over_fp32_plain_export']:.3f}   (reference: the unfused export)")
    for k, v in m["also"].items():
        print(
            f"  also {k}: min cosine {v['min_cosine']:.4f}  p50 {v['ms_p50']:.3f} ms  "
            f"/ fp32 (fused) {v['over_fp32']:.3f}"
        )
    print(f"  size                    fp32 {m['fp32_size_mb']} MB   int8 {m['int8_size_mb']} MB")
    print(f"Inference call overhead ({args.calls} interleaved calls each, same InferenceSession and input)")
    print(f"  bare InferenceSession.run  {o['bare_ms_p50']:.4f} ms")
    print(f"  kestrel OrtSession.run     {o['kestrel_ms_p50']:.4f} ms")
    print(f"  overhead (medians)         {o['overhead_pct']:+.2f} %   (target <= 3%)")
    print(f"  overhead (best of each)    {o['overhead_pct_best_of']:+.2f} %")
    print(f"  control: bare vs bare      {o['control_bare_vs_bare_pct']:+.2f} %   (the noise floor of this machine)")
    print(
        f"  the runtime's own work     {o['runtime_own_us_per_call']:.2f} us per call "
        f"({o['runtime_own_pct_of_bare']:.3f} % of a bare call; checks and naming timed alone)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
