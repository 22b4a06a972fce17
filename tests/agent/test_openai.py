"""The openai backend against real local HTTP servers: one that streams, one that hangs, a closed port."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kestrel.agent.llm import EndpointError, EndpointRefusedError, GenerationOptions, OpenAIModel
from kestrel.agent.planner import LLMPlanner

LLM_POLICY = """\
actions:
  - gpio.write
  - llm.request
restrictions:
  - no_external_network unless explicitly permitted
"""


class _Server:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[dict] = []
        self.closing = threading.Event()  # a hanging request is held until the server closes
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body})
                if outer.mode == "hang":
                    outer.closing.wait(30)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                if outer.mode == "garbage":
                    self.wfile.write(b"data: {not json\n\n")
                    return
                words = ['{"action": ', '"gpio.write", ', '"args": {"actuator": "fan", ', '"value": 1}}', "\nrest"]
                for w in words:
                    chunk = (
                        {"choices": [{"delta": {"content": w}, "finish_reason": None}]}
                        if self.path.endswith("chat/completions")
                        else {"choices": [{"text": w, "finish_reason": None}]}
                    )
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(request) -> Iterator[_Server]:
    s = _Server(getattr(request, "param", "ok"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def llm_env(env_with):
    return env_with(LLM_POLICY)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_streams_from_an_allowed_endpoint(server, llm_env, api):
    model = OpenAIModel(server.url, model="tiny", authorize=llm_env.engine.decide, api=api, timeout_s=5)
    stream = model.generate("goal", options=GenerationOptions(max_tokens=50, stop=("\n",), seed=3))
    events = list(stream)
    assert len(events) >= 4
    assert stream.result.text == '{"action": "gpio.write", "args": {"actuator": "fan", "value": 1}}'
    sent = server.requests[0]
    assert sent["path"] == "/v1/" + ("chat/completions" if api == "chat" else "completions")
    assert sent["body"]["stream"] is True and sent["body"]["max_tokens"] == 50 and sent["body"]["seed"] == 3
    assert [d["decision"] for d in llm_env.records("policy.decision")] == ["allow"]


def test_planner_over_the_endpoint(server, llm_env):
    model = OpenAIModel(server.url, model="tiny", authorize=llm_env.engine.decide, timeout_s=5)
    p = LLMPlanner(model, llm_env.tools(), authorize=llm_env.engine.decide, ledger=llm_env.ledger)
    out = p.run("turn on the fan")
    assert llm_env.executed[0] == ("gpio.write", {"actuator": "fan", "value": 1})
    assert out.steps[0].decision.allowed


def test_endpoint_the_policy_does_not_permit_is_never_contacted(server, env_with):
    env = env_with("actions:\n  - gpio.write\n")  # llm.request not allowed
    model = OpenAIModel(server.url, model="tiny", authorize=env.engine.decide, timeout_s=5)
    with pytest.raises(EndpointRefusedError) as info:
        model.generate("hi")
    assert "llm.request" in str(info.value) and "default-deny" in str(info.value)
    assert server.requests == []
    assert env.records("policy.decision")[0]["decision"] == "deny"


def test_external_host_needs_the_network_allow_list(llm_env):
    model = OpenAIModel("http://llm.example.net:8080/v1", model="tiny", authorize=llm_env.engine.decide)
    with pytest.raises(EndpointRefusedError, match="allow-list"):
        model.generate("hi")


@pytest.mark.parametrize("server", ["hang"], indirect=True)
def test_endpoint_that_hangs_times_out(server, llm_env):
    model = OpenAIModel(server.url, model="tiny", authorize=llm_env.engine.decide, timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(EndpointError, match="did not answer within 0.5 s"):
        _ = model.generate("hi").result
    assert time.monotonic() - t0 < 3


def test_unreachable_endpoint(llm_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with-block ends: nothing listens there
    model = OpenAIModel(f"http://127.0.0.1:{port}/v1", model="tiny", authorize=llm_env.engine.decide, timeout_s=2)
    with pytest.raises(EndpointError, match="cannot reach"):
        _ = model.generate("hi").result


@pytest.mark.parametrize("server", ["hang"], indirect=True)
def test_planner_ends_with_model_error_when_the_endpoint_hangs(server, llm_env):
    model = OpenAIModel(server.url, model="tiny", authorize=llm_env.engine.decide, timeout_s=0.3)
    out = LLMPlanner(model, llm_env.tools(), authorize=llm_env.engine.decide, ledger=llm_env.ledger).run("x")
    assert out.status == "model-error" and "did not answer" in out.error
    assert llm_env.executed == [] and out.steps == ()


@pytest.mark.parametrize("server", ["garbage"], indirect=True)
def test_malformed_events(server, llm_env):
    model = OpenAIModel(server.url, model="tiny", authorize=llm_env.engine.decide, timeout_s=2)
    with pytest.raises(EndpointError, match="malformed event"):
        _ = model.generate("hi").result


def test_bad_endpoint_urls():
    from kestrel.errors import UsageError

    for url in ("ftp://x/v1", "not a url", "http:///v1"):
        with pytest.raises(UsageError):
            OpenAIModel(url, model="m", authorize=lambda a, b: None)
