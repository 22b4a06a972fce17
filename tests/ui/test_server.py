"""The web UI's HTTP surface against an in-process daemon: authorisation, sessions, CSRF, limits, records.

Requests are written by hand on a TCP connection, so malformed and oversized ones can be sent too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from kestrel.daemon.ui.tokens import TokenFile
from tests.daemon.conftest import GPIO_CONFIG, install_policy, running, until

CONFIG = GPIO_CONFIG + '    ui: {listen: "127.0.0.1:0"}\n'


@contextlib.asynccontextmanager
async def ui_daemon(agent: Any, policy: str = "actions: [gpio.write]\n") -> AsyncIterator[tuple[Any, str]]:
    install_policy(agent.state, agent.ledger, policy)
    token = TokenFile(agent.state).issue(ttl_s=3600, now=time.time(), label="test").token
    async with running(agent, CONFIG) as d:
        yield d, token


async def http(
    d: Any,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers (lower-case names), body)."""
    host, port = d.ui.address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if raw is None:
            hdrs = {"Host": f"{host}:{port}", "Connection": "close", **(headers or {})}
            if body or method == "POST":
                hdrs["Content-Length"] = str(len(body))
            raw = (
                f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
            ).encode() + body
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    out: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        out[k.strip().lower()] = v.strip()
    return status, out, payload


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(d: Any, token: str) -> tuple[str, str]:
    """Sign in; returns (cookie header value, the session's CSRF token)."""
    host, port = d.ui.address
    status, headers, _ = await http(
        d,
        "POST",
        "/login",
        body=urlencode({"token": token}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{host}:{port}"},
    )
    assert status == 303 and headers["location"] == "/", (status, headers)
    cookie = headers["set-cookie"]
    attrs = [a.strip() for a in cookie.split(";")]
    assert "HttpOnly" in attrs and "SameSite=Strict" in attrs and "Path=/" in attrs
    value = attrs[0]
    status, _, page = await http(d, "GET", "/request", headers={"Cookie": value})
    assert status == 200
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
    return value, csrf


def kinds(agent: Any, kind: str) -> list[dict[str, Any]]:
    return agent.kinds(kind)


async def test_no_token_no_page(agent):
    async with ui_daemon(agent) as (d, _):
        for path in (
            "/",
            "/actions",
            "/policy",
            "/ledger",
            "/request",
            "/static/app.js",
            "/static/style.css",
            "/api/status",
            "/api/events",
            "/nope",
        ):
            status, headers, body = await http(d, "GET", path)
            assert status == 401, path
            assert headers["www-authenticate"].startswith("Bearer")
            assert b"data-sensor" not in body and b"did:key" not in body
        status, _, body = await http(d, "GET", "/")
        assert b'action="/login"' in body  # the sign-in form is all there is
        assert kinds(agent, "ui.refused") == []  # no token is not a wrong token


async def test_bearer_token_and_refusals_recorded(agent):
    async with ui_daemon(agent) as (d, token):
        status, headers, body = await http(d, "GET", "/api/status", headers=bearer(token))
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body)["health"] == "ok"
        for h in ("content-security-policy", "x-frame-options", "x-content-type-options", "cache-control"):
            assert h in headers
        expired = TokenFile(agent.state).issue(ttl_s=10, now=time.time() - 60).token
        wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for bad, _reason in ((wrong, "unknown"), (expired, "expired"), ("hunter2", "malformed")):
            status, _, body = await http(d, "GET", "/", headers=bearer(bad))
            assert status == 401 and b"data-sensor" not in body
            status, _, _ = await http(d, "GET", "/", headers={"Authorization": f"Basic {bad}"})
            assert status == 401
        await until(lambda: len(kinds(agent, "ui.refused")) >= 3, what="the refusals in the ledger")
        got = {(r["reason"], r["token"]) for r in kinds(agent, "ui.refused")}
        assert ("unknown", token[4:12]) in got and ("expired", expired[4:12]) in got and ("malformed", None) in got
        # the secret never reaches the ledger
        assert all(token[13:] not in json.dumps(r) for r in kinds(agent, "ui.refused"))
        # a flood of wrong tokens is counted, not recorded one by one
        n = len(kinds(agent, "ui.refused"))
        for _ in range(20):
            await http(d, "GET", "/api/status", headers=bearer(wrong))
        assert d.ui.refused >= 26 and len(kinds(agent, "ui.refused")) == n


