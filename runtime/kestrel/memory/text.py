"""Text memory: an embedding model + a :class:`VectorMemory` + ``memory.added`` ledger records.

The memory directory records which embedding model made it (name and manifest digest in the
file's ``info``); opening it with a model of another dimension raises
:class:`DimensionMismatchError`. The ledger gets the sha256 of each text, never the text.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._internal.paths import StateLayout
from ..errors import DataError
from .store import AddResult, DimensionMismatchError, Hit, IndexParams, VectorMemory

if TYPE_CHECKING:
    from ..ledger.recorder import Recorder

__all__ = ["TextMemory", "TextHit", "text_digest", "MAX_TEXT_BYTES"]

MAX_TEXT_BYTES = 64 * 1024


def text_digest(text: str) -> str:
    """The digest recorded in the ledger: sha256 hex of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TextHit:
    id: int
    score: float  # cosine similarity, 1.0 = same direction
    text: str
    meta: Mapping[str, Any]


class TextMemory:
    """Add and search texts. Thread-safe (see :class:`VectorMemory`)."""

    def __init__(self, vectors: VectorMemory, embedder: Any, *, ledger: Recorder | None = None) -> None:
        if embedder.dim != vectors.params.dim:
            raise DimensionMismatchError(
                f"embedding model {embedder.model.manifest.name} makes {embedder.dim}-dimensional vectors, "
                f"but memory {vectors.directory} holds {vectors.params.dim}-dimensional ones",
                hint="use the model the memory was made with, or start a new memory directory",
            )
        self.vectors = vectors
        self.embedder = embedder
        self.ledger = ledger

    @classmethod
    def open(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        model: str = "minilm",
        capacity: int = 10_000,
        ledger: Recorder | None = None,
        read_only: bool = False,
        options: Any = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> TextMemory:
        """Open (or create) the memory under ``STATE/memory`` with the installed model ``model``."""
        from ..inference.embedding import Embedder
        from ..inference.store import ModelStore

        installed = ModelStore(state_dir).get(model)
        embedder = Embedder(installed, options=options)
        where = Path(directory) if directory else StateLayout(state_dir).memory
        info = {"model": installed.manifest.name, "model_manifest_sha256": installed.manifest.digest}
        if read_only:
            vectors = VectorMemory.open(where, read_only=True)
        else:
            vectors = VectorMemory.open_or_create(where, IndexParams(dim=embedder.dim, capacity=capacity), info=info)
        try:
            return cls(vectors, embedder, ledger=ledger)
        except BaseException:
            vectors.close()
            raise

    def add(self, text: str, meta: Mapping[str, Any] | None = None, *, save: bool = True) -> AddResult:
        """Embed and store ``text``; record ``memory.added`` (digest only); save unless told not to."""
        if not isinstance(text, str) or not text.strip():
            raise DataError("a memory must be a non-empty text")
        if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
            raise DataError(f"a memory is limited to {MAX_TEXT_BYTES} bytes of UTF-8 text")
        record = {**(meta or {}), "text": text}
        result = self.vectors.add(self.embedder.embed_one(text), record)
        if save:
            self.vectors.save()
        if self.ledger is not None:
            self.ledger.append(
                "memory.added",
                {
                    "id": result.id,
                    "digest": text_digest(text),
                    "model": self.embedder.model.manifest.name,
                    "evicted": list(result.evicted),
                },
            )
        return result

    def search(self, query: str, k: int = 5) -> list[TextHit]:
        if not isinstance(query, str) or not query.strip():
            raise DataError("the query must be a non-empty text")
        hits: list[Hit] = self.vectors.search(self.embedder.embed_one(query), k)
        out = []
        for h in hits:
            meta = dict(h.meta)
            text = meta.pop("text", "")
            out.append(TextHit(id=h.id, score=1.0 - h.distance, text=text, meta=meta))
        return out

    def close(self) -> None:
        self.vectors.close()

    def __enter__(self) -> TextMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
