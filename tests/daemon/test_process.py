"""`kestrel run` as a real process: exit codes, SIGTERM, SIGHUP, and the systemd notify protocol."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kestrel.errors import KestrelError
from kestrel.sdk import Client
from tests.fixtures.wait import wait_until

from .conftest import GPIO_CONFIG, install_policy

KESTREL = [sys.executable, "-m", "kestrel.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(extra)
    return env


def _wait_socket(state: Path, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited early ({proc.returncode}): {proc.stderr.read()}")
        return bool(Client(state, timeout=2).status())

    wait_until(answers, timeout=timeout, ignoring=(OSError, KestrelError), what="the daemon's control socket")


def _status_until(state: Path, cond, *, what: str, timeout: float = 10.0) -> dict:
    """The daemon's status once ``cond(status)`` holds."""

    def status() -> dict | None:
        st = Client(state).status()
        return st if cond(st) else None

    return wait_until(status, timeout=timeout, what=what)


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


@pytest.fixture
def provisioned(state_dir: Path) -> Path:
    """A state dir with a machine-bound identity and a policy allowing gpio.write."""
    from kestrel.identity import create_identity, open_signer
    from kestrel.ledger import Ledger

    create_identity(state_dir, name="test", backend="file", machine_bound=True)
    ledger = Ledger.open(state_dir / "ledger", signer=open_signer(state_dir))
    try:
        install_policy(state_dir, ledger, "actions: [gpio.write]\n")
    finally:
        ledger.close()
    return state_dir


