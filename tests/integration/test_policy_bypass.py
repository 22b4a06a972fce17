"""What the policy allowed is all that happens: adversarial arguments through `kestrel run`'s control
socket, into a real SMTP sink and real HTTP servers on loopback. Allowed implies that every recipient
the relay was given and every server that was contacted is inside the policy's set (issue 12)."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrel.sdk import ActionDenied, Client, RemoteError
from tests.daemon.smtp_sink import SmtpSink
from tests.fixtures.procs import free_port
from tests.fixtures.wait import wait_until
from tests.policy.hostile import HOSTILE_RECIPIENTS, RECIPIENT_FRAGMENTS

from .conftest import KESTREL, start_daemon


class _Recorder(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append((self.server.server_address, self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        if self.path.startswith("/go-evil"):
            self.send_response(302)
            self.send_header("Location", self.server.evil_url)  # type: ignore[attr-defined]
            self.end_headers()
            return
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


def _server(host: str, port: int) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer((host, port), _Recorder)
    srv.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("bypass")
    good_port, evil_port = free_port(), free_port()
    good, evil, evil2 = (
        _server("127.0.0.1", good_port),
        _server("127.0.0.1", evil_port),
        _server("127.0.0.2", good_port),
    )
    for s in (good, evil, evil2):
        s.evil_url = f"http://127.0.0.1:{evil_port}/stolen"  # type: ignore[attr-defined]
    sink = SmtpSink()
    box = sink.__enter__()
    state, cfg = tmp / "state", tmp / "device.yaml"
    cfg.write_text(f"""version: 1
smtp: {{host: 127.0.0.1, port: {sink.port}, from: bot@device.test, timeout: 5}}
outbox: {{retry_initial: 0.1, retry_max: 0.5, max_items: 100000}}
fetch: {{max_bytes: 1000, timeout: 3}}
""")
    policy = tmp / "policy.yaml"
    policy.write_text(f"""actions:
  - action: send_email
    args:
      to: {{domain: example.com}}
  - action: fetch_data
    args:
      url: {{regex: "http://127\\\\.0\\\\.0\\\\.1:{good_port}/[a-z/-]*", max_len: 200}}
""")
    (tmp / "pass").write_text("owner passphrase\n")
    proc = start_daemon(state, cfg, "--log-level", "error", timeout=60)
    try:
        r = subprocess.run(
            [
                *KESTREL,
                "set-policy",
                str(policy),
                "--state",
                str(state),
                "--key",
                str(tmp / "owner.key"),
                "--passphrase-file",
                str(tmp / "pass"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        yield {"state": state, "box": box, "good": good, "evil": [evil, evil2], "good_port": good_port}
    finally:
        proc.terminate()
        proc.wait(30)
        sink.__exit__(None, None, None)
        for s in (good, evil, evil2):
            s.shutdown()
            s.server_close()


def _call(state: Path, action: str, **args: object) -> bool:
    """True if the daemon allowed (and ran) the call, False if the policy denied it."""
    try:
        Client(state, timeout=20).call(action, **args)
        return True
    except ActionDenied:
        return False
    except RemoteError as exc:  # allowed, but the action failed (e.g. a redirect the policy refused)
        assert exc.code == "failed", exc
        return True


def _delivered_recipients(box, wait_for: int) -> list[str]:
    wait_until(
        lambda: len(box.messages) >= wait_for, what=lambda: f"{wait_for} mails delivered ({len(box.messages)} are)"
    )
    return [r for _, rcpts, _ in box.messages for r in rcpts]


@pytest.mark.parametrize("to", HOSTILE_RECIPIENTS)
def test_the_reported_recipient_bypasses_are_denied(world, to: str) -> None:
    before = len(world["box"].messages)
    assert _call(world["state"], "send_email", to=to, subject="hi") is False
    assert _call(world["state"], "send_email", to=["ok@example.com", to], subject="hi") is False
    assert len(world["box"].messages) == before


def test_the_cli_refuses_the_reported_bypass(world) -> None:
    r = subprocess.run(
        [
            *KESTREL,
            "call",
            "--state",
            str(world["state"]),
            "--action",
            "send_email",
            "--to",
            "eve@evil.com, bob@example.com",
            "--subject",
            "hi",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 5 and "Traceback" not in r.stderr, (r.returncode, r.stderr)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.lists(st.sampled_from(RECIPIENT_FRAGMENTS), min_size=1, max_size=8).map("".join), min_size=1, max_size=3
    )
)
def test_allowed_mail_reaches_only_permitted_recipients(world, to: list[str]) -> None:
    box = world["box"]
    before = len(box.messages)
    if _call(world["state"], "send_email", to=to if len(to) > 1 else to[0], subject="prop"):
        rcpts = _delivered_recipients(box, before + 1)[-len(set(to)) :]
        assert rcpts and all(r.count("@") == 1 and r.lower().endswith("@example.com") for r in rcpts), rcpts


_URL_BITS = st.sampled_from(
    [
        "http://",
        "https://",
        "127.0.0.1",
        "127.0.0.2",
        "localhost",
        "@",
        ":",
        "/",
        "\\",
        "#",
        "?",
        "%2e",
        "..",
        "%40",
        "a",
        "go-evil",
        "user:pw@",
        "0x7f.1",
        "2130706433",
        "[::1]",
        "%00",
        " ",
    ]
)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_URL_BITS, min_size=1, max_size=10).map("".join), st.booleans())
def test_allowed_fetches_contact_only_the_permitted_server(world, tail: str, prefixed: bool) -> None:
    url = (f"http://127.0.0.1:{world['good_port']}/" if prefixed else "") + tail
    _call(world["state"], "fetch_data", url=url)
    assert all(not s.seen for s in world["evil"]), [s.seen for s in world["evil"]]


def test_a_redirect_to_a_server_outside_the_policy_is_a_denied_decision(world) -> None:
    good = world["good"]
    assert _call(world["state"], "fetch_data", url=f"http://127.0.0.1:{world['good_port']}/go-evil") is True
    assert good.seen and good.seen[-1][1] == "/go-evil"
    assert all(not s.seen for s in world["evil"])
