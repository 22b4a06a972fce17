"""The control socket: SDK methods, the wire protocol's bad input, and SO_PEERCRED access control."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import socket
import stat
from pathlib import Path

import pytest

from kestrel.daemon.control import PeerCred, peer_allowed
from kestrel.sdk import ActionDenied, Client, RemoteError

from .conftest import GPIO_CONFIG, in_thread, running, until

POLICY = "actions: [gpio.write]\n"
NOBODY = 65534


def _nogroup() -> int:
    for name in ("nogroup", "nobody"):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return 65534


async def test_sdk_call_status_sim_and_follow(agent):
    async with running(agent, GPIO_CONFIG, policy=POLICY) as d:
        client = Client(agent.state)
        st = await in_thread(client.status)
        assert st["health"] == "ok" and st["agent"] == agent.signer.public_key.did
        assert st["sensors"]["button"]["type"] == "gpio"
        r = await in_thread(client.call, "gpio.write", actuator="lamp", value=1)
        assert r["value"] == 1 and isinstance(r["ledger_seq"], int)
        assert d.hardware.outputs["lamp"].value == 1
        pins = await in_thread(client.sim_list)
        assert {p["name"]: p["role"] for p in pins} == {"button": "input", "lamp": "output"}
        await in_thread(client.sim_drive, "GPIO17", 1)
        await until(lambda: d.values.get("button") == 1, what="driven input")

        def follow_two() -> list[dict]:
            gen = Client(agent.state).follow(since_seq=0, kind="action.result")
            try:
                return [next(gen), next(gen)]
            finally:
                gen.close()

        got = await in_thread(follow_two)
        assert [g["kind"] for g in got] == ["action.result", "action.result"]
        assert got[0]["seq"] < got[1]["seq"]
        client.close()


async def test_follow_streams_records_appended_later(agent):
    async with running(agent, GPIO_CONFIG, policy=POLICY) as d:
        start = agent.ledger.size
        reads: list[int] = []  # the follower's reads of the ledger, and how many records each found
        read = d._read_records

        def counted(since: int, kind: str | None) -> list:
            out = read(since, kind)
            reads.append(len(out))
            return out

        d._read_records = counted

        def follow_one() -> dict:
            gen = Client(agent.state).follow(since_seq=start, kind="note.test")
            try:
                return next(gen)
            finally:
                gen.close()

        fut = asyncio.ensure_future(in_thread(follow_one))
        await until(lambda: reads.count(0) >= 2, what="the follower read the ledger, found nothing, and waits")
        assert not fut.done()
        await agent.ledger.append_async("note.test", {"n": 7})
        rec = await asyncio.wait_for(fut, 5)
        assert rec["kind"] == "note.test" and rec["body"] == {"n": 7} and rec["seq"] >= start


async def test_denied_call_raises_action_denied(agent):
    async with running(agent, GPIO_CONFIG):
        with pytest.raises(ActionDenied) as err:
            await in_thread(Client(agent.state).call, "gpio.write", actuator="lamp", value=1)
        assert err.value.code == "denied" and "default-deny" in err.value.message


def _raw_exchange(path: str, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


async def test_garbage_requests_get_errors_and_the_connection_survives(agent):
    async with running(agent, GPIO_CONFIG) as d:
        path = str(d.control.path)
        replies = await in_thread(
            _raw_exchange,
            path,
            b'not json\n[1,2]\n{"id": 3, "method": "rm -rf"}\n'
            b'{"id": 4, "method": "sim.drive", "params": {"pin": 5}}\n'
            b'{"id": 5, "method": "status"}\n',
        )
        assert [r.get("error", {}).get("code") for r in replies[:4]] == ["bad_request"] * 4
        assert replies[2]["id"] == 3 and replies[3]["id"] == 4
        assert replies[4]["id"] == 5 and replies[4]["result"]["health"] == "ok"
        long_line = b'{"id": 1, "method": "status", "x": "' + b"a" * (300 * 1024) + b'"}\n'
        replies = await in_thread(_raw_exchange, path, long_line)
        assert replies[0]["error"]["code"] == "bad_request"
        st = await in_thread(Client(agent.state).status)
        assert st["health"] == "ok"


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000,  # deeper than the JSON decoder can follow
        b'{"id": 1, "method": "call", "params": {"action": "gpio.write", "args": {"v": '
        + b"[" * 40
        + b"]" * 40
        + b"}}}",
        b'{"id": 1, "method": "call", "params": {"action": "gpio.write", "args": {"value": NaN}}}',
        b'{"id": 1, "method": "call", "params": {"action": "gpio.write", "args": {"value": 1e999}}}',
        b'{"id": 1, "method": "call", "params": {"action": "gpio.write", "args": {"value": ' + b"9" * 5000 + b"}}}",
        b'{"id": 1, "id": 2, "method": "status"}',
        rb'{"id": 1, "method": "status", "params": {"a": "\ud800"}}',  # a JSON escape of a lone surrogate
        b"\xff\xfe",
    ],
)
async def test_hostile_lines_get_bad_request_and_the_daemon_keeps_answering(agent, line):
    async with running(agent, GPIO_CONFIG, policy=POLICY) as d:
        replies = await in_thread(_raw_exchange, str(d.control.path), line + b'\n{"id": 9, "method": "status"}\n')
        assert replies[0]["error"]["code"] == "bad_request", replies[0]
        assert replies[-1]["id"] == 9 and replies[-1]["result"]["health"] == "ok"
        assert d.hardware.outputs["lamp"].value == 0  # nothing was executed


async def test_socket_and_directory_modes(agent):
    async with running(agent, GPIO_CONFIG) as d:
        assert stat.S_IMODE(os.stat(d.control.path).st_mode) == 0o660
        assert stat.S_IMODE(os.stat(d.control.path.parent).st_mode) == 0o750
        assert stat.S_ISSOCK(os.stat(d.control.path).st_mode)


def _status_exchange(path: str) -> tuple[str, str]:
    try:
        rep = _raw_exchange(path, b'{"id": 1, "method": "status"}\n')[0]
        return ("ok", "") if "result" in rep else ("error", rep["error"]["code"])
    except OSError as exc:
        return ("oserror", type(exc).__name__)


def _sdk_exchange(path: str) -> tuple[str, str]:
    """What the CLI does: the SDK sends a request (a large one: it is still being written when the
    daemon refuses) and must report the refusal, not a broken pipe."""
    try:
        Client(socket_path=path, timeout=5).call("gpio.write", actuator="lamp", note="x" * 200_000)
        return ("ok", "")
    except RemoteError as exc:
        return ("error", f"{exc.code}:{exc.exit_code}")
    except Exception as exc:
        return ("other", f"{type(exc).__name__}: {exc}")


def _as_user(path: str, uid: int, gid: int, groups: list[int], exchange=_status_exchange) -> tuple[str, str]:
    """Fork, drop to (uid, gid, groups), run ``exchange(path)``; return ('ok'|'error'|'oserror', detail)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            os.write(w, json.dumps(exchange(path)).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return tuple(json.loads(data))  # type: ignore[return-value]


@pytest.fixture
def reachable(tmp_path):
    """Make a hard link to the socket in a world-traversable directory (pytest's tmp root is 0700).

    The link is the same inode: same mode, owner and group, same listening socket. It lives in a
    directory of its own beside pytest's (same file system), so no pytest directory is opened up:
    another pytest run resets its root to 0700 at any time.
    """
    import shutil
    import tempfile

    pub = Path(tempfile.mkdtemp(prefix="kestrel-sock-", dir=tmp_path.parents[len(tmp_path.parents) - 2]))
    os.chmod(pub, 0o755)

    def link(sock_path) -> str:
        os.link(sock_path, pub / "control.sock")
        return str(pub / "control.sock")

    try:
        yield link
    finally:
        shutil.rmtree(pub, ignore_errors=True)


async def test_unauthorized_uid_is_refused_logged_and_recorded(agent, caplog, reachable):
    if os.getuid() != 0:
        pytest.skip("needs root to switch uid in a forked child")
    async with running(agent, GPIO_CONFIG) as d:
        path = reachable(d.control.path)
        # the file system stops a stranger first ...
        assert await in_thread(_as_user, path, NOBODY, NOBODY, []) == ("oserror", "PermissionError")
        # ... and if the socket were opened up by mistake, SO_PEERCRED still does
        os.chmod(path, 0o666)
        assert await in_thread(_as_user, path, NOBODY, NOBODY, []) == ("error", "forbidden")
        await until(lambda: agent.kinds("control.refused"), what="refusal record")
        assert d.control.refused == 1
        for _ in range(5):  # the SDK (and so the CLI) reports the refusal, exit 77, never "Broken pipe"
            assert await in_thread(_as_user, path, NOBODY, NOBODY, [], _sdk_exchange) == ("error", "forbidden:77")
    rec = agent.kinds("control.refused")[0]
    assert rec["uid"] == NOBODY
    assert any("refused uid 65534" in r.getMessage() for r in caplog.records)


async def test_member_of_control_group_is_served(agent, reachable):
    if os.getuid() != 0:
        pytest.skip("needs root to switch uid in a forked child")
    gid = _nogroup()
    cfg = GPIO_CONFIG + f"    control:\n      group: '{gid}'\n"
    async with running(agent, cfg) as d:
        assert os.stat(d.control.path).st_gid == gid and os.stat(d.control.path.parent).st_gid == gid
        assert stat.S_IMODE(os.stat(agent.state).st_mode) & 0o010  # group may traverse the state dir
        path = reachable(d.control.path)
        assert await in_thread(_as_user, path, NOBODY, gid, []) == ("ok", "")
        assert await in_thread(_as_user, path, NOBODY, 100, [gid]) == ("ok", "")  # supplementary group
        assert await in_thread(_as_user, path, NOBODY, 100, []) == ("oserror", "PermissionError")
        assert d.control.refused == 0


def test_peer_allowed_rules():
    me = os.getuid()
    assert peer_allowed(PeerCred(1, 0, 0), owner_uid=1000, group_gid=None)
    assert peer_allowed(PeerCred(1, 1000, 1000), owner_uid=1000, group_gid=None)
    assert not peer_allowed(PeerCred(1, 1001, 1001), owner_uid=1000, group_gid=None)
    assert peer_allowed(PeerCred(1, 1001, 555), owner_uid=1000, group_gid=555)
    assert not peer_allowed(PeerCred(os.getpid(), 1001, 1001), owner_uid=me if me else 1000, group_gid=999999)


def test_client_without_daemon_says_how_to_start_it(tmp_path):
    from kestrel.errors import TransportError

    with pytest.raises(TransportError) as err:
        Client(tmp_path).status()
    assert "no Kestrel daemon" in err.value.message and "kestrel run" in (err.value.hint or "")


def test_remote_error_carries_code():
    e = RemoteError("denied", "nope", hint="h")
    assert e.code == "denied" and e.exit_code == 5 and "h" in str(e)
