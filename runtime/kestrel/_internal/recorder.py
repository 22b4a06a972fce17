"""The narrowest seam for "something that records": ``append(kind, body)`` (typing only).

It lives at the bottom so that every layer may name it, the identity layer included (which
records a BLS key's creation but sits below the ledger). ``kestrel.ledger.recorder`` re-exports
it beside the seams that read records back.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Recorder"]


class Recorder(Protocol):
    """Something that records: ``append(kind, body)`` (kinds and bodies as docs/ledger-format.md)."""

    def append(self, kind: str, body: dict[str, Any]) -> object: ...
