"""The idle daemon's footprint: what `kestrel run` must not load until a feature is used (issue 4).

Figures (RSS, PSS, latency) are measured by tools/bench/runtime.py, not here; these tests pin the
import-level decisions behind them, on a real `kestrel run` process (CLI entry, sim board).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_process import provisioned  # noqa: F401  (fixture: identity + installed policy)

# Loaded on first use only: mail (outbox), HTTP (fetch_data), models, memory, agent/LLM, TPM,
# MQTT, serial, BLS group decisions, backups (Argon2 envelopes), interactive prompts, OTA bundle building, TLS
# (asyncio is imported without it: kestrel._internal.lean), and the system libcrypto behind
# hashlib (_hashlib: the daemon hashes with the interpreter's built-in SHA-2), and the web UI (only with a
# ui: section in the device config).
NOT_AT_IDLE = (
    "smtplib",
    "email",
    "email.message",
    "urllib.request",
    "http.client",
    "numpy",
    "onnxruntime",
    "paho",
    "hnswlib",
    "tpm2_pytss",
    "gpiod",
    "serial",
    "getpass",
    "hypothesis",
    "ssl",
    "_ssl",
    "_hashlib",
    "kestrel.identity.backup",
    "kestrel.ota.build",
    "kestrel.inference",
    "kestrel.memory",
    "kestrel.agent.llm",
    "kestrel.agent.planner",
    "kestrel.io.mqtt",
    "kestrel.io.serial",
    "kestrel.sync.sync",
    "blspy",
    "kestrel.identity.bls",
    "kestrel.identity.bls_store",
    "kestrel.policy.quorum",
    "kestrel.daemon.quorum",
    "kestrel.daemon.ui",
    "kestrel.daemon.ui.server",
    "kestrel.daemon.ui.http",
    "kestrel.daemon.ui.tokens",
)
UI_MODULES = ("kestrel.daemon.ui", "kestrel.daemon.ui.server", "kestrel.daemon.ui.http", "kestrel.daemon.ui.tokens")

PROBE = r"""
import json, os, signal, socket, sys, threading

out, state = sys.argv[1], sys.argv[2]
# Idle is an event: READY=1 once started, then three WATCHDOG=1 pings (healthy rounds of the loop).
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind("\0kestrel-footprint-%d" % os.getpid())
notify.settimeout(60)
os.environ.update(NOTIFY_SOCKET="@kestrel-footprint-%d" % os.getpid(), WATCHDOG_USEC="100000")

def snapshot_when_idle():
    ready, pings = False, 0
    try:
        while pings < 3:
            lines = notify.recv(4096).decode().split("\n")
            ready = ready or "READY=1" in lines
            pings += ready and "WATCHDOG=1" in lines
    except OSError:  # a timeout: no READY, or no healthy round, in 60 s
        sys.stderr.write(f"probe: READY={ready}, {pings} watchdog pings in 60 s\n")
        os._exit(3)
    with open(out, "w") as fh:
        json.dump({"modules": sorted(k for k, v in list(sys.modules.items()) if v is not None),  # None: hidden
                   "threads": [t.name for t in threading.enumerate()]}, fh)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=snapshot_when_idle, name="probe", daemon=True).start()
from kestrel.cli import main
sys.argv = ["kestrel", "run", "--state", state, "--log-level", "warning", *sys.argv[3:]]
sys.exit(main())
"""


def _idle_snapshot(tmp_path: Path, state: Path, *run_args: str) -> dict:
    out = tmp_path / "idle.json"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), str(state), *run_args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return json.loads(out.read_text())


@pytest.mark.parametrize("setup", ["first-run", "provisioned"])
def test_idle_daemon_loads_no_feature_it_does_not_use(tmp_path, request, setup):
    state = tmp_path / "st" if setup == "first-run" else request.getfixturevalue("provisioned")
    snap = _idle_snapshot(tmp_path, state)
    loaded = set(snap["modules"])
    assert "kestrel.daemon.runtime" in loaded and "kestrel.ledger.ledger" in loaded  # it did run
    assert sorted(m for m in NOT_AT_IDLE if m in loaded) == []
    # the executors stay small: ledger commit + signer, at most one policy and one I/O worker here
    workers = [t for t in snap["threads"] if t not in ("MainThread", "probe")]
    assert len(workers) <= 5, workers


def test_the_web_ui_is_loaded_only_when_the_config_turns_it_on(tmp_path, provisioned):  # noqa: F811
    embedded = Path(__file__).resolve().parents[2] / "runtime" / "kestrel" / "data" / "device.yaml"
    cfg = tmp_path / "with-ui.yaml"
    cfg.write_text(embedded.read_text() + "\nui: {listen: '127.0.0.1:0'}\n")
    loaded = set(_idle_snapshot(tmp_path, provisioned, "--config", str(cfg))["modules"])
    assert set(UI_MODULES) <= loaded  # it did start the UI
    assert sorted(m for m in NOT_AT_IDLE if m in loaded and m not in UI_MODULES) == []  # and nothing else


def test_lazy_package_attributes_still_resolve():
    code = (
        "import sys, kestrel.identity as i\n"
        "assert 'kestrel.identity.backup' not in sys.modules and 'getpass' not in sys.modules\n"
        "from kestrel.identity import backup_identity, restore_identity, KdfParams, Kdf, TPMSigner\n"
        "from kestrel.identity import *\n"
        "assert backup_identity.__module__ == 'kestrel.identity.backup'\n"
        "assert Kdf.__module__ == 'kestrel.identity.envelope'\n"
        "assert set(i.__all__) <= set(dir(i)) | set(i._LAZY)\n"
        "try:\n"
        "    i.no_such_thing\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_thing' in str(exc)\n"
        "else:\n"
        "    raise SystemExit('a missing attribute did not raise')\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "ok", r.stdout + r.stderr
