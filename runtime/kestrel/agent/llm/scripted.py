"""The ``scripted`` backend: replays given replies, one per call (tests and demos).

A legitimate backend, not a stand-in for onnxruntime: it exercises the same
streaming, budget, stop-string and cancellation code (:func:`drive`) as the real
ones, with output chosen by the caller. "Tokens" are whitespace-separated words.
Every prompt it was given is kept in ``prompts``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator, Sequence

from ...errors import UsageError
from .base import GenerationOptions, Piece, Stream, drive

__all__ = ["ScriptedModel"]

_WORD = re.compile(r"\S+\s*|\s+")


class ScriptedModel:
    def __init__(
        self, replies: Sequence[str], *, name: str = "scripted", context_length: int = 4096, delay_s: float = 0.0
    ) -> None:
        self.name = name
        self.context_length = context_length
        self.digest = "scripted:" + hashlib.sha256("\x00".join(replies).encode()).hexdigest()
        self._replies = list(replies)
        self._delay = delay_s
        self.prompts: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        options: GenerationOptions = GenerationOptions(),
        cancel: threading.Event | None = None,
    ) -> Stream:
        if not isinstance(prompt, str):
            raise UsageError("the scripted backend takes text prompts only")
        if not self._replies:
            raise UsageError("the scripted model has no replies left")
        self.prompts.append(prompt)
        reply = self._replies.pop(0)

        def pieces() -> Iterator[Piece]:
            for i, word in enumerate(_WORD.findall(reply)):
                if self._delay:
                    time.sleep(self._delay)
                yield Piece((i,), word)

        return drive(pieces, options=options, prompt_tokens=self.count_tokens(prompt), cancel=cancel)
