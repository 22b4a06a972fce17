"""The base of a pruned log (pure): what replaces records 0 .. size-1 once their segments are gone.

A base holds the RFC 6962 frontier (compact range) of the first ``size`` leaves, the leaf hash
of record ``size - 1`` (the ``prev`` of the first kept record) and a checkpoint for exactly
``size`` records signed by the agent's key. Stored as ``ledger/base`` (``BASE_MAGIC`` then the
payload) and carried in exports as a frame of type 0x03. See docs/ledger-format.md, section 11.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from ..identity.keys import PublicKey
from .checkpoint import CheckpointError, SignedCheckpoint, verify_checkpoint
from .codec import loads_strict
from .errors import LedgerVerificationError, Reason, RecordError
from .merkle import Frontier

__all__ = ["BASE_MAGIC", "LogBase", "encode_base", "verify_base", "base_size_unsafe", "MAX_BASE_SIZE"]

BASE_MAGIC = b"KLBASE\x01\x00"
MAX_BASE_SIZE = 16384
_KEYS = {"size": int, "prev": bytes, "frontier": list, "checkpoint": bytes}


@dataclass(frozen=True)
class LogBase:
    """A verified base: the log's records start at ``size``; ``frontier`` and ``prev`` continue it."""

    size: int
    prev: bytes
    frontier_hashes: tuple[bytes, ...]
    checkpoint: SignedCheckpoint

    def frontier(self) -> Frontier:
        return Frontier.from_hashes(self.size, self.frontier_hashes)

    @property
    def payload(self) -> bytes:
        """The msgpack payload (file after the magic, or export frame type 0x03)."""
        return msgpack.packb(
            {
                "size": self.size,
                "prev": self.prev,
                "frontier": list(self.frontier_hashes),
                "checkpoint": self.checkpoint.note,
            },
            use_bin_type=True,
        )


def encode_base(*, frontier: Frontier, prev: bytes, checkpoint: SignedCheckpoint) -> LogBase:
    """A base from the writer's own state; ValueError if the checkpoint is not for exactly this tree."""
    if checkpoint.size != frontier.size or checkpoint.root != frontier.root() or len(prev) != 32:
        raise ValueError("the base checkpoint must cover exactly the frontier's tree")
    return LogBase(frontier.size, bytes(prev), frontier.hashes, checkpoint)


def verify_base(payload: bytes, public_key: PublicKey) -> LogBase:
    """Parse a base payload strictly and check its signature and root; raise LedgerVerificationError."""

    def bad(why: str, reason: Reason = Reason.CORRUPT, seq: int = 0) -> LedgerVerificationError:
        return LedgerVerificationError(seq, reason, f"log base: {why}")

    if len(payload) > MAX_BASE_SIZE:
        raise bad(f"larger than {MAX_BASE_SIZE} bytes")
    try:
        obj = loads_strict(payload, what="the base")
    except RecordError as exc:
        raise bad(exc.message) from None
    if not isinstance(obj, dict) or set(obj) != set(_KEYS) or any(type(obj[k]) is not t for k, t in _KEYS.items()):
        raise bad("must be a map with exactly size, prev, frontier, checkpoint")
    size, prev, hashes = obj["size"], obj["prev"], obj["frontier"]
    if size < 1 or len(prev) != 32 or not all(isinstance(h, bytes) for h in hashes):
        raise bad("size must be positive, prev and the frontier hashes 32 bytes")
    if size & 1 and hashes and hashes[-1] != prev:
        raise bad("prev is not the last leaf of the frontier", seq=size - 1)
    try:
        frontier = Frontier.from_hashes(size, hashes)
    except ValueError as exc:
        raise bad(str(exc)) from None
    try:
        cp = verify_checkpoint(obj["checkpoint"], public_key)
    except CheckpointError as exc:
        raise bad(f"checkpoint: {exc.message}", exc.reason, size - 1) from None
    if cp.size != size or cp.root != frontier.root():
        raise bad(f"the signed checkpoint (size {cp.size}) does not match the frontier of {size} records", seq=size - 1)
    return LogBase(size, prev, tuple(hashes), cp)


def base_size_unsafe(payload: bytes) -> int | None:
    """The ``size`` a base payload claims, unverified (readers without a key use it to skip
    segments a prune left behind); None if unreadable."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        size = obj["size"] if isinstance(obj, dict) else None
    except Exception:
        return None
    return size if type(size) is int and size > 0 else None
