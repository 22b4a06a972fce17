"""kestrel.sdk.Client against a real daemon running on its own thread (as an application would see it)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kestrel.daemon import protocol as P
from kestrel.errors import TransportError
from kestrel.sdk import ActionDenied, Client, RemoteError, socket_path_for
from tests.daemon.conftest import GPIO_CONFIG, Agent, install_policy, running


@pytest.fixture
def daemon(state_dir: Path) -> Iterator[Agent]:
    """The daemon on a background thread's event loop, gpio.write allowed."""
    from kestrel.identity.keys import SoftwareSigner
    from kestrel.ledger import Ledger

    signer = SoftwareSigner.generate()
    ledger = Ledger.open(state_dir / "ledger", signer=signer, max_batch_delay_ms=1.0)
    agent = Agent(state_dir, ledger, signer)
    install_policy(state_dir, ledger, "actions: [gpio.write]\n")
    started, stop = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    async def main() -> None:
        async with running(agent, GPIO_CONFIG):
            started.set()
            await asyncio.to_thread(stop.wait)

    def thread() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            started.set()

    t = threading.Thread(target=thread, daemon=True)
    t.start()
    assert started.wait(20) and not errors, errors
    try:
        yield agent
    finally:
        stop.set()
        t.join(20)
        ledger.close()
    assert not errors, errors


def test_call_status_follow(daemon):
    with Client(daemon.state, timeout=10) as k:
        assert k.call("gpio.write", actuator="lamp", value=1)["value"] == 1
        assert k.status()["actuators"] == {"lamp": 1}
        assert k.call("gpio.write", actuator="lamp", value="off")["value"] == 0
        with pytest.raises(RemoteError) as err:
            k.call("gpio.write", actuator="lamp", value=7)
        assert err.value.code == "denied" and "0 or 1" in err.value.message  # no canonical form: denied
        with pytest.raises(ActionDenied):
            k.call("send_email", to="a@b.c")
        k.sim_drive("GPIO17", 1)
        seen = []
        for rec in k.follow(since_seq=0):
            seen.append(rec["kind"])
            if seen.count("action.result") >= 3:
                break
        assert "policy.decision" in seen and "ota.applied" in seen
        assert k.status()["health"] == "ok"  # the main connection still works after follow


def test_reload_without_config_file_is_a_usage_error(daemon):
    with pytest.raises(RemoteError) as err:
        Client(daemon.state).reload()
    assert "without a config file" in err.value.message


def test_many_clients_at_once(daemon):
    results: list[int] = []

    def worker(v: int) -> None:
        with Client(daemon.state) as k:
            for _ in range(5):
                results.append(k.call("gpio.write", actuator="lamp", value=v)["value"])

    threads = [threading.Thread(target=worker, args=(i % 2,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 30 and sorted(set(results)) == [0, 1]


def test_client_reports_daemon_hanging_up_and_timeouts(tmp_path):
    path = tmp_path / "fake.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    gave_up = threading.Event()

    def serve(behaviour: str) -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        if behaviour == "garbage":
            conn.sendall(b"this is not json\n")
        elif behaviour == "silent":
            gave_up.wait(30)  # silent until the client has timed out
        conn.close()

    for behaviour, expected in (("hangup", TransportError), ("garbage", P.ProtocolError), ("silent", TransportError)):
        t = threading.Thread(target=serve, args=(behaviour,))
        t.start()
        with pytest.raises(expected):
            Client(socket_path=path, timeout=0.5).status()
        gave_up.set()
        t.join()
    srv.close()


def test_protocol_round_trip_and_validation():
    req = P.decode_request(b'{"id": 7, "method": "call", "params": {"action": "x", "args": {}}}\n')
    assert req == P.Request(7, "call", {"action": "x", "args": {}})
    for bad in (
        b"{",
        b"[]",
        b'{"method": "nope"}',
        b'{"id": true, "method": "status"}',
        b'{"method": "status", "params": []}',
        b"x" * (P.MAX_LINE + 1),
    ):
        with pytest.raises(P.ProtocolError):
            P.decode_request(bad)
    line = P.encode_event(1, {"raw": b"\x00\x01", "n": [1, (2, 3)]})
    assert json.loads(line) == {"id": 1, "event": {"raw": {"$hex": "0001"}, "n": [1, [2, 3]]}}
    assert P.decode_reply(P.encode_error(2, "denied", "no"))["error"]["code"] == "denied"
    with pytest.raises(P.ProtocolError):
        P.decode_reply(b'{"id": 1}')


def test_socket_path_for_state_dir(tmp_path):
    assert socket_path_for(tmp_path) == tmp_path / "run" / "control.sock"
