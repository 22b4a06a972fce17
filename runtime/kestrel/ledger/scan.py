"""The verifier's fast path (pure): a run of well-formed record frames in one tight loop.

:func:`scan_records` applies exactly the checks of :func:`frame.read_frame`,
:func:`record.decode_record` and ``LogWalker.add`` (header and payload CRCs,
msgpack map of the five keys with their types, ``seq`` in order, ``prev``
chaining) without building ``Frame`` or ``Record`` objects. It stops, with no
side effect, at the first frame that is not a well-formed next record; the
caller then handles that frame on the general path, which names the problem.
So detection is the general path's, only the common case is faster.
"""

from __future__ import annotations

import hashlib
import math
import zlib

from .codec import strict_checker
from .frame import MAGIC, MAX_PAYLOAD, RECORD, RECORD_HEAD
from .record import MAX_RECORD_SIZE, valid_kind

__all__ = ["scan_records"]

_LEAF = hashlib.sha256(b"\x00")  # leaf hashes: copies of a hasher already fed the 0x00 prefix
_KINDS_SEEN: set[str] = set()  # kinds already checked by valid_kind (valid ones only)


def scan_records(
    view: memoryview,
    off: int,
    *,
    seq: int,
    prev: bytes,
    leaves: list[bytes],
    limit: int | None = None,
    kinds: dict[str, int] | None = None,
) -> tuple[int, bytes]:
    """Walk record frames from ``off`` while they verify, appending their leaf hashes to ``leaves``.

    ``seq`` is the next expected sequence number and ``prev`` the hash it must chain to;
    at most ``limit - seq`` records are taken. Returns the offset of the first frame not
    taken and the last leaf hash (``prev`` if none was taken). ``kinds``, if given, maps each kind
    seen to the seq of its latest record.
    """
    n = len(view)
    head = RECORD_HEAD.unpack_from
    crc32 = zlib.crc32
    strict = strict_checker(tail=b"\xa4prev\xc4\x20", tail_len=32)  # prev, written last, is a bin value
    finite = math.isfinite
    leaf = _LEAF.copy
    append = leaves.append
    seen = _KINDS_SEEN
    stop = limit if limit is not None else -1
    while n - off >= 16 and seq != stop:
        magic, ftype, reserved, length, head_crc, payload_crc = head(view, off)
        if ftype != RECORD or reserved or magic != MAGIC or length > MAX_PAYLOAD:
            break
        end = off + 16 + length
        if end > n or crc32(view[off : off + 8]) != head_crc:
            break
        framed = view[off + 16 : end]
        if crc32(framed) != payload_crc:
            break
        if length > MAX_RECORD_SIZE:
            break
        payload = bytes(framed)
        obj = strict(payload)  # the codec profile (codec.py): None if refused
        if type(obj) is not dict or len(obj) != 5:
            break
        try:
            rseq, time, kind, body, rprev = obj["seq"], obj["time"], obj["kind"], obj["body"], obj["prev"]
        except KeyError:  # the general path says which
            break
        if type(rseq) is not int or rseq != seq or type(time) is not float or type(body) is not dict:
            break
        if not finite(time):
            break
        if type(rprev) is not bytes or rprev != prev:
            break
        if type(kind) is not str:
            break
        if kind not in seen:
            if not valid_kind(kind):
                break
            if len(seen) < 4096:
                seen.add(kind)
        h = leaf()
        h.update(payload)
        prev = h.digest()
        append(prev)
        if kinds is not None:
            kinds[kind] = seq
        seq += 1
        off = end
    return off, prev
