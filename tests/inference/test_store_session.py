"""The model store and the backends on the project's real sensor models (onnx int8 and .tflite)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from kestrel.inference import (
    InputError,
    ManifestError,
    ModelHashError,
    ModelNotFoundError,
    ModelRunner,
    ModelStore,
    RuntimeOptions,
    load_model_dir,
    open_session,
    run_model,
    threshold_exceeded,
)
from kestrel.inference.manifest import encode_manifest
from tests.models.conftest import copy_model

pytestmark = pytest.mark.models


def normal_window(n=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(16)[None, :]
    base = np.sin(0.1 * t + rng.uniform(0, 6, (n, 1)))
    x = np.stack([21 + 3 * base, 55 - 8 * base, 0.2 + 0 * base + 0.02 * np.abs(base), 2.0 + 0.3 * base], axis=2)
    return x.astype(np.float32)


def test_install_copies_privately_and_get_reverifies(sensor_build, state_dir):
    store = ModelStore(state_dir)
    model = store.install(sensor_build.path)
    assert store.names() == ["sensor-anomaly"]
    assert model.manifest.digest == sensor_build.manifest.digest
    assert stat.S_IMODE(os.stat(model.model_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_dir / "models").st_mode) == 0o700
    assert store.get("sensor-anomaly").path == model.path
    # flash rot after install: the store notices on the next open
    with open(model.model_path, "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelHashError, match="does not match its manifest"):
        store.get("sensor-anomaly")


def test_install_refuses_a_model_whose_hash_does_not_match(sensor_build, state_dir, tmp_path):
    bad = copy_model(sensor_build, tmp_path / "bad")
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    store = ModelStore(state_dir)
    with pytest.raises(ModelHashError):
        store.install(bad)
    assert store.names() == []
    assert not (state_dir / "models" / "sensor-anomaly" / "current").exists()


def test_missing_model_and_corrupt_pointer_are_clear_errors(sensor_build, state_dir):
    store = ModelStore(state_dir)
    with pytest.raises(ModelNotFoundError, match="not installed"):
        store.get("sensor-anomaly")
    store.install(sensor_build.path)
    (state_dir / "models" / "sensor-anomaly" / "current").write_text("../../etc\n")
    with pytest.raises(ManifestError, match="corrupt pointer"):
        store.get("sensor-anomaly")


def _edit_manifest(folder, **change):
    obj = json.loads((folder / "manifest.json").read_text())
    obj.update(change)
    (folder / "manifest.json").write_bytes(encode_manifest(obj))


def test_manifest_naming_a_missing_input_is_refused_at_open(sensor_build, tmp_path):
    folder = copy_model(sensor_build, tmp_path / "m")
    _edit_manifest(folder, inputs=[{"name": "temperature", "dtype": "float32", "shape": [None, 16, 4]}])
    with pytest.raises(ManifestError, match="manifest names input 'temperature'"):
        open_session(load_model_dir(folder))


def test_manifest_with_wrong_input_dtype_is_refused_at_open(sensor_build, tmp_path):
    folder = copy_model(sensor_build, tmp_path / "m")
    _edit_manifest(folder, inputs=[{"name": "readings", "dtype": "int64", "shape": [None, 16, 4]}])
    with pytest.raises(ManifestError, match="in the model but"):
        open_session(load_model_dir(folder))


@pytest.mark.parametrize("fixture", ["sensor_build", "sensor_lite_build"])
def test_wrong_shape_dtype_and_names_are_input_errors(fixture, request):
    sess = open_session(request.getfixturevalue(fixture))
    good = normal_window(2)
    assert sess.run({"readings": good})["score"].shape == (2,)
    for bad, words in [
        ({"readings": good.astype(np.float64)}, "dtype float64"),
        ({"readings": good[:, :8, :]}, "shape [2, 8, 4]"),
        ({"readings": good.reshape(2, 64)}, "shape [2, 64]"),
        ({"readings": good.tolist()}, "dtype list"),
        ({}, "do not match"),
        ({"readings": good, "extra": good}, "do not match"),
    ]:
        with pytest.raises(InputError) as info:
            sess.run(bad)
        assert words in str(info.value)


def test_onnx_and_litert_agree_and_flag_anomalies(sensor_build, sensor_lite_build):
    onnx_sess, lite_sess = open_session(sensor_build), open_session(sensor_lite_build)
    x = normal_window(8, seed=3)
    s_onnx, s_lite = onnx_sess.run({"readings": x})["score"], lite_sess.run({"readings": x})["score"]
    limit = sensor_build.manifest.postprocessing["threshold"]
    assert (s_onnx < limit).all() and (s_lite < sensor_lite_build.manifest.postprocessing["threshold"]).all()
    spiked = x.copy()
    spiked[:, 5, 2] += 3.0  # a vibration spike, tens of standard deviations
    assert (onnx_sess.run({"readings": spiked})["score"] > limit).all()
    assert (lite_sess.run({"readings": spiked})["score"] > sensor_lite_build.manifest.postprocessing["threshold"]).all()
    assert lite_sess.providers == ("litert",)


def test_run_model_and_threshold_condition_over_the_store(sensor_build, state_dir):
    ModelStore(state_dir).install(sensor_build.path)
    x = normal_window(1, seed=5)
    out = run_model("sensor-anomaly", {"readings": x}, state_dir=state_dir)
    assert out["score"].shape == (1,)
    runner = ModelRunner(state_dir)
    assert threshold_exceeded(runner, "sensor-anomaly", {"readings": x}) is False
    x[0, :, 0] += 30.0
    assert threshold_exceeded(runner, "sensor-anomaly", {"readings": x}) is True
    assert runner.session("sensor-anomaly") is runner.session("sensor-anomaly")  # cached


def test_runtime_options_from_board_profile(sensor_build):
    from kestrel.io.boards import load_profile

    profile = load_profile("rpi5")
    opts = RuntimeOptions.from_profile(profile)
    assert opts.intra_op_threads == profile.ort_intra_threads and opts.providers == ("cpu",)
    jetson = RuntimeOptions.from_profile(load_profile("jetson-orin-nano"), engine_cache_dir="/tmp/trt")
    assert jetson.providers == ("tensorrt", "cuda", "cpu") and str(jetson.engine_cache_dir) == "/tmp/trt"
    # asked-for accelerators that this onnxruntime lacks are skipped; CPU always remains
    sess = open_session(sensor_build, jetson)
    assert sess.active_providers()[-1] == "CPUExecutionProvider"
    so = sess.session_options
    assert so.enable_cpu_mem_arena is False and so.intra_op_num_threads == jetson.intra_op_threads
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # with CUDA: tests/inference/test_gpu.py
        with pytest.raises(Exception, match="was asked for"):
            open_session(sensor_build, RuntimeOptions(providers=("cuda",), require_accelerator=True))


@pytest.mark.parametrize(
    "section, key",
    [
        ({"providers": ["NPU"]}, "providers"),
        ({"intra_op_threads": "four"}, "intra_op_threads"),
        ({"spinning": "yes"}, "spinning"),
        ({"turbo": True}, "onnxruntime.turbo"),
    ],
)
def test_bad_profile_sections_are_config_errors(section, key):
    from kestrel.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        RuntimeOptions.from_profile(section, source="board.yaml")
    assert key in str(info.value) and "board.yaml" in str(info.value)


def test_runner_gives_tensorrt_an_engine_cache_in_the_state_dir(state_dir):
    runner = ModelRunner(state_dir, options=RuntimeOptions(providers=("tensorrt", "cuda")))
    assert runner.options.engine_cache_dir == state_dir / "models" / ".trt-cache"
    assert ModelRunner(state_dir).options.engine_cache_dir is None