async def test_login_session_csrf_and_the_action_form(agent):
    async with ui_daemon(agent) as (d, token):
        host, port = d.ui.address
        status, _, body = await http(
            d,
            "POST",
            "/login",
            body=b"token=kui_12345678_" + b"x" * 43,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 401 and b"not a valid token" in body
        cookie, csrf = await login(d, token)
        form = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}

        # without the CSRF token, or from another origin, a form post is refused and nothing runs
        denied_before = len(kinds(agent, "policy.decision"))
        body = urlencode({"action": "gpio.write", "args": '{"actuator": "lamp", "value": 1}'}).encode()
        status, _, _ = await http(d, "POST", "/request", headers=form, body=body)
        assert status == 403
        with_csrf = urlencode(
            {"action": "gpio.write", "args": '{"actuator": "lamp", "value": 1}', "csrf": csrf}
        ).encode()
        status, _, _ = await http(
            d, "POST", "/request", headers={**form, "Origin": "http://evil.example"}, body=with_csrf
        )
        assert status == 403
        status, _, _ = await http(
            d, "POST", "/request", headers={**form, "Sec-Fetch-Site": "cross-site"}, body=with_csrf
        )
        assert status == 403
        assert len(kinds(agent, "policy.decision")) == denied_before and d.control_status()["actuators"]["lamp"] == 0

        # with it: the same pipeline as `kestrel call`
        status, _, page = await http(
            d, "POST", "/request", headers={**form, "Origin": f"http://{host}:{port}"}, body=with_csrf
        )
        assert status == 200 and b'class="outcome allowed"' in page
        assert d.control_status()["actuators"]["lamp"] == 1
        tid = token[4:12]
        results = [r for r in kinds(agent, "action.result") if r["source"] == f"ui:token={tid}"]
        assert len(results) == 1 and results[0]["ok"] is True

        deny = urlencode({"action": "send_email", "args": '{"to": "a@example.com"}', "csrf": csrf}).encode()
        status, _, page = await http(d, "POST", "/request", headers=form, body=deny)
        assert status == 200 and b'class="outcome denied"' in page
        assert b'<code id="outcome-rule">default-deny</code>' in page
        assert kinds(agent, "policy.decision")[-1]["decision"] == "deny"

        # bad arguments are refused before the pipeline
        n = len(kinds(agent, "policy.decision"))
        for args in ('{"value": NaN}', "[1, 2]", "{", "x" * 20000):
            bad = urlencode({"action": "gpio.write", "args": args, "csrf": csrf}).encode()
            status, _, page = await http(d, "POST", "/request", headers=form, body=bad)
            assert status in (400, 413) and b"allowed" not in page, args
        bad = urlencode({"action": "Robert'); DROP", "args": "{}", "csrf": csrf}).encode()
        assert (await http(d, "POST", "/request", headers=form, body=bad))[0] == 400
        assert len(kinds(agent, "policy.decision")) == n

        # the pages, signed in
        for path, marker in (
            ("/", b'data-sensor="button"'),
            ("/actions", b'id="events"'),
            ("/policy", b"gpio.write"),
            ("/ledger", b'id="verify-state"'),
        ):
            status, _, page = await http(d, "GET", path, headers={"Cookie": cookie})
            assert status == 200 and marker in page, path
        status, _, events = await http(d, "GET", "/api/events?since=0", headers={"Cookie": cookie})
        got = json.loads(events)["events"]
        assert any(e["kind"] == "policy.decision" and e["body"]["rule"] == "default-deny" for e in got)
        await until(lambda: d.ui._verify.get("state") == "ok", what="the ledger verification")

        # a revoked token ends its sessions; signing out ends this one
        cookie2, _ = await login(d, token)
        assert TokenFile(agent.state).revoke(tid)
        assert (await http(d, "GET", "/", headers={"Cookie": cookie2}))[0] == 401
        assert (await http(d, "GET", "/", headers={"Cookie": "kestrel_ui=forged"}))[0] == 401


