"""`kestrel models ...` and `kestrel deploy --model` end to end, with a real identity and ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.models.conftest import REPO, copy_model

pytestmark = pytest.mark.models

PASS = "models-test-passphrase"


@pytest.fixture
def agent_state(state_dir):
    from kestrel.agent import Agent

    Agent.create(state_dir, name="models-test", passphrase=PASS).close()
    return state_dir


def kestrel(*args, state=None):
    env = {**os.environ, "KESTREL_PASSPHRASE": PASS, "KESTREL_MODELS_DIR": str(REPO / "models")}
    extra = ["--state", str(state)] if state else []
    return subprocess.run(
        [sys.executable, "-m", "kestrel.cli", *args, *extra], capture_output=True, text=True, timeout=300, env=env
    )


def test_deploy_by_name_records_in_ledger_and_lists(sensor_build, sensor_lite_build, agent_state):
    out = kestrel("deploy", "--model", "sensor-anomaly", state=agent_state)
    assert out.returncode == 0, out.stderr
    assert "deployed sensor-anomaly 1.0.0 (onnx)" in out.stdout
    out = kestrel("deploy", "--model", str(sensor_lite_build.path), state=agent_state)
    assert out.returncode == 0, out.stderr
    listed = json.loads(kestrel("models", "list", "--json", state=agent_state).stdout)
    assert [(m["name"], m["runtime"]) for m in listed] == [
        ("sensor-anomaly", "onnx"),
        ("sensor-anomaly-lite", "tflite"),
    ]
    show = kestrel("models", "show", "sensor-anomaly", state=agent_state).stdout
    assert "readings: float32[?, 16, 4]" in show and sensor_build.manifest.files[0].sha256 in show
    from kestrel.agent import Agent

    with Agent.open(agent_state, passphrase=PASS) as agent:
        recs = [r.body for r in agent.ledger.records(kind="model.deployed")]
        agent.ledger.verify()
    assert [r["name"] for r in recs] == ["sensor-anomaly", "sensor-anomaly-lite"]
    assert recs[0]["manifest_sha256"] == sensor_build.manifest.digest
    assert recs[0]["files"] == {"model.onnx": sensor_build.manifest.files[0].sha256}


def test_deploy_refuses_a_tampered_model_and_installs_nothing(sensor_build, agent_state, tmp_path):
    bad = copy_model(sensor_build, tmp_path / "bad")
    with open(bad / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    out = kestrel("deploy", "--model", str(bad), state=agent_state)
    assert out.returncode == 2
    assert "does not match its manifest" in out.stderr and "Traceback" not in out.stderr
    assert not (agent_state / "models" / "sensor-anomaly").exists()


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["deploy", "--model", "no-such-model"], 64, "models build no-such-model"),
        (["deploy", "--model", "/nonexistent/dir"], 64, "no model folder"),
        (["models", "show", "nothing"], 2, "not installed"),
        (["models", "build", "nothing"], 64, "no recipe"),
    ],
)
def test_cli_errors_are_clear(agent_state, args, code, words):
    out = kestrel(*args, state=agent_state if args[0] != "models" or args[1] != "build" else None)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert words in out.stderr and "Traceback" not in out.stderr


def test_deploy_refuses_a_garbage_manifest(agent_state, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "manifest.json").write_bytes(b"\x00garbage{")
    out = kestrel("deploy", "--model", str(folder), state=agent_state)
    assert out.returncode == 2 and "not valid JSON" in out.stderr and "Traceback" not in out.stderr


def test_models_run_and_bad_inputs(sensor_build, agent_state):
    assert kestrel("deploy", "--model", "sensor-anomaly", state=agent_state).returncode == 0
    window = json.dumps([[[21, 55, 0.2, 2.0]] * 16])
    out = kestrel("models", "run", "sensor-anomaly", "--input", f"readings={window}", state=agent_state)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["score"]) == 1
    bad = kestrel("models", "run", "sensor-anomaly", "--input", "readings=[[1,2,3]]", state=agent_state)
    assert bad.returncode == 2 and "has shape [1, 3]" in bad.stderr and "Traceback" not in bad.stderr
    bad = kestrel("models", "run", "sensor-anomaly", "--input", "readings=oops", state=agent_state)
    assert bad.returncode == 64 and "not a JSON array" in bad.stderr


def test_build_reuses_an_up_to_date_build(sensor_build):
    out = kestrel("models", "build", "sensor-anomaly")
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stderr


def test_device_runtime_never_imports_host_tooling(minilm_state):
    code = textwrap.dedent(f"""
        import sys
        import kestrel.inference, kestrel.memory, kestrel.cli
        assert not {{"numpy", "onnxruntime", "hnswlib", "tokenizers"}} & set(sys.modules), "eager heavy import"
        from kestrel.inference import ModelStore, Embedder
        from kestrel.memory import VectorMemory, IndexParams
        emb = Embedder(ModelStore({str(minilm_state)!r}).get("minilm"))
        emb.embed(["hello"])
        bad = {{"torch", "transformers", "optimum", "onnx", "kestrel.inference.build"}} & set(sys.modules)
        print(sorted(bad))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
