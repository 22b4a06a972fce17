"""Registering a local LLM (`deploy --model local:PATH`) and opening it again."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from kestrel.agent.llm import ModelLoadError, open_local_llm, register_local_llm, registered_llm
from kestrel.errors import DataError, KestrelError

pytestmark = pytest.mark.models


@pytest.fixture
def model_copy(tinylm, tmp_path):
    return shutil.copytree(tinylm, tmp_path / "tiny")


def test_register_records_and_reopens(state_dir, model_copy, env_with):
    env = env_with(None)
    llm = register_local_llm(state_dir, model_copy, ledger=env.ledger, name="tiny")
    deployed = env.records("model.deployed")
    record = state_dir / "agent" / "llm.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700
    obj = json.loads(record.read_text())
    assert obj["format"] == "kestrel.llm/1" and obj["path"] == str(model_copy.resolve())
    assert set(obj["files"]) >= {"model.onnx", "tokenizer.json", "config.json"}
    assert deployed[0]["name"] == "tiny" and deployed[0]["digest"] == llm.digest
    again = registered_llm(state_dir)
    assert again is not None and again.digest == llm.digest
    model = open_local_llm(state_dir, threads=1, verify=True)
    assert model.digest == llm.digest and model.name == "tiny"
    assert model.generate("goal: turn on the fan\n>").result.completion_tokens > 0


def test_register_by_recipe_name(state_dir, tinylm):
    llm = register_local_llm(state_dir, "tinylm")
    assert llm.path == tinylm.resolve() and llm.name == "tinylm"
    assert open_local_llm(state_dir).context_length == 1024


def test_corrupt_model_is_refused_at_registration(state_dir, model_copy):
    data = (model_copy / "model.onnx").read_bytes()
    (model_copy / "model.onnx").write_bytes(data[:1000])
    with pytest.raises(ModelLoadError):
        register_local_llm(state_dir, model_copy)
    assert registered_llm(state_dir) is None  # nothing recorded


def test_changed_model_is_refused_when_opened(state_dir, model_copy):
    register_local_llm(state_dir, model_copy)
    path = model_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old time, verify=True catches it
    with pytest.raises(ModelLoadError, match="do not match"):
        open_local_llm(state_dir, verify=True)
    path.write_bytes(bytes(data) + b"x")
    with pytest.raises(ModelLoadError, match="changed since it was registered"):
        open_local_llm(state_dir)


def test_missing_things(state_dir, tmp_path, model_copy):
    with pytest.raises(ModelLoadError, match="no model directory"):
        register_local_llm(state_dir, tmp_path / "nope")
    with pytest.raises(KestrelError, match="no local LLM is registered"):
        open_local_llm(state_dir)
    register_local_llm(state_dir, model_copy)
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        open_local_llm(state_dir)
    (state_dir / "agent" / "llm.json").write_text('{"format": "kestrel.llm/9"}')
    with pytest.raises(DataError, match="corrupt"):
        registered_llm(state_dir)
