"""Record encoding (pure): msgpack maps, hashed and chained over their exact bytes.

A record is the msgpack map ``{"seq", "time", "kind", "body", "prev"}`` (in that
order when Kestrel writes it; readers accept any order because they never
re-encode). ``prev`` is the leaf hash of the previous record (32 zero bytes for
seq 0), so every record commits to the whole history before it. See
docs/ledger-format.md.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import struct
import threading
from dataclasses import dataclass
from typing import Any

import msgpack

from .codec import is_strict, loads_strict
from .errors import RecordError

__all__ = [
    "Record",
    "encode_record",
    "prepare_body",
    "assemble_record",
    "decode_record",
    "check_fields",
    "valid_kind",
    "leaf_hash",
    "ZERO_HASH",
    "MAX_RECORD_SIZE",
    "MAX_KIND",
]

ZERO_HASH = bytes(32)
MAX_RECORD_SIZE = 1 << 20  # 1 MiB: record digests of large data, not the data
_KIND = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z0-9_*-]+)*")  # used with fullmatch: no "$" (it allows a final newline)
MAX_KIND = 64
_KEYS = frozenset({"seq", "time", "kind", "body", "prev"})
_pack = functools.partial(msgpack.packb, use_bin_type=True)  # packb: thread-safe
_packers = threading.local()  # packb builds a Packer (and its 256 KiB buffer) per call: reuse one per thread
_HEAD_SEQ, _TIME, _PREV_BIN32 = b"\x85" + _pack("seq"), _pack("time") + b"\xcb", _pack("prev") + b"\xc4\x20"
_FLOAT = struct.Struct(">d")


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})  # exact types msgpack packs canonically


def leaf_hash(raw: bytes) -> bytes:
    """RFC 6962 leaf hash of the exact stored record bytes."""
    return hashlib.sha256(b"\x00" + raw).digest()


@dataclass(frozen=True)
class Record:
    """One decoded record. ``raw`` is the exact stored bytes; ``digest`` its leaf hash."""

    seq: int
    time: float
    kind: str
    body: dict[str, Any]
    prev: bytes
    raw: bytes
    digest: bytes

    @property
    def digest_hex(self) -> str:
        return self.digest.hex()

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly view (bytes become hex strings)."""
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "body": _jsonable(self.body),
            "digest": self.digest.hex(),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def valid_kind(kind: Any) -> bool:
    """A str of at most 64 characters matching the kind pattern (docs/ledger-format.md, section 1)."""
    return type(kind) is str and len(kind) <= MAX_KIND and _KIND.fullmatch(kind) is not None


@functools.lru_cache(maxsize=256)
def _kind_prefix(kind: str) -> bytes:
    if not valid_kind(kind):
        raise RecordError(
            f"invalid record kind {kind!r}",
            hint="kinds are dotted lower-case names such as 'policy.decision' (at most 64 characters)",
        )
    prefix: bytes = _pack("kind") + _pack(kind) + _pack("body")
    return prefix


def prepare_body(kind: str, body: dict[str, Any]) -> bytes:
    """Check ``kind`` and encode ``kind`` and ``body`` (the part of a record known before its seq)."""
    prefix = _kind_prefix(kind) if isinstance(kind, str) else _kind_prefix.__wrapped__(kind)
    if not isinstance(body, dict) or not all(map(str.__instancecheck__, body)):
        raise RecordError(f"record body for {kind!r} must be a dict with str keys")
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, buf_size=4096)
    try:
        packed: bytes = packer.pack(body)  # a failed pack leaves the packer empty
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecordError(
            f"record body for {kind!r} is not msgpack-encodable: {exc}",
            hint="use str, int, float, bool, None, bytes, list and dict with str keys only",
        ) from None
    if len(packed) + len(prefix) > MAX_RECORD_SIZE - 128:
        raise RecordError(
            f"record {kind!r} is {len(packed) + len(prefix)} bytes, over the {MAX_RECORD_SIZE} byte limit",
            hint="store large data elsewhere and record its digest",
        )
    if not _SCALARS.issuperset(map(type, body.values())) and is_strict(packed) is None:
        # the writer stores only what the verifier accepts: a body of plain scalars packs into the
        # profile by construction; anything nested (maps with non-str keys, ext types) is decoded and checked
        raise RecordError(
            f"record body for {kind!r} is not in the ledger's msgpack profile: {loads_strict_reason(packed)}",
            hint="use str, int, float, bool, None, bytes, list and dict with str keys only (no ext types)",
        )
    packed = prefix + packed
    return packed


def loads_strict_reason(data: bytes) -> str:
    try:
        loads_strict(data, what="body")
    except RecordError as exc:
        return exc.message.split(": ", 1)[-1]
    return "not in the profile"


def _uint(n: int) -> bytes:
    """msgpack's smallest encoding of a non-negative int (what packb writes)."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return b"\xcc" + bytes((n,))
    if n < 0x10000:
        return b"\xcd" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


def assemble_record(*, seq: int, time: float, prepared: bytes, prev: bytes) -> bytes:
    """The record bytes: exactly ``msgpack.packb({"seq", "time", "kind", "body", "prev"})``."""
    if seq < 0 or len(prev) != 32:
        raise ValueError("seq must be >= 0 and prev 32 bytes")
    return b"".join((_HEAD_SEQ, _uint(seq), _TIME, _FLOAT.pack(time), prepared, _PREV_BIN32, prev))


def encode_record(*, seq: int, time: float, kind: str, body: dict[str, Any], prev: bytes) -> bytes:
    """Encode a record; raise :class:`RecordError` for a bad kind, body type or size."""
    return assemble_record(seq=seq, time=time, prepared=prepare_body(kind, body), prev=prev)


def decode_record(raw: bytes) -> Record:
    """Decode and check stored record bytes strictly (codec profile, then fields); raise :class:`RecordError`."""
    if len(raw) > MAX_RECORD_SIZE:
        raise RecordError(f"record is {len(raw)} bytes, over the {MAX_RECORD_SIZE} byte limit")
    obj = loads_strict(raw)
    problem = check_fields(obj)
    if problem:
        raise RecordError(problem)
    return Record(obj["seq"], obj["time"], obj["kind"], obj["body"], obj["prev"], bytes(raw), leaf_hash(raw))


def check_fields(obj: Any) -> str | None:
    """Why a decoded (profile-checked) object is not a record, or None if it is one."""
    if type(obj) is not dict or len(obj) != 5 or set(obj) != _KEYS:
        return "record is not a map with exactly the keys seq, time, kind, body, prev"
    seq, time, kind, body, prev = obj["seq"], obj["time"], obj["kind"], obj["body"], obj["prev"]
    if type(seq) is not int or seq < 0:
        return f"record seq is not a non-negative integer: {seq!r}"
    if type(time) is not float or not math.isfinite(time):
        return f"record time is not a finite float64: {time!r}"
    if not valid_kind(kind):
        return f"record kind is invalid (at most {MAX_KIND} characters of the kind pattern): {kind!r}"
    if type(body) is not dict:
        return "record body is not a map"
    if type(prev) is not bytes or len(prev) != 32:
        return "record prev is not a 32-byte hash"
    return None
