"""Vector memory: hnswlib with msgpack metadata, bounded, crash-safe (docs/memory-format.md).

numpy and hnswlib are imported only when a memory is created or opened.
"""

from __future__ import annotations

from .format import MemoryFormatError
from .store import (
    AddResult,
    DimensionMismatchError,
    Hit,
    IndexParams,
    MemoryBusyError,
    MemoryFullError,
    VectorMemory,
)
from .text import TextHit, TextMemory, text_digest

__all__ = [
    "MemoryFormatError",
    "AddResult",
    "DimensionMismatchError",
    "Hit",
    "IndexParams",
    "MemoryBusyError",
    "MemoryFullError",
    "VectorMemory",
    "TextHit",
    "TextMemory",
    "text_digest",
]
