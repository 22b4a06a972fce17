"""`kestrel run` opens the agent's BLS key (sealed with the identity's passphrase) and takes part in
group decisions; without STATE/bls it never loads the BLS library."""

from __future__ import annotations

import pytest

from kestrel.sdk import Client
from tests.daemon.quorum_group import make_group
from tests.fixtures.wait import wait_until
from tests.identity.conftest import PASS

from .conftest import mqtt_config, start_daemon

pytest.importorskip("blspy")
pytestmark = pytest.mark.mosquitto


def test_kestrel_run_opens_the_bls_key_and_coordinates_quorums(tmp_path, mosquitto, monkeypatch):
    (member,) = make_group(tmp_path / "g", ("solo",))
    member.ledger.close()
    config = tmp_path / "device.yaml"
    config.write_text(mqtt_config(mosquitto.port))
    monkeypatch.setenv("KESTREL_PASSPHRASE", PASS.decode())
    proc = start_daemon(member.state, config)
    try:
        status = wait_until(
            lambda: (st := Client(member.state).status()).get("peers") is not None and st,
            timeout=30,
            what="the daemon's peer messenger",
        )
        assert status["quorum"] == {
            "proposed": 0,
            "met": 0,
            "not_met": 0,
            "votes_in": 0,
            "votes_refused": 0,
            "voted": 0,
        }
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0


def test_a_damaged_bls_key_is_a_clear_error_at_start(tmp_path, monkeypatch):
    import subprocess

    from .conftest import KESTREL

    (member,) = make_group(tmp_path / "g", ("solo",))
    member.ledger.close()
    key = member.state / "bls" / "key-1.enc"
    key.write_bytes(key.read_bytes()[:-1] + b"\x00")
    config = tmp_path / "device.yaml"
    config.write_text("version: 1\n")
    monkeypatch.setenv("KESTREL_PASSPHRASE", PASS.decode())
    proc = subprocess.run(
        [*KESTREL, "run", "--config", str(config), "--state", str(member.state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "BLS keystore" in proc.stderr and "damaged" in proc.stderr, proc.stderr
    assert key.exists()  # nothing stored is lost
