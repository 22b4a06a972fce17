"""The ``openai`` backend: an OpenAI-compatible HTTP endpoint on the owner's own hardware.

llama.cpp's server, Ollama and vLLM all serve ``POST /v1/completions`` and
``/v1/chat/completions`` with ``"stream": true`` (server-sent events, one
``data: {json}`` line per chunk, ending with ``data: [DONE]``).

Every generation first asks the policy: action ``llm.request`` with args
``{"url": ENDPOINT, "model": NAME}``; the policy's network rules decide on the
URL's host and port (``no_external_network`` plus its allow-list). A refusal
raises :class:`EndpointRefusedError` and nothing is sent. The HTTP exchange runs
with urllib in whatever thread iterates the stream (an executor thread for the
async form); ``timeout_s`` bounds the connection and every read, so an endpoint
that hangs ends the generation with :class:`EndpointError`, never a stuck task.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from ...errors import UsageError
from .base import EndpointError, EndpointRefusedError, GenerationOptions, Piece, Stream, drive

__all__ = ["OpenAIModel"]

_MAX_LINE = 1 << 20


class OpenAIModel:
    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        authorize: Callable[[str, dict[str, Any]], Any],
        api: str = "completions",
        timeout_s: float = 30.0,
        context_length: int = 4096,
        api_key: str | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"not an http(s) endpoint URL: {base_url!r}",
                hint="give the server's base URL, e.g. http://192.168.1.20:8080/v1",
            )
        if api not in ("completions", "chat"):
            raise UsageError(f"api must be 'completions' or 'chat', got {api!r}")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/{'chat/completions' if api == 'chat' else 'completions'}"
        self.name = model
        self.api = api
        self.context_length = context_length
        self.timeout_s = timeout_s
        self.digest = "openai:" + hashlib.sha256(f"{self.base_url}\x00{model}".encode()).hexdigest()
        self._authorize = authorize
        self._api_key = api_key if api_key is not None else os.environ.get("KESTREL_LLM_API_KEY")

    def count_tokens(self, text: str) -> int:
        """An estimate (about 4 characters per token); the server does not tell."""
        return len(text) // 4 + 1

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        options: GenerationOptions = GenerationOptions(),
        cancel: threading.Event | None = None,
    ) -> Stream:
        if not isinstance(prompt, str) and self.api == "chat":
            raise UsageError("token-id prompts need api='completions'")
        decision = self._authorize("llm.request", {"url": self.url, "model": self.name})
        if not decision.allowed:
            host = urlsplit(self.url).netloc
            raise EndpointRefusedError(
                f"the policy refused llm.request to {host} ({decision.rule}: {decision.reason})",
                hint="allow the action llm.request and the endpoint's host:port in the policy's network allow-list",
            )
        body = self._body(prompt, options)
        n_prompt = self.count_tokens(prompt) if isinstance(prompt, str) else len(prompt)
        return drive(lambda: self._pieces(body, options), options=options, prompt_tokens=n_prompt, cancel=cancel)

    def _body(self, prompt: str | Sequence[int], options: GenerationOptions) -> bytes:
        body: dict[str, Any] = {
            "model": self.name,
            "max_tokens": options.max_tokens,
            "stream": True,
            "temperature": options.temperature,
            "top_p": options.top_p,
        }
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt if isinstance(prompt, str) else list(prompt)
        if options.stop:
            body["stop"] = list(options.stop)
        if options.seed is not None:
            body["seed"] = options.seed
        if options.top_k:
            body["top_k"] = options.top_k
        return json.dumps(body).encode()

    def _pieces(self, body: bytes, options: GenerationOptions) -> Iterator[Piece]:
        timeout = min(self.timeout_s, options.time_budget_s or self.timeout_s)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        where = urlsplit(self.url).netloc
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (policy-checked URL)
        except urllib.error.HTTPError as exc:
            raise EndpointError(f"LLM endpoint {where} answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise EndpointError(f"LLM endpoint {where} did not answer within {timeout:g} s") from None
            raise EndpointError(
                f"cannot reach LLM endpoint {where}: {reason}",
                hint="check that the server is running and the URL is right",
            ) from None
        with response:
            yield from self._events(response, where, timeout)

    def _events(self, response: Any, where: str, timeout: float) -> Iterator[Piece]:
        while True:
            try:
                raw = response.readline(_MAX_LINE)
            except TimeoutError:
                raise EndpointError(f"LLM endpoint {where} stalled for more than {timeout:g} s") from None
            except OSError as exc:
                raise EndpointError(f"LLM endpoint {where} broke the stream: {exc}") from None
            if not raw:
                return
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue  # blank separators, comments, event: lines
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                choice = json.loads(data)["choices"][0]
                text = choice["delta"].get("content") or "" if self.api == "chat" else choice.get("text") or ""
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raise EndpointError(f"LLM endpoint {where} sent a malformed event: {data[:80]!r}") from None
            finish = choice.get("finish_reason")
            final = {"length": "length", "stop": "stop"}.get(finish) if finish else None
            if text or final:
                yield Piece((-1,) if text else (), text, final=final)
