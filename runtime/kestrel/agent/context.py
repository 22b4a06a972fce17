"""Where the planner's memory context comes from.

A :class:`ContextSource` returns the texts most relevant to a query, best first.
The planner takes as many as fit in the model's context (see
:func:`kestrel.agent.prompt.fit`); with no source it plans without memory.
:class:`VectorMemoryContext` adapts :mod:`kestrel.memory` (hnswlib) and an
embedding model (:class:`kestrel.inference.embedding.Embedder`).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

__all__ = ["ContextSource", "StaticContext", "VectorMemoryContext"]


@runtime_checkable
class ContextSource(Protocol):
    def search(self, query: str, k: int) -> Sequence[str]: ...


class StaticContext:
    """A fixed list of notes, in the given order (for rule-sized boards and tests)."""

    def __init__(self, notes: Sequence[str]) -> None:
        self._notes = tuple(notes)

    def search(self, query: str, k: int) -> Sequence[str]:
        return self._notes[:k]


class VectorMemoryContext:
    """Top-k retrieval: embed the query, search the vector memory, return each hit's text.

    ``memory`` is a :class:`kestrel.memory.store.VectorMemory`; ``embedder`` has
    ``embed_one(text) -> vector``. Hits without a text under ``text_key`` in their
    metadata are skipped (the memory may hold vectors the agent cannot quote).
    """

    def __init__(self, memory: Any, embedder: Any, *, text_key: str = "text") -> None:
        self._memory = memory
        self._embedder = embedder
        self._key = text_key

    def search(self, query: str, k: int) -> Sequence[str]:
        if len(self._memory) == 0:
            return []
        hits = self._memory.search(self._embedder.embed_one(query), k)
        return [str(h.meta[self._key]) for h in hits if isinstance(h.meta.get(self._key), str)]