def test_malformed_config_names_file_line_key_and_exits_nonzero(tmp_path, state_dir):
    cfg = tmp_path / "device.yaml"
    cfg.write_text("version: 1\nsensors:\n  door:\n    type: gpio\n    pin: GPIO17\n    bias: sideways\n")
    r = subprocess.run(
        [*KESTREL, "run", "--config", str(cfg), "--state", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert r.returncode == 2
    assert f"{cfg}:6:11" in r.stderr and "sensors.door.bias" in r.stderr and "sideways" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (state_dir / "identity").exists()  # nothing was created for a config that does not parse


def test_first_run_creates_identity_and_sigterm_flushes_and_exits_zero(tmp_path):
    state = tmp_path / "fresh-state"
    proc = subprocess.Popen([*KESTREL, "run", "--state", str(state)], stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_socket(state, proc)
        st = Client(state).status()
        assert st["board"] == "sim" and "embedded" in st["config"]
        denied = st["actions"]["denied"]
        Client(state).sim_drive("GPIO17", 1)
        _status_until(state, lambda s: s["actions"]["denied"] > denied, what="the driven edge's decision")
    finally:
        rc, err = _stop(proc)
    assert rc == 0, err
    assert "created a new identity did:key:" in err and "machine-bound" in err
    assert "Traceback" not in err
    from kestrel.identity import open_signer
    from kestrel.ledger import Ledger

    with Ledger.open(state / "ledger", signer=open_signer(state)) as ledger:
        records = list(ledger.records())
        kinds = [r.kind for r in records]
        assert kinds[0] == "agent.created"  # as `kestrel init-agent` records it
        assert records[0].body["did"] == ledger.public_key.did and records[0].body["backend"] == "file"
        assert kinds.count("policy.decision") >= 2  # startup sync + the driven edge, both denied (no policy)
        assert ledger.verify().size == len(kinds)
    assert not (state / "run" / "control.sock").exists()


def _notify_listener(abstract: bool, tmp_path: Path) -> tuple[socket.socket, str]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"kestrel-test-{os.getpid()}-{time.monotonic_ns()}"
        s.bind("\0" + name)
        addr = "@" + name
    else:
        addr = str(tmp_path / "notify.sock")
        s.bind(addr)
    s.settimeout(0.2)
    return s, addr


def _collect(sock: socket.socket, until: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if any(until in m for m in got):
            break
    return got


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_systemd_ready_watchdog_stopping(provisioned, tmp_path, abstract):
    sock, addr = _notify_listener(abstract, tmp_path)
    cfg = tmp_path / "device.yaml"
    cfg.write_text(textwrap.dedent(GPIO_CONFIG))
    proc = subprocess.Popen(
        [*KESTREL, "run", "--config", str(cfg), "--board", "sim", "--state", str(provisioned)],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(NOTIFY_SOCKET=addr, WATCHDOG_USEC="200000"),
    )
    try:
        msgs = _collect(sock, "READY=1", 20)
        assert any("READY=1" in m and f"MAINPID={proc.pid}" in m for m in msgs), msgs
        pings = [m for m in _collect(sock, "never", 1.5) if m == "WATCHDOG=1"]
        assert 3 <= len(pings) <= 20  # every 100 ms (half of WATCHDOG_USEC)
        r = Client(provisioned).call("gpio.write", actuator="lamp", value=1)
        assert r["value"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        msgs = _collect(sock, "STOPPING=1", 10)
        rc, err = _stop(proc)
        sock.close()
    assert any("STOPPING=1" in m for m in msgs)
    assert rc == 0, err


def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(provisioned, tmp_path):
    cfg = tmp_path / "device.yaml"
    cfg.write_text(textwrap.dedent(GPIO_CONFIG))
    proc = subprocess.Popen(
        [*KESTREL, "run", "--config", str(cfg), "--state", str(provisioned)],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _wait_socket(provisioned, proc)
        assert set(Client(provisioned).status()["sensors"]) >= {"button"}
        cfg.write_text(textwrap.dedent(GPIO_CONFIG).replace("button:", "knob:").replace("button ==", "knob =="))
        proc.send_signal(signal.SIGHUP)
        _status_until(provisioned, lambda s: "knob" in s["sensors"], what="the reload")
        cfg.write_text("version: 1\nsensors:\n  x: {type: gpio}\n")  # no pin
        proc.send_signal(signal.SIGHUP)
        st = _status_until(provisioned, lambda s: s["last_reload_error"], what="the bad reload reported")
        assert "sensors.x.pin" in st["last_reload_error"]
        assert "knob" in st["sensors"] and st["health"] == "ok"
        Client(provisioned).sim_drive("GPIO17", 1)
        _status_until(provisioned, lambda s: s["actuators"]["lamp"] == 1, what="the old config still working")
    finally:
        rc, err = _stop(proc)
    assert rc == 0
    assert "reload refused, keeping the running config" in err and "sensors.x.pin" in err


def test_second_daemon_on_the_same_state_is_refused(provisioned):
    first = subprocess.Popen(
        [*KESTREL, "run", "--state", str(provisioned)], stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        _wait_socket(provisioned, first)
        r = subprocess.run(
            [*KESTREL, "run", "--state", str(provisioned)], capture_output=True, text=True, timeout=60, env=_env()
        )
        assert r.returncode == 3 and f"(pid {first.pid}) is running" in r.stderr and "Traceback" not in r.stderr
        assert Client(provisioned).status()["pid"] == first.pid
    finally:
        rc, _ = _stop(first)
    assert rc == 0
    from kestrel.identity import open_signer
    from kestrel.ledger import Ledger

    with Ledger.open(provisioned / "ledger", signer=open_signer(provisioned)) as ledger:
        assert ledger.verify().size == ledger.size  # one writer: no fork, no torn records


def test_unknown_board_is_a_clean_error(state_dir, tmp_path):
    cfg = tmp_path / "device.yaml"
    cfg.write_text("version: 1\n")
    r = subprocess.run(
        [*KESTREL, "run", "--config", str(cfg), "--board", "toaster", "--state", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert r.returncode != 0 and "toaster" in r.stderr and "Traceback" not in r.stderr


LEAN_SCRIPT = r"""
import os, signal, socket, sys, threading
from kestrel.daemon.main import run_daemon

notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind("\0kestrel-lean-%d" % os.getpid())
notify.settimeout(60)
os.environ["NOTIFY_SOCKET"] = "@kestrel-lean-%d" % os.getpid()

def stop_when_up():  # SIGTERM once the daemon says READY=1 (its signal handlers are set by then)
    try:
        while "READY=1" not in notify.recv(4096).decode().split("\n"):
            pass
    except OSError:  # a timeout
        sys.stderr.write("no READY=1 from the daemon in 60 s\n")
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=stop_when_up, daemon=True).start()
rc = run_daemon(config_path=None, board=None, state_dir=sys.argv[1], log_level="warning")
heavy = sorted(m for m in ("numpy", "onnxruntime", "paho", "hnswlib", "gpiod", "tpm2_pytss", "serial", "smtplib",
                           "urllib.request") if m in sys.modules)
print("RC", rc, "HEAVY", ",".join(heavy) or "-")
"""


def test_daemon_stays_lean_without_models_mqtt_or_serial(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", LEAN_SCRIPT, str(tmp_path / "st")],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert "RC 0 HEAVY -" in r.stdout, r.stdout + r.stderr


def test_pin_the_board_lacks_names_the_config_key(state_dir, tmp_path):
    cfg = tmp_path / "device.yaml"
    cfg.write_text("version: 1\nboard: sim\nactuators:\n  lamp: {type: gpio, pin: GPIO99}\n")
    r = subprocess.run(
        [*KESTREL, "run", "--config", str(cfg), "--state", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert r.returncode == 2, r.stderr
    assert f"{cfg}, key 'actuators.lamp.pin'" in r.stderr and "GPIO99" in r.stderr and "Traceback" not in r.stderr
    assert not (state_dir / "run" / "control.sock").exists()
