"""The one interface every language-model backend implements.

A backend turns a prompt (text or token ids) into a stream of :class:`TokenEvent`
values. Budgets (tokens, wall time), stop strings and cancellation are enforced
here, once, by :func:`drive`, around a backend's raw step iterator; a backend only
says how to produce the next piece of text.

``Stream`` is both a sync iterator and an async iterator (the async form runs each
step in an executor so the event loop never blocks). Cancelling it, from any
thread or by cancelling the awaiting task, ends it after the current step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ...errors import DataError, TransportError, UsageError

__all__ = [
    "GenerationOptions",
    "TokenEvent",
    "Completion",
    "Stream",
    "LanguageModel",
    "Piece",
    "drive",
    "StopMatcher",
    "ModelLoadError",
    "EndpointError",
    "EndpointRefusedError",
]

Prompt = str | Sequence[int]


class ModelLoadError(DataError):
    """A model directory is missing files, or a file is corrupt or of the wrong kind."""


class EndpointError(TransportError):
    """An LLM endpoint could not be reached, hung past its timeout, or answered badly."""


class EndpointRefusedError(DataError):
    """The policy refused the network request to an LLM endpoint."""


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate. ``temperature == 0`` means greedy (deterministic)."""

    max_tokens: int = 128
    time_budget_s: float | None = None
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise UsageError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise UsageError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if any(not s for s in self.stop):
            raise UsageError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TokenEvent:
    """One streamed piece: the text it adds and the token ids behind it."""

    text: str
    token_ids: tuple[int, ...]
    index: int  # number of tokens generated so far, this piece included


@dataclass(frozen=True)
class Completion:
    """The whole result of one generation."""

    text: str
    token_ids: tuple[int, ...]
    stop_reason: str  # "eos" | "stop" | "length" | "time" | "cancelled" | "context"
    prompt_tokens: int
    first_token_s: float | None
    elapsed_s: float

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Piece:
    """What a backend's raw step iterator yields: new token ids and their text."""

    token_ids: tuple[int, ...]
    text: str
    final: str | None = None  # a stop reason decided by the backend ("eos", "context", "length")


@runtime_checkable
class LanguageModel(Protocol):
    """A text generator. ``digest`` identifies the exact weights (for the ledger)."""

    name: str
    digest: str
    context_length: int

    def generate(
        self, prompt: Prompt, *, options: GenerationOptions = ..., cancel: threading.Event | None = None
    ) -> Stream: ...

    def count_tokens(self, text: str) -> int: ...


class StopMatcher:
    """Finds stop strings in streamed text, holding back a possible partial match."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, stopped)."""
        buf = self._pending + text
        if not self._stops:
            return buf, False
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending = ""
            return buf[:cut], True
        hold = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


class Stream:
    """A running generation: iterate it (sync or async), cancel it, read ``result``."""

    def __init__(self, steps: Iterator[TokenEvent], cancel: threading.Event, box: dict[str, Any]) -> None:
        self._steps = steps
        self._cancel = cancel
        self._box = box
        self._lock = threading.Lock()  # one step at a time, whichever thread asks

    def __iter__(self) -> Iterator[TokenEvent]:
        return self

    def __next__(self) -> TokenEvent:
        with self._lock:
            return next(self._steps)

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        self._cancel.set()
        with self._lock:
            self._steps.close()  # type: ignore[attr-defined]

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[TokenEvent]:
        loop = asyncio.get_running_loop()
        done = object()
        try:
            while True:
                event = await loop.run_in_executor(None, next, self, done)
                if event is done:
                    return
                yield event  # type: ignore[misc]
        finally:
            self._cancel.set()

    @property
    def result(self) -> Completion:
        """The completion; consumes whatever is left of the stream first."""
        for _ in self:
            pass
        return self._box["result"]

    def text(self) -> str:
        return self.result.text


def drive(
    pieces: Callable[[], Iterator[Piece]],
    *,
    options: GenerationOptions,
    prompt_tokens: int,
    cancel: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Stream:
    """Wrap a backend's raw piece iterator with budgets, stop strings and cancellation."""
    cancel = cancel if cancel is not None else threading.Event()
    box: dict[str, Any] = {}

    def run() -> Iterator[TokenEvent]:
        start = clock()
        deadline = start + options.time_budget_s if options.time_budget_s else None
        stopper = StopMatcher(options.stop)
        ids: list[int] = []
        parts: list[str] = []
        first: float | None = None
        reason = "length"
        source = pieces()
        try:
            while True:
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if len(ids) >= options.max_tokens:
                    reason = "length"
                    break
                if deadline is not None and clock() >= deadline:
                    reason = "time"
                    break
                piece = next(source, None)
                if piece is None:
                    reason = "eos"
                    break
                if piece.final is not None and not piece.token_ids and not piece.text:
                    reason = piece.final
                    break
                if first is None:
                    first = clock() - start
                ids.extend(piece.token_ids)
                text, stopped = stopper.feed(piece.text)
                if text or piece.token_ids:
                    parts.append(text)
                    yield TokenEvent(text=text, token_ids=piece.token_ids, index=len(ids))
                if stopped:
                    reason = "stop"
                    break
                if piece.final is not None:
                    reason = piece.final
                    break
            tail = stopper.flush() if reason != "stop" else ""
            if tail:
                parts.append(tail)
                yield TokenEvent(text=tail, token_ids=(), index=len(ids))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            box["result"] = Completion(
                text="".join(parts),
                token_ids=tuple(ids),
                stop_reason=reason,
                prompt_tokens=prompt_tokens,
                first_token_s=first,
                elapsed_s=clock() - start,
            )

    steps = run()
    return Stream(steps, cancel, box)
