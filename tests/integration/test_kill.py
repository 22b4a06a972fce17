"""SIGKILL of `kestrel run` while it syncs: after restarts the collector holds every record once, verified."""

from __future__ import annotations

import os
import signal

import pytest

from kestrel.sdk import Client
from tests.fixtures.wait import wait_until

from .conftest import collecting, mqtt_config, start_daemon

pytestmark = pytest.mark.mosquitto


def _kill_cycles(tmp_path, mosquitto, kills: int, calls: int) -> None:
    from kestrel.identity import create_identity, open_signer
    from kestrel.ledger import Ledger
    from kestrel.ledger.reader import iter_records
    from tests.daemon.conftest import install_policy

    state, cfg = tmp_path / "state", tmp_path / "device.yaml"
    state.mkdir(mode=0o700)
    did = create_identity(state, name="k", backend="file", machine_bound=True).did
    with Ledger.open(state / "ledger", signer=open_signer(state)) as ledger:
        install_policy(state, ledger, "actions: [gpio.write]\n")
    cfg.write_text(mqtt_config(mosquitto.port))
    with collecting(mosquitto.host, mosquitto.port, tmp_path / "c.db", client_id="kill-collector") as store:
        for round_ in range(kills + 1):
            proc = start_daemon(state, cfg, "--log-level", "error", timeout=30)
            with Client(state) as client:
                for i in range(calls):
                    client.call("gpio.write", actuator="lamp", value=i % 2)
                if round_ == kills:  # the last run: stop cleanly once the collector verified all of it
                    # (acknowledged by the broker is not enough: records verify once a signed
                    # checkpoint that covers them has arrived as well)
                    wait_until(
                        lambda: store.agent_state(did).size >= client.status()["ledger"]["size"],
                        timeout=30,
                        what=lambda: f"the collector caught up: {client.status()['sync']}",
                    )
            if round_ < kills:
                os.kill(proc.pid, signal.SIGKILL)  # mid-sync: records and offsets as the crash left them
                proc.wait(30)
            else:
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=30)
                assert proc.returncode == 0 and "Traceback" not in err, err
        from kestrel.sync.state import OffsetStore

        size = sum(1 for _ in iter_records(state / "ledger"))
        acked = OffsetStore(state).load(did).acked
        assert size >= (kills + 1) * calls * 2 and acked >= (kills + 1) * calls * 2
        wait_until(
            lambda: store.agent_state(did).size >= acked,
            timeout=30,
            what=lambda: f"the collector: it has {store.agent_state(did).size} of {acked}",
        )
        got = store.agent_state(did)
        assert acked <= got.size <= size and not got.forked  # every acknowledged record, verified, once


def test_two_sigkills_during_sync(tmp_path, mosquitto):
    _kill_cycles(tmp_path, mosquitto, kills=2, calls=20)


@pytest.mark.slow
def test_five_sigkills_during_sync(tmp_path, mosquitto):
    _kill_cycles(tmp_path, mosquitto, kills=5, calls=200)
