"""The MiniLM recipe: activation smoothing (models/minilm/smoothing.py) and its recorded choice."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tests.models.conftest import REPO

pytestmark = pytest.mark.models

FOLDER = REPO / "models" / "minilm"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"test_minilm_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoothing():
    pytest.importorskip("onnx")
    return _module("smoothing")


@pytest.fixture(scope="module")
def fused(minilm_build):
    """The fused fp32 graph the recipe quantizes, and feeds for 6 calibration sentences."""
    import onnx
    from tokenizers import Tokenizer

    path = minilm_build.path / "work" / "model-fused-fp32.onnx"
    if not path.exists():
        pytest.skip("the fused fp32 graph is not kept in this build")
    tok = Tokenizer.from_file(str(minilm_build.path / "tokenizer.json"))
    tok.no_padding()
    lines = (FOLDER / "calibration.txt").read_text().splitlines()[:6]
    feeds = []
    for enc in tok.encode_batch(lines):
        ids = np.array([enc.ids], np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    return onnx.load(str(path)), feeds


def _run(model, feed):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["last_hidden_state"], feed)[0]


def _spread(amax):
    """How far the largest channel stands above a typical one (what per-tensor scales suffer from)."""
    return float(np.max(amax) / np.median(amax))


def test_smoothing_keeps_fp32_outputs_and_flattens_the_outliers(smoothing, fused):
    model, feeds = fused
    amax = smoothing.activation_ranges(model, feeds)
    smoothed = smoothing.smooth(model, amax, alpha=0.75, kinds=smoothing.KINDS)
    ops = [n.op_type for n in smoothed.graph.node]
    # attention outputs are folded into the value weights; the 18 other targets get one Mul each
    assert ops.count("Mul") == [n.op_type for n in model.graph.node].count("Mul") + 18
    for feed in feeds[:2]:
        np.testing.assert_allclose(_run(smoothed, feed), _run(model, feed), rtol=1e-3, atol=2e-3)
    after = smoothing.activation_ranges(smoothed, feeds)
    attn_out = [n for n in model.graph.node if smoothing.node_kind(n) == "attn_out"]
    assert len(attn_out) == 6
    for node in attn_out:  # same tensor name (folded upstream), flatter channels
        x = node.input[0]
        assert _spread(after[x]) < 0.6 * _spread(amax[x]), node.name  # measured: 0.38-0.45
    # the original graph is untouched (smooth returns a copy)
    assert [n.op_type for n in model.graph.node].count("Mul") == ops.count("Mul") - 18


def test_smoothing_only_the_attention_outputs_adds_no_node(smoothing, fused):
    model, feeds = fused
    amax = smoothing.activation_ranges(model, feeds[:2], kinds=["attn_out"])
    smoothed = smoothing.smooth(model, amax, alpha=0.75, kinds=["attn_out"])
    assert [n.op_type for n in smoothed.graph.node] == [n.op_type for n in model.graph.node]
    np.testing.assert_allclose(_run(smoothed, feeds[0]), _run(model, feeds[0]), rtol=1e-3, atol=2e-3)


def test_smoothing_refuses_bad_options(smoothing, fused):
    model, feeds = fused
    amax = smoothing.activation_ranges(model, feeds[:1], kinds=["attn_out"])
    for alpha in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="alpha"):
            smoothing.smooth(model, amax, alpha=alpha, kinds=["attn_out"])
    with pytest.raises(ValueError, match="unknown smoothing kinds"):
        smoothing.smooth(model, amax, alpha=0.5, kinds=["softmax"])
    with pytest.raises(ValueError, match="no smoothing target named"):
        smoothing.smooth(model, amax, alpha=0.5, nodes=["/encoder/layer.9/output/dense/MatMul"])
    with pytest.raises(ValueError, match="no activation range"):
        smoothing.smooth(model, amax, alpha=0.5, kinds=["ffn_up"])  # ranges measured for attn_out only
    with pytest.raises(ValueError, match="no calibration feeds"):
        smoothing.activation_ranges(model, [])


def test_manifest_records_the_first_candidate_that_clears_the_gate(minilm_build):
    """The recipe's fixed rule: candidates in order, the first with min cosine >= 0.99 ships."""
    recipe = _module("recipe")
    facts = minilm_build.manifest.build
    quant = minilm_build.manifest.quantization
    tried = facts["candidates"]
    labels = [c[0] for c in recipe.CANDIDATES]
    assert [t["candidate"] for t in tried] == labels[: len(tried)]
    assert all("skipped" in t or t["min_cosine"] < recipe.COSINE_GATE for t in tried[:-1])
    assert tried[-1]["min_cosine"] >= recipe.COSINE_GATE == 0.99
    assert quant["candidate"] == tried[-1]["candidate"]
    assert facts["min_cosine_vs_fp32"] == tried[-1]["min_cosine"]
    _, smooth_opts, opts = recipe.CANDIDATES[labels.index(quant["candidate"])]
    assert quant["per_channel"] is opts["per_channel"]
    if smooth_opts is not None:
        assert quant["smoothing"]["alpha"] == smooth_opts["alpha"]
        assert quant["smoothing"]["kinds"] == smooth_opts["kinds"]
        assert quant["smoothing"]["calibration"] == "calibration.txt"
    assert facts["latency_baseline"].startswith("model-fused-fp32.onnx")
    assert 0 < facts["latency_ratio_vs_fp32"] < 2
    raw = json.loads((minilm_build.path / "manifest.json").read_text())
    assert raw["quantization"] == dict(quant)


def test_calibration_and_evaluation_sentences_are_disjoint():
    calibration = [s for s in (FOLDER / "calibration.txt").read_text().splitlines() if s.strip()]
    evaluation = [s for s in (FOLDER / "sentences.txt").read_text().splitlines() if s.strip()]
    assert len(calibration) == len(set(calibration)) == 32
    assert len(evaluation) == 32
    assert not set(calibration) & set(evaluation)
