"""Built-in actions: send_email through a durable outbox, schedule_event, fetch_data."""

from __future__ import annotations

import http.server
import os
import stat
import threading

import pytest

from kestrel.daemon.calendar import EventArgsError, parse_event_args, render_ics
from kestrel.daemon.outbox import EmailArgsError, parse_email_args
from kestrel.daemon.pipeline import ActionDeniedError, ActionFailedError
from tests.fixtures.procs import free_port

from .conftest import running, until
from .smtp_sink import SmtpSink

POLICY = """
    actions: [send_email, schedule_event, fetch_data]
    restrictions:
      - no_external_network unless explicitly permitted
"""


def _mail_config(port: int) -> str:
    return f"""
    version: 1
    smtp: {{host: 127.0.0.1, port: {port}, from: bot@device.test, timeout: 2}}
    outbox: {{retry_initial: 0.1, retry_max: 0.3}}
    """


async def test_send_email_is_queued_while_relay_is_down_then_delivered(agent):
    port = free_port()
    async with running(agent, _mail_config(port), policy=POLICY) as d:
        r = await d.control_call(
            "send_email", {"to": "alice@example.com", "subject": "Hello", "body": "hi"}, source="test"
        )
        assert r["pending"] == 1
        files = list((agent.state / "data" / "outbox").glob("*.json"))
        assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
        await until(lambda: d.outbox.last_error is not None, what="a failed attempt")
        assert d.control_status()["outbox"]["pending"] == 1
        with SmtpSink(port) as box:
            await until(lambda: box.messages, timeout=10, what="delivery")
            await until(lambda: not d.outbox.pending(), what="outbox emptied")
        sender, rcpts, data = box.messages[0]
        assert rcpts == ["alice@example.com"] and b"Subject: Hello" in data and b"From: bot@device.test" in data
        await until(lambda: agent.kinds("outbox.sent"), what="outbox.sent record")
    res = [b for b in agent.kinds("action.result") if b["action"] == "send_email"]
    assert res[0]["ok"] and res[0]["result"]["recipients"] == 1
    assert "alice" not in str(res[0])  # the ledger holds a digest, not the address or the text


async def test_outbox_survives_a_restart(agent):
    port = free_port()
    async with running(agent, _mail_config(port), policy=POLICY) as d:
        await d.control_call("send_email", {"to": "bob@example.com", "subject": "later"}, source="test")
    assert len(list((agent.state / "data" / "outbox").glob("*.json"))) == 1
    with SmtpSink(port) as box:
        async with running(agent, _mail_config(port)) as d:
            await until(lambda: box.messages, timeout=10, what="delivery after restart")
            await until(lambda: not d.outbox.pending(), what="emptied")
    assert box.messages[0][1] == ["bob@example.com"]


async def test_relay_refusal_moves_message_to_failed(agent):
    sink = SmtpSink()
    with sink as box:
        box.reject_rcpt.add("ghost@example.com")
        async with running(agent, _mail_config(sink.port), policy=POLICY) as d:
            await d.control_call("send_email", {"to": "ghost@example.com", "subject": "x"}, source="test")
            await until(lambda: d.outbox.failed == 1, timeout=10, what="permanent failure")
    assert len(list((agent.state / "data" / "outbox" / "failed").glob("*.json"))) == 1
    assert agent.kinds("outbox.failed")


@pytest.mark.parametrize(
    "args, why",
    [
        ({"subject": "x"}, "needs 'to'"),
        ({"to": "not-an-address"}, "not an e-mail address"),
        ({"to": "a@b.c", "subject": "x\r\nBcc: evil@x.y"}, "line breaks"),
        ({"to": ["a@b.c"] * 51}, "list of 1..50"),
        ({"to": "a@b.c", "attach": "/etc/shadow"}, "unknown argument"),
    ],
)
def test_email_args_are_validated(args, why):
    with pytest.raises(EmailArgsError) as err:
        parse_email_args(args, now=0.0)
    assert why in err.value.message


async def test_bad_email_args_are_denied_and_recorded(agent):
    async with running(agent, _mail_config(free_port()), policy=POLICY) as d:
        with pytest.raises(ActionDeniedError) as err:
            await d.control_call("send_email", {"to": "a@b.c", "subject": "x\nBcc: e@x.y"}, source="test")
        assert "line breaks" in err.value.message
    assert [b for b in agent.kinds("action.result") if b["action"] == "send_email"] == []
    decided = [b for b in agent.kinds("policy.decision") if b["action"] == "send_email"]
    assert [(b["decision"], b["rule"]) for b in decided] == [("deny", "invalid-args")]


