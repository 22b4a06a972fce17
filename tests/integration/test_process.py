"""`kestrel run` as a process with MQTT and sync configured: owner commands go through it, its
ledger reaches a verifying collector, and `kestrel status` / `kestrel sync status` show the sync."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from kestrel.sdk import Client
from tests.fixtures.wait import wait_until

from .conftest import KESTREL, collecting, mqtt_config, start_daemon

pytestmark = pytest.mark.mosquitto


def _kestrel(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*KESTREL, *argv], capture_output=True, text=True, timeout=120, **kw)


def test_kestrel_run_with_sync_set_policy_trust_rotate_and_collector(tmp_path, mosquitto):
    state, cfg = tmp_path / "state", tmp_path / "device.yaml"
    cfg.write_text(mqtt_config(mosquitto.port))
    (tmp_path / "pass").write_text("owner passphrase\n")
    key = tmp_path / "owner" / "owner.key"
    with collecting(mosquitto.host, mosquitto.port, tmp_path / "collector.db", client_id="proc-collector") as store:
        _run_and_check(state, cfg, key, tmp_path, store)


def _run_and_check(state: Path, cfg: Path, key: Path, tmp_path: Path, store) -> None:
    from kestrel.identity import load_identity
    from kestrel.ledger.reader import iter_records

    proc = start_daemon(state, cfg, timeout=30)
    try:
        did = load_identity(state).did
        r = _kestrel("set-policy", str(tmp_path / "policy.yaml"), "--state", str(state))
        assert r.returncode != 0 and "Traceback" not in r.stderr  # no such file: clear error
        (tmp_path / "policy.yaml").write_text("actions: [gpio.write]\n")
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
        assert "through the running daemon" in r.stdout
        assert Client(state).call("gpio.write", actuator="lamp", value=1)["value"] == 1

        # rotate the trust root to a second owner (signed by the old and the new key) through the daemon
        key2 = tmp_path / "owner" / "second.key"
        r = _kestrel("owner", "init", "--key", str(key2), "--passphrase-file", str(tmp_path / "pass"))
        assert r.returncode == 0, r.stderr
        owner2 = r.stdout.strip()
        r = _kestrel(
            "trust",
            "rotate",
            "--owner",
            owner2,
            "--key",
            str(key),
            "--key",
            str(key2),
            "--passphrase-file",
            str(tmp_path / "pass"),
            "--state",
            str(state),
        )
        assert r.returncode == 0, r.stderr
        assert "version 1 -> 2" in r.stdout

        r = _kestrel("status", "--state", str(state))
        assert r.returncode == 0, r.stderr
        assert "sync     connected" in r.stdout
        wait_until(
            lambda: json.loads(_kestrel("sync", "status", "--state", str(state), "--json").stdout)["backlog"] == 0,
            timeout=30,
            what="sync caught up",
        )
        r = _kestrel("sync", "status", "--state", str(state))
        assert r.returncode == 0 and "sync: connected" in r.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    for d in (state / "data", state / "data" / "sync"):  # private, whoever created them first
        assert d.stat().st_mode & 0o777 == 0o700, d
    kinds = [rec.kind for rec in iter_records(state / "ledger")]
    for kind in ("ota.applied", "trust.rotated", "policy.decision", "action.result"):
        assert kind in kinds
    # everything the daemon had acknowledged before it stopped is in the collector, verified
    from kestrel.sync.state import OffsetStore

    acked = OffsetStore(state).load(did).acked
    assert acked >= kinds.index("trust.rotated") + 1
    wait_until(
        lambda: store.agent_state(did).size >= acked, timeout=30, what="collector verified the acknowledged records"
    )
    assert not store.agent_state(did).forked
