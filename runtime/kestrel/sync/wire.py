"""Sync topics and payloads (pure). Specified in docs/sync-protocol.md.

One topic tree per agent, named by its AgentID (a did:key has no ``/``, ``+`` or ``#``)::

    kestrel/<did>/ledger/batch    QoS 1, not retained: SyncBatch messages, in ledger order
    kestrel/<did>/ledger/resend   QoS 1: a collector asks the agent to send again from a record
    kestrel/<did>/inbox           QoS 1: signed peer messages addressed to <did>
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from ..errors import DataError
from ..identity.keys import KeyFormatError, PublicKey

__all__ = [
    "SyncFormatError",
    "SyncBatch",
    "encode_batch",
    "decode_batch",
    "ledger_topic",
    "resend_topic",
    "encode_resend",
    "decode_resend",
    "inbox_topic",
    "agent_from_topic",
    "LEDGER_FILTER",
    "MAX_BATCH_BYTES",
    "BATCH_OVERHEAD",
]

ROOT = "kestrel"
LEDGER_FILTER = f"{ROOT}/+/ledger/batch"
MAX_BATCH_BYTES = 1 << 20
BATCH_OVERHEAD = 64  # map header, keys and seq ints, excluding the checkpoint note
_VERSION = 1
_FIELDS = frozenset({"v", "start", "records", "checkpoint", "base"})


class SyncFormatError(DataError):
    """A sync topic or payload is malformed."""


@dataclass(frozen=True)
class SyncBatch:
    """Records ``start .. start+len(records)-1`` (exact stored bytes) and optionally a checkpoint."""

    start: int
    records: tuple[bytes, ...]
    checkpoint: bytes | None = None
    base: bytes | None = None  # a pruned ledger's signed base payload (docs/ledger-format.md, section 11)

    @property
    def end(self) -> int:
        return self.start + len(self.records)


def ledger_topic(did: str) -> str:
    return f"{ROOT}/{did}/ledger/batch"


def resend_topic(did: str) -> str:
    return f"{ROOT}/{did}/ledger/resend"


def inbox_topic(did: str) -> str:
    return f"{ROOT}/{did}/inbox"


def agent_from_topic(topic: str) -> PublicKey:
    """The AgentID named by a ``kestrel/<did>/...`` topic, as a verifying key."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        raise SyncFormatError(f"topic {topic!r} is not under {ROOT}/<did>/")
    try:
        return PublicKey.from_did(parts[1])
    except KeyFormatError as exc:
        raise SyncFormatError(f"topic {topic!r} does not name an AgentID: {exc.message}") from None


def encode_batch(batch: SyncBatch) -> bytes:
    doc: dict[str, Any] = {"v": _VERSION, "start": batch.start, "records": list(batch.records)}
    if batch.checkpoint is not None:
        doc["checkpoint"] = batch.checkpoint
    if batch.base is not None:
        doc["base"] = batch.base
    return msgpack.packb(doc, use_bin_type=True)


def decode_batch(payload: bytes) -> SyncBatch:
    if len(payload) > MAX_BATCH_BYTES:
        raise SyncFormatError(f"sync batch is {len(payload)} bytes, over {MAX_BATCH_BYTES}")
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types (ExtraData, ValueError, ...)
        raise SyncFormatError(f"sync batch is not msgpack: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or doc.get("v") != _VERSION:
        raise SyncFormatError("sync batch is not a version-1 map")
    start, records, checkpoint = doc.get("start"), doc.get("records"), doc.get("checkpoint")
    if type(start) is not int or start < 0:
        raise SyncFormatError("sync batch 'start' is not a non-negative integer")
    if not isinstance(records, list) or not all(isinstance(r, bytes) for r in records):
        raise SyncFormatError("sync batch 'records' is not a list of byte strings")
    if checkpoint is not None and not isinstance(checkpoint, bytes):
        raise SyncFormatError("sync batch 'checkpoint' is not a byte string")
    base = doc.get("base")
    if base is not None and not isinstance(base, bytes):
        raise SyncFormatError("sync batch 'base' is not a byte string")
    if set(doc) - _FIELDS:
        raise SyncFormatError(f"sync batch has unknown fields {sorted(set(doc) - _FIELDS)}")
    return SyncBatch(start, tuple(records), checkpoint, base)


def encode_resend(start: int) -> bytes:
    return msgpack.packb({"v": _VERSION, "from": start})


def decode_resend(payload: bytes) -> int:
    """The record a resend request asks to start from."""
    try:
        doc = msgpack.unpackb(payload[:256], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types
        raise SyncFormatError(f"resend request is not msgpack: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or doc.get("v") != _VERSION or type(doc.get("from")) is not int or doc["from"] < 0:
        raise SyncFormatError("resend request is not a version-1 map with a non-negative 'from'")
    return doc["from"]
