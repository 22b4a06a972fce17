"""The writer's resume point (pure): its state at the start of a segment, authenticated by the tail key.

A writer that opens its log must know the log's end (size, last leaf hash, Merkle frontier) and must
know that every record before it is its own. Walking the whole log for that costs time in
proportion to the log's age (28-60 s at 1 GiB on a Pi-class CPU). So when the writer starts a
segment, it saves its state at that segment's first record, MACed under the device's ledger secret
(the tail key, see tailmac.py): on open it verifies only the segments from there on. A resume point
that is missing, does not authenticate, or does not fit the log (its segment is gone, or holds
other records) is ignored: the writer then walks the whole log, as before.

File ``ledger/resume``: ``RESUME_MAGIC``, a msgpack map (below), then
``HMAC-SHA256(key, LABEL || map bytes)`` (32 bytes). See docs/ledger-format.md, section 3.4.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import msgpack

from ..identity.keys import PublicKey
from .checkpoint import CheckpointError, SignedCheckpoint, verify_checkpoint
from .codec import loads_strict
from .errors import RecordError
from .index import IndexState
from .merkle import Frontier

__all__ = ["RESUME_FILE", "RESUME_MAGIC", "LABEL", "MAX_RESUME_SIZE", "ResumePoint", "encode_resume", "decode_resume"]

RESUME_FILE = "resume"
RESUME_MAGIC = b"KLRESUM\x01"
LABEL = b"kestrel-ledger-resume-v1\x00"
MAX_RESUME_SIZE = 1 << 20  # the file, at most (the latest-kind map dominates: a few KB in practice)
_MAC = 32
_KEYS = {
    "size": int,
    "prev": bytes,
    "frontier": list,
    "checkpoint": bytes,
    "kinds": dict,
    "index_nodes": int,
    "index_peaks": list,
    "index_block": list,
    "index_skip": int,
}


@dataclass(frozen=True)
class ResumePoint:
    """The writer's state before record ``size``, the first record of the segment named ``size``."""

    size: int
    prev: bytes  # leaf hash of record size - 1
    frontier: tuple[bytes, ...]  # Frontier.hashes of the first ``size`` records
    checkpoint: SignedCheckpoint  # the newest checkpoint written before the segment (size <= self.size)
    kinds: dict[str, int]  # the newest seq of each kind below ``size``
    index: IndexState  # the index builder after ``size`` leaves

    def tree(self) -> Frontier:
        return Frontier.from_hashes(self.size, self.frontier)


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, LABEL + payload, hashlib.sha256).digest()


def encode_resume(key: bytes, point: ResumePoint) -> bytes:
    """The file's bytes for ``point``, MACed under ``key``."""
    payload = msgpack.packb(
        {
            "size": point.size,
            "prev": point.prev,
            "frontier": list(point.frontier),
            "checkpoint": point.checkpoint.note,
            "kinds": dict(point.kinds),
            "index_nodes": point.index.nodes,
            "index_peaks": [[level, h] for level, h in point.index.peaks],
            "index_block": list(point.index.block),
            "index_skip": point.index.skip,
        },
        use_bin_type=True,
    )
    return RESUME_MAGIC + payload + _mac(key, payload)


def decode_resume(key: bytes, data: bytes, public_key: PublicKey) -> ResumePoint | None:
    """The resume point in ``data`` if it authenticates under ``key`` and is well formed (its
    checkpoint signed by ``public_key`` and no larger than it); None otherwise."""
    if len(data) > MAX_RESUME_SIZE or not data.startswith(RESUME_MAGIC) or len(data) < len(RESUME_MAGIC) + _MAC:
        return None
    payload, mac = data[len(RESUME_MAGIC) : -_MAC], data[-_MAC:]
    if not hmac.compare_digest(mac, _mac(key, payload)):
        return None
    try:  # authentic: what follows guards against a writer bug, not an attacker
        obj = loads_strict(payload, what="the resume point")
    except RecordError:
        return None
    if not isinstance(obj, dict) or set(obj) != set(_KEYS) or any(type(obj[k]) is not t for k, t in _KEYS.items()):
        return None
    size, prev, hashes, kinds = obj["size"], obj["prev"], obj["frontier"], obj["kinds"]
    peaks, block = obj["index_peaks"], obj["index_block"]
    if size < 1 or len(prev) != 32 or not all(type(k) is str and type(v) is int and v < size for k, v in kinds.items()):
        return None
    if not all(type(h) is bytes and len(h) == 32 for h in (*hashes, *block)) or len(block) >= 256:
        return None
    if not all(type(p) is list and len(p) == 2 and type(p[0]) is int and type(p[1]) is bytes for p in peaks):
        return None
    try:
        Frontier.from_hashes(size, hashes)
        cp = verify_checkpoint(obj["checkpoint"], public_key)
    except (ValueError, CheckpointError):
        return None
    if cp.size > size:
        return None
    index = IndexState(size, obj["index_nodes"], tuple((p[0], p[1]) for p in peaks), tuple(block), obj["index_skip"])
    return ResumePoint(size, prev, tuple(hashes), cp, dict(kinds), index)
