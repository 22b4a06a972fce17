"""Tail seals (pure): the writer's mark on records that no checkpoint covers yet (format version 2).

A batched commit ends with a frame of type 0x04 whose 40-byte payload is ``size`` (8 bytes,
big-endian: the records before the seal) and ``HMAC-SHA256(key, LABEL || size || leaf(size-1))``.
Records chain by ``prev``, so one seal vouches for every record before it. The key is the
device's ledger secret (``Signer.ledger_secret()``: derived from the file keystore's private key,
or computed by the TPM), held in memory only: whoever can write to the SD card cannot make a
seal, so on open the writer tells its own unsigned records from anyone else's, and signs only
its own. A verifier holding just the AgentID checks a seal's form, never its MAC (it does not
vouch for anything a verifier relies on: only checkpoints do). See docs/ledger-format.md, 3.1.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

__all__ = ["SEAL_SIZE", "LABEL", "seal_payload", "seal_size", "seal_valid"]

LABEL = b"kestrel-ledger-tail-seal-v2\x00"
SEAL_SIZE = 40
_SIZE = struct.Struct(">Q")


def _mac(key: bytes, size: int, last_leaf: bytes) -> bytes:
    return hmac.new(key, LABEL + _SIZE.pack(size) + last_leaf, hashlib.sha256).digest()


def seal_payload(key: bytes, size: int, last_leaf: bytes) -> bytes:
    """The payload of the seal after record ``size - 1`` (whose leaf hash is ``last_leaf``)."""
    return _SIZE.pack(size) + _mac(key, size, last_leaf)


def seal_size(payload: bytes) -> int | None:
    """The record count a seal claims, or None if the payload is not a seal's 40 bytes."""
    if len(payload) != SEAL_SIZE:
        return None
    return _SIZE.unpack_from(payload)[0]


def seal_valid(key: bytes, payload: bytes, size: int, last_leaf: bytes) -> bool:
    """True if ``payload`` seals exactly the first ``size`` records ending with ``last_leaf`` under ``key``."""
    return seal_size(payload) == size and hmac.compare_digest(payload[8:], _mac(key, size, last_leaf))
