"""The CUDA execution-provider path of the Jetson profiles, on a real NVIDIA GPU (marker ``gpu``).

Runs wherever onnxruntime offers ``CUDAExecutionProvider`` (a Jetson with NVIDIA's wheel, a
workstation with onnxruntime-gpu) and skips elsewhere, saying why. The models are the project's
own builds (models/NAME/build/); each result is checked against the same model on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kestrel.inference import Embedder, RuntimeOptions, load_model_dir, open_session
from kestrel.io.boards import load_profile

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]
JETSON_PROFILES = ("jetson-orin-nano", "jetson-nano")


@pytest.fixture(scope="module")
def cuda() -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no CUDA provider ({ort.get_available_providers()})")


def _built(name: str):
    folder = REPO / "models" / name / "build"
    if not (folder / "manifest.json").exists():
        pytest.skip(f"models/{name} is not built (kestrel models build {name})")
    return load_model_dir(folder)


def _jetson_options(profile: str, tmp_path: Path) -> RuntimeOptions:
    return RuntimeOptions.from_profile(load_profile(profile), engine_cache_dir=tmp_path / "engines")


@pytest.mark.parametrize("profile", JETSON_PROFILES)
def test_jetson_profile_runs_the_sensor_model_on_cuda_like_the_cpu(cuda, profile, tmp_path):
    model = _built("sensor-anomaly")
    gpu = open_session(model, _jetson_options(profile, tmp_path))
    cpu = open_session(model, RuntimeOptions())
    assert "CUDAExecutionProvider" in gpu.active_providers(), gpu.active_providers()
    assert cpu.active_providers() == ["CPUExecutionProvider"]
    spec = model.manifest.inputs[0]
    rng = np.random.default_rng(7)
    shape = [d if isinstance(d, int) else 32 for d in spec.shape]
    x = rng.normal(size=shape).astype(spec.dtype)
    got, want = gpu.run({spec.name: x}), cpu.run({spec.name: x})
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-3)


def test_minilm_embeddings_on_cuda_match_the_cpu(cuda, tmp_path):
    model = _built("minilm")
    gpu = Embedder(model, options=_jetson_options("jetson-orin-nano", tmp_path))
    cpu = Embedder(model, options=RuntimeOptions())
    assert "CUDAExecutionProvider" in gpu.session.active_providers()
    texts = ["the porch light is on", "motion at the back door", "battery at 12 percent", "water leak in the cellar"]
    a, b = gpu.embed(texts), cpu.embed(texts)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.999, cos


def test_a_required_accelerator_that_is_missing_is_a_clear_error(cuda, tmp_path):
    """TensorRT first in the Jetson profile: without its libraries the session falls back to CUDA,
    unless the profile requires the accelerator, which is then refused with what to install."""
    import onnxruntime as ort

    from kestrel.errors import TransportError

    model = _built("sensor-anomaly")
    opts = RuntimeOptions(
        providers=("tensorrt", "cuda", "cpu"), require_accelerator=True, engine_cache_dir=tmp_path / "engines"
    )
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        assert open_session(model, opts).active_providers()[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    else:
        with pytest.raises(TransportError, match="tensorrt"):
            open_session(model, opts)