async def test_schedule_event_writes_an_icalendar_file(agent):
    async with running(agent, "version: 1\n", policy=POLICY) as d:
        r = await d.control_call(
            "schedule_event",
            {"summary": "Water the plants; twice, please", "start": "2026-05-01T09:30:00+02:00", "duration_min": 30},
            source="test",
        )
    path = agent.state / "data" / "calendar" / r["file"]
    text = path.read_bytes().decode()
    assert "DTSTART:20260501T073000Z" in text and "DTEND:20260501T080000Z" in text
    assert "SUMMARY:Water the plants\\; twice\\, please" in text and text.endswith("END:VCALENDAR\r\n")
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))


def test_event_args_and_folding():
    with pytest.raises(EventArgsError):
        parse_event_args({"summary": "x", "start": "2026-05-01T09:30:00"})  # no zone
    with pytest.raises(EventArgsError):
        parse_event_args({"summary": "x", "start": "2026-05-01T09:30:00Z", "end": "2026-05-01T09:00:00Z"})
    ev = parse_event_args({"summary": "é" * 100, "start": "2026-05-01T09:30:00Z"}, uid="u@k")
    lines = render_ics(ev, now=0).split(b"\r\n")
    assert all(len(line) <= 75 for line in lines)
    assert b"".join(line[1:] if line.startswith(b" ") else line for line in lines).count("é".encode()) == 100


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/big":
            body = b"x" * 5000
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://example.com/")
            self.end_headers()
            return
        elif self.path == "/hop":  # a relative redirect on the same (loopback) server
            self.send_response(301)
            self.send_header("Location", "/data")
            self.end_headers()
            return
        else:
            body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def http_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


async def test_fetch_data_within_policy_and_limits(agent, http_server):
    cfg = "version: 1\nfetch: {max_bytes: 1000, timeout: 3}\n"
    async with running(agent, cfg, policy=POLICY) as d:
        r = await d.control_call("fetch_data", {"url": http_server + "/data"}, source="test")
        assert r["status"] == 200 and r["text"] == '{"ok": true}' and r["bytes"] == 12
        with pytest.raises(ActionFailedError) as err:
            await d.control_call("fetch_data", {"url": http_server + "/big"}, source="test")
        assert "1000-byte limit" in err.value.message
        with pytest.raises(ActionFailedError) as err:  # each redirect is a new decision: this one is denied
            await d.control_call("fetch_data", {"url": http_server + "/redirect"}, source="test")
        assert "redirect to http://example.com/ was denied by the policy" in err.value.message
        r = await d.control_call("fetch_data", {"url": http_server + "/hop"}, source="test")
        assert r["url"] == http_server + "/data" and r["redirected_from"] == [http_server + "/hop"]
        # the redirect's decision names the fetch it continues, whose action.result is its outcome
        recs = [x for x in d.ledger.records() if x.kind in ("policy.decision", "action.result")]
        result = next(x for x in reversed(recs) if x.kind == "action.result")
        hop = next(x for x in recs if x.seq == result.body["decision"])
        follow = [x for x in recs if x.body.get("parent") == hop.seq]
        assert len(follow) == 1 and follow[0].body["decision"] == "allow" and hop.seq < follow[0].seq < result.seq
        denied = [x for x in recs if x.kind == "policy.decision" and "parent" in x.body and x.seq < hop.seq]
        assert len(denied) == 1 and denied[0].body["decision"] == "deny"  # the /redirect one, tied to its fetch
        with pytest.raises(ActionDeniedError) as err:
            await d.control_call("fetch_data", {"url": "http://203.0.113.9/x"}, source="test")
        assert "allow-list" in err.value.message
        with pytest.raises(ActionDeniedError):
            await d.control_call("fetch_data", {"url": "file:///etc/passwd"}, source="test")
        with pytest.raises(ActionDeniedError) as err:  # not http(s): no canonical form, never executed
            await d.control_call("fetch_data", {"url": "ftp://127.0.0.1/x"}, source="test")
        assert "not an http:// or https:// URL" in err.value.message
    results = [b for b in agent.kinds("action.result") if b["action"] == "fetch_data"]
    assert [b["ok"] for b in results] == [True, False, False, True]
    decided = [b for b in agent.kinds("policy.decision") if b["action"] == "fetch_data"]
    assert [(b["decision"], b["rule"]) for b in decided] == [
        ("allow", "actions[2]"),
        ("allow", "actions[2]"),
        ("allow", "actions[2]"),
        ("deny", "restrictions[0]"),
        ("allow", "actions[2]"),
        ("allow", "actions[2]"),
        ("deny", "restrictions[0]"),
        ("deny", "invalid-args"),
        ("deny", "invalid-args"),
    ]
    assert len(results[0]["result"]["sha256"]) == 64 and "text" not in results[0]["result"]
    assert os.path.exists(agent.state / "ledger")