async def test_logout_and_session_expiry_follow_the_token(agent):
    async with ui_daemon(agent) as (d, token):
        cookie, csrf = await login(d, token)
        status, headers, _ = await http(
            d,
            "POST",
            "/logout",
            body=urlencode({"csrf": csrf}).encode(),
            headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 303 and "Max-Age=0" in headers["set-cookie"]
        assert (await http(d, "GET", "/", headers={"Cookie": cookie}))[0] == 401
        short = TokenFile(agent.state).issue(ttl_s=5, now=time.time())
        cookie, _ = await login(d, short.token)
        assert d.ui.sessions[next(iter(d.ui.sessions))].expires <= short.entry.expires  # never beyond its token
        assert (await http(d, "GET", "/", headers={"Cookie": cookie}))[0] == 200
        d.ui.clock = lambda: time.time() + 10
        assert (await http(d, "GET", "/", headers={"Cookie": cookie}))[0] == 401


async def test_malformed_and_oversized_requests(agent):
    async with ui_daemon(agent) as (d, token):
        auth = f"Authorization: Bearer {token}\r\n"
        host = "Host: x\r\n"
        cases = (
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 400),
            (b"GET nothing HTTP/1.1\r\n\r\n", 400),
            (("GET / HTTP/1.1\r\n" + host + "X-Big: " + "a" * 20000 + "\r\n\r\n").encode(), 431),
            (
                ("POST /request HTTP/1.1\r\n" + host + auth + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode(),
                501,
            ),
            (("POST /request HTTP/1.1\r\n" + host + auth + "\r\n").encode(), 411),
            (("POST /request HTTP/1.1\r\n" + host + auth + "Content-Length: 999999\r\n\r\n").encode(), 413),
            (("POST /request HTTP/1.1\r\n" + host + auth + "Content-Length: -1\r\n\r\n").encode(), 400),
            (("GET / HTTP/1.1\r\n" + host + auth + auth + "\r\n").encode(), 400),
            (("DELETE / HTTP/1.1\r\n" + host + auth + "Connection: close\r\n\r\n").encode(), 405),
            (("GET /api/events?since=x HTTP/1.1\r\n" + host + auth + "Connection: close\r\n\r\n").encode(), 400),
            (("GET /static/../tokens.py HTTP/1.1\r\n" + host + auth + "Connection: close\r\n\r\n").encode(), 404),
        )
        for raw, want in cases:
            status, _, _ = await http(d, "GET", "/", raw=raw)
            assert status == want, (raw[:60], status)
        # connections beyond the limit are turned away; the UI still answers afterwards
        conns = [await asyncio.open_connection(*d.ui.address) for _ in range(16)]
        await until(lambda: len(d.ui._conns) >= 16, what="16 open connections")
        status, _, _ = await http(d, "GET", "/", headers=bearer(token))
        assert status == 503
        for _, w in conns:
            w.close()
        await until(lambda: len(d.ui._conns) == 0, what="the connections to close")
        assert (await http(d, "GET", "/api/status", headers=bearer(token)))[0] == 200
        assert d.control_status()["health"] == "ok"
        # a corrupt token file refuses everyone (fail closed), with a reason in the ledger, and does not crash
        TokenFile(agent.state).path.write_bytes(b"{not json")
        assert (await http(d, "GET", "/api/status", headers=bearer(token)))[0] == 401
        await until(
            lambda: any(r["reason"] == "token-file-unreadable" for r in agent.kinds("ui.refused")), what="the refusal"
        )
