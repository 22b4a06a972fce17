"""While `kestrel run` owns the ledger, `kestrel deploy` (models and `local:` LLMs), `kestrel memory add`
and `kestrel ask` go through its control socket: their records land in the daemon's ledger, and
`ask` executes what the policy allows."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from kestrel.sdk import Client

from .conftest import KESTREL, start_daemon

pytestmark = pytest.mark.models

REPO = Path(__file__).resolve().parents[2]
CONFIG = """\
version: 1
actuators:
  fan: {type: gpio, pin: GPIO27}
"""
POLICY = "actions: [gpio.write]\n"
PEER = "did:key:z6MkoH9aSUQBEGWc42MooEf41tjppEtFi5ZQQMMk6LpgSjqj"


def _kestrel(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KESTREL_MODELS_DIR": str(REPO / "models")}
    return subprocess.run([*KESTREL, *argv], capture_output=True, text=True, timeout=300, env=env)


def test_deploy_memory_add_and_ask_while_the_daemon_runs(tmp_path, sensor_build, minilm_build, tinylm):
    from kestrel.identity import load_identity
    from kestrel.ledger.reader import iter_records

    state, cfg = tmp_path / "state", tmp_path / "device.yaml"
    cfg.write_text(CONFIG)
    (tmp_path / "pass").write_text("owner passphrase\n")
    (tmp_path / "policy.yaml").write_text(POLICY)
    key = tmp_path / "owner.key"
    proc = start_daemon(state, cfg, timeout=60)
    try:
        r = _kestrel("owner", "init", "--key", str(key), "--passphrase-file", str(tmp_path / "pass"))
        assert r.returncode == 0, r.stderr
        r = _kestrel("trust", "init", "--owner", r.stdout.strip(), "--state", str(state))
        assert r.returncode == 0, r.stderr
        r = _kestrel(
            "set-policy",
            str(tmp_path / "policy.yaml"),
            "--state",
            str(state),
            "--key",
            str(key),
            "--passphrase-file",
            str(tmp_path / "pass"),
        )
        assert r.returncode == 0, r.stderr
        for model in ("sensor-anomaly", "minilm"):
            r = _kestrel("deploy", "--model", model, "--state", str(state))
            assert r.returncode == 0, r.stderr
            assert f"deployed {model}" in r.stdout
        r = _kestrel("deploy", "--model", f"local:{tinylm}", "--state", str(state))
        assert r.returncode == 0, r.stderr
        r = _kestrel("memory", "add", "the fan is in the greenhouse", "--state", str(state))
        assert r.returncode == 0, r.stderr
        r = _kestrel(
            "ask",
            "turn on the fan",
            "--state",
            str(state),
            "--tools",
            "gpio.write,send_email",
            "--max-steps",
            "3",
            "--no-memory",
        )
        assert "Traceback" not in r.stderr
        assert 'step 1 [llm] {"action":"gpio.write","args":{"actuator":"fan","value":1}} -> ALLOW' in r.stdout
        assert "NOT executed" not in r.stderr
        assert Client(state).status()["actuators"]["fan"] == 1
        r = _kestrel("agent-connect", PEER, "--name", "neighbour", "--state", str(state))
        assert r.returncode == 0, r.stderr
        assert f"trusted {PEER}" in r.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    public_key = load_identity(state).public_key
    records = list(iter_records(state / "ledger"))
    deployed = [r.body["name"] for r in records if r.kind == "model.deployed"]
    assert deployed[:2] == ["sensor-anomaly", "minilm"] and len(deployed) == 3
    assert len([r for r in records if r.kind == "memory.added"]) == 1
    assert [r.body for r in records if r.kind == "peer.trusted"] == [{"peer": PEER, "name": "neighbour"}]
    assert [r.body for r in records if r.kind == "action.result" and r.body["source"].startswith("ask:")][0]["ok"]
    from kestrel.ledger.reader import verify_dir

    verify_dir(state / "ledger", public_key)
