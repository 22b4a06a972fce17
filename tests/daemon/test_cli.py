"""`kestrel call`, `kestrel status`, `kestrel sim` against a running daemon (the real CLI, as a process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kestrel.cli.daemon import parse_extra_args
from kestrel.errors import UsageError
from tests.fixtures.procs import free_port

from .conftest import GPIO_CONFIG, in_thread, running, until

KESTREL = [sys.executable, "-m", "kestrel.cli"]


def _kestrel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*KESTREL, *args], capture_output=True, text=True, timeout=60)


def test_extra_args_become_action_arguments():
    assert parse_extra_args(
        [
            "--to",
            "alice@example.com",
            "--subject",
            "Hello there",
            "--urgent",
            "--cc=a@b.c",
            "--cc",
            "d@e.f",
            "--dry-run",
        ]
    ) == {
        "to": "alice@example.com",
        "subject": "Hello there",
        "urgent": True,
        "cc": ["a@b.c", "d@e.f"],
        "dry_run": True,
    }
    with pytest.raises(UsageError):
        parse_extra_args(["stray"])


async def test_seed_send_email_command_works(agent):
    cfg = f"""
    version: 1
    smtp: {{host: 127.0.0.1, port: {free_port()}}}
    """
    async with running(agent, cfg, policy="actions: [send_email]\n") as d:
        r = await in_thread(
            _kestrel,
            "call",
            "--action",
            "send_email",
            "--to",
            "alice@example.com",
            "--subject",
            "Hello",
            "--state",
            str(agent.state),
        )
        assert r.returncode == 0, r.stderr
        assert "send_email: ok" in r.stdout and "queued:" in r.stdout
        assert len(d.outbox.pending()) == 1


async def test_call_denied_status_and_sim_from_the_shell(agent):
    async with running(agent, GPIO_CONFIG) as d:
        state = str(agent.state)
        r = await in_thread(
            _kestrel, "call", "--action", "gpio.write", "--actuator", "lamp", "--value", "1", "--state", state
        )
        assert r.returncode == 5 and "policy denied gpio.write" in r.stderr and "Traceback" not in r.stderr
        r = await in_thread(_kestrel, "sim", "GPIO17", "1", "--state", state)
        assert r.returncode == 0 and "drove GPIO17" in r.stdout
        await until(lambda: d.values.get("button") == 1, what="sim input")
        r = await in_thread(_kestrel, "sim", "--list", "--state", state)
        assert "GPIO17" in r.stdout and "button" in r.stdout and "level=1" in r.stdout
        r = await in_thread(_kestrel, "status", "--state", state)
        assert r.returncode == 0 and "health   ok" in r.stdout and "sensor   button" in r.stdout
        r = await in_thread(_kestrel, "status", "--json", "--state", state)
        assert json.loads(r.stdout)["actions"]["denied"] >= 1
        r = await in_thread(_kestrel, "sim", "GPIO99", "1", "--state", state)
        assert r.returncode != 0 and "GPIO99" in r.stderr and "Traceback" not in r.stderr


def test_clients_without_a_daemon_fail_cleanly(tmp_path):
    for args in (["status"], ["call", "--action", "x"], ["sim", "GPIO17", "1"]):
        r = _kestrel(*args, "--state", str(tmp_path))
        assert r.returncode == 3 and "no Kestrel daemon is listening" in r.stderr and "Traceback" not in r.stderr
    r = _kestrel("call", "--action", "x", "--args-json", "[1]", "--state", str(tmp_path))
    assert r.returncode == 64 and "JSON object" in r.stderr
