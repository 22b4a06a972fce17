"""Real int8 MiniLM embeddings (built by models/minilm/recipe.py)."""

from __future__ import annotations

import numpy as np
import pytest

from kestrel.errors import DataError
from kestrel.inference import Embedder, ManifestError, open_session
from kestrel.inference.embedding import mean_pool

pytestmark = pytest.mark.models

PAIRS = [
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("Turn off the lights in the kitchen.", "Switch the kitchen lights off."),
    ("The train to Berlin is late.", "The Berlin train is delayed."),
    ("How do I reset my password?", "What are the steps to change my forgotten password?"),
    ("The pump is vibrating too much.", "Excessive vibration was detected on the pump."),
]
UNRELATED = [
    "Photosynthesis happens in the chloroplasts of plant cells.",
    "The stock market closed higher on Friday.",
    "She bought a new pair of running shoes.",
    "Bake the cake for forty minutes at 180 degrees.",
    "The museum is closed on Mondays.",
]


def test_paraphrases_land_closer_than_unrelated_sentences(embedder):
    left = embedder.embed([a for a, _ in PAIRS])
    right = embedder.embed([b for _, b in PAIRS])
    other = embedder.embed(UNRELATED)
    assert left.shape == (5, 384) and left.dtype == np.float32
    assert np.allclose(np.linalg.norm(left, axis=1), 1.0, atol=1e-4)
    para = (left * right).sum(1)
    for i in range(len(PAIRS)):
        unrelated = max(float(left[i] @ other[j]) for j in range(len(UNRELATED)))
        assert para[i] > unrelated + 0.15, (PAIRS[i], para[i], unrelated)
        others = [float(left[i] @ right[j]) for j in range(len(PAIRS)) if j != i]
        assert para[i] > max(others)


def test_int8_matches_fp32_on_the_recipe_sentences(minilm_build):
    """The build's quality gate, re-checked here: min cosine >= 0.99 against the fp32 export."""
    fp32_path = minilm_build.path / "work" / "model-fp32.onnx"
    if not fp32_path.exists():
        pytest.skip("fp32 export not kept in this build")
    import onnxruntime as ort

    sentences = [s for s in (minilm_build.path.parent / "sentences.txt").read_text().splitlines() if s]
    emb = Embedder(minilm_build)
    int8 = emb.embed(sentences)
    sess = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    rows = []
    for enc in emb._tok.encode_batch(sentences):
        ids = np.array([enc.ids], np.int64)
        mask = np.ones_like(ids)
        hidden = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        rows.append(mean_pool(hidden, mask)[0])
    fp32 = np.array(rows)
    assert float((int8 * fp32).sum(1).min()) >= 0.99


def test_a_texts_vector_does_not_depend_on_its_batch(embedder):
    texts = ["short", "a much longer sentence with many more tokens than the first one"]
    batch = embedder.embed(texts)
    assert float(batch[0] @ embedder.embed_one("short")) > 0.9999


def test_bad_texts_are_refused(embedder):
    with pytest.raises(TypeError):
        embedder.embed("not a list")
    with pytest.raises(DataError):
        embedder.embed([b"bytes"])
    assert embedder.embed([]).shape == (0, 384)


def test_embedder_needs_an_embedding_model(sensor_build):
    with pytest.raises(ManifestError, match="not 'embedding'"):
        Embedder(sensor_build)


def test_runtime_call_returns_the_same_as_bare_onnxruntime(minilm_build):
    import onnxruntime as ort

    sess = open_session(minilm_build)
    ids = np.array([[101, 7592, 2088, 102]], np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    bare = ort.InferenceSession(str(minilm_build.model_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(feed)["last_hidden_state"], bare.run(None, feed)[0], rtol=1e-5, atol=1e-5)
