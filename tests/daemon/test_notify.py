"""sd_notify without dependencies, and watchdog pings only while healthy (fake NOTIFY_SOCKET)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from kestrel.daemon.notify import Notifier, run_watchdog, watchdog_interval

from .conftest import GPIO_CONFIG, running, until


@pytest.fixture
def listener(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.setblocking(False)
    yield s, path
    s.close()


def _drain(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


def test_notifier_path_abstract_and_absent(listener):
    s, path = listener
    n = Notifier(path)
    assert n.ready("hi") and n.watchdog() and n.stopping()
    msgs = _drain(s)
    assert msgs[0].split("\n")[:2] == ["READY=1", "STATUS=hi"] and msgs[1] == "WATCHDOG=1"
    assert msgs[2].startswith("STOPPING=1")
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.bind(f"\0kestrel-notify-{os.getpid()}")
    a.settimeout(2)
    assert Notifier(f"@kestrel-notify-{os.getpid()}").watchdog()
    assert a.recv(100) == b"WATCHDOG=1"
    a.close()
    assert not Notifier("").enabled and Notifier("").ready() is False
    assert not Notifier("relative/path").enabled
    assert Notifier(str(path) + ".gone").watchdog() is False  # logged, not raised


def test_watchdog_interval_from_environment():
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None  # meant for another pid
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None and watchdog_interval({}) is None


async def test_watchdog_pings_only_while_healthy(listener):
    """Counted in watchdog rounds (each asks ``healthy``), not in seconds."""
    s, path = listener
    state: dict[str, str | None] = {"why": None}
    rounds: list[str | None] = []

    def healthy(lag: float) -> str | None:
        rounds.append(state["why"])
        return state["why"]

    async def rounds_pass(n: int) -> None:
        target = len(rounds) + n
        await until(lambda: len(rounds) >= target, what=f"{n} watchdog rounds")

    task = asyncio.ensure_future(run_watchdog(Notifier(path), 0.02, healthy))
    await rounds_pass(5)
    healthy_pings = _drain(s).count("WATCHDOG=1")
    state["why"] = "ledger broken"
    await rounds_pass(1)  # a round that saw the failure (and said so in STATUS)
    assert any(m.startswith("STATUS=unhealthy: ledger broken") for m in _drain(s))
    await rounds_pass(5)
    sick = _drain(s)
    state["why"] = None
    await rounds_pass(2)
    again = _drain(s)
    task.cancel()
    assert healthy_pings >= 5 and rounds.count("ledger broken") >= 6
    assert sick == []  # five rounds while unhealthy: no ping, and no STATUS repeated
    assert "WATCHDOG=1" in again and "STATUS=running" in again


async def test_daemon_withholds_watchdog_when_its_ledger_fails(agent, listener, monkeypatch):
    from kestrel.daemon.runtime import Daemon

    s, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "40000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    rounds: list[str | None] = []  # the watchdog's health checks (it passes the loop lag; the test does not)
    check = Daemon.unhealthy

    def counted(self, *lag: float) -> str | None:
        why = check(self, *lag)
        if lag:
            rounds.append(why)
        return why

    monkeypatch.setattr(Daemon, "unhealthy", counted)
    async with running(agent, GPIO_CONFIG, policy="actions: [gpio.write]\n") as d:
        await until(lambda: "WATCHDOG=1" in _drain(s), what="first ping")
        assert d.unhealthy() is None
        agent.ledger.close()  # the flash went away under us
        d.factory.chip().drive(17, 1)
        await until(lambda: d.unhealthy() is not None, what="unhealthy")
        assert "policy decision failed" in d.unhealthy() or "ledger" in d.unhealthy()
        await until(lambda: rounds and rounds[-1] is not None, what="a watchdog round that saw it")
        _drain(s)
        sick_rounds = rounds.count(rounds[-1])
        await until(lambda: rounds.count(rounds[-1]) >= sick_rounds + 5, what="five more rounds")
        msgs = _drain(s)
        assert "WATCHDOG=1" not in msgs
        assert d.hardware.outputs["lamp"].value == 0  # fail closed: no decision, no action
        assert d.control_status()["health"].startswith("unhealthy")


def test_journal_priority_prefixes():
    import logging

    from kestrel.daemon.main import _JournalFormatter

    fmt = _JournalFormatter("<%(levelno)s>%(name)s: %(message)s")
    rec = logging.LogRecord("kestrel.daemon", logging.WARNING, __file__, 1, "disk %s", ("full",), None)
    assert fmt.format(rec) == "<4>kestrel.daemon: disk full"
    rec = logging.LogRecord("kestrel.daemon", logging.ERROR, __file__, 1, "<20> stays", (), None)
    assert fmt.format(rec) == "<3>kestrel.daemon: <20> stays"
