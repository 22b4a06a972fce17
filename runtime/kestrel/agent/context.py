"""Where the planner's memory context comes from.

A :class:`ContextSource` returns the texts most relevant to a query, best first.
The planner takes as many as fit in the model's context (see
:func:`kestrel.agent.prompt.fit`); with no source it plans without memory.
:class:`MemoryContext` adapts :class:`kestrel.memory.text.TextMemory` (an embedding
model + hnswlib): top-k retrieval by cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["ContextSource", "StaticContext", "MemoryContext"]


@runtime_checkable
class ContextSource(Protocol):
    def search(self, query: str, k: int) -> Sequence[str]: ...


class StaticContext:
    """A fixed list of notes, in the given order (for rule-sized boards and tests)."""

    def __init__(self, notes: Sequence[str]) -> None:
        self._notes = tuple(notes)

    def search(self, query: str, k: int) -> Sequence[str]:
        return self._notes[:k]


class MemoryContext:
    """Top-k texts from a ``TextMemory``, most similar first; hits below ``min_score`` are left out."""

    def __init__(self, memory: Any, *, min_score: float = 0.0) -> None:
        self._memory = memory
        self._min = min_score

    def search(self, query: str, k: int) -> Sequence[str]:
        if len(self._memory.vectors) == 0:
            return []
        return [h.text for h in self._memory.search(query, k) if h.text and h.score >= self._min]
