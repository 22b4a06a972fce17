"""Frames (pure): the unit of storage, each with its type, length and CRC-32.

Frame layout (all integers big-endian)::

    0  2  magic  b"KF"
    2  1  type   0x01 record, 0x02 checkpoint, 0x03 base (exports of a pruned log), 0x04 tail seal,
                 0x05 padding (zero bytes that end a commit on a page boundary: format version 3)
    3  1  0x00   reserved
    4  4  length of the payload (at most 16 MiB)
    8  4  CRC-32 (zlib/ISO-HDLC) of bytes 0..7          (header check)
    12 4  CRC-32 of the payload                         (payload check)
    16 .. payload

A single flipped bit anywhere fails one of the two CRCs. The separate header
check tells an unfinished write (intact header, payload cut short) from a
damaged length field, so a flipped bit is never mistaken for a torn tail.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "RECORD",
    "CHECKPOINT",
    "BASE",
    "TAIL_SEAL",
    "PAD",
    "HEADER_SIZE",
    "pad_frame",
    "pad_valid",
    "Frame",
    "FrameDamage",
    "encode_frame",
    "iter_frames",
    "find_next_frame",
    "read_frame",
    "record_frame",
    "RECORD_HEAD",
]

RECORD = 0x01
CHECKPOINT = 0x02
BASE = 0x03  # a pruned log's base, in export files only (see base.py)
TAIL_SEAL = 0x04  # the writer's MAC over its unsigned records (format version 2, see tailmac.py)
PAD = 0x05  # padding: a commit ends on a flash page boundary (format version 3, see pad_frame)
_TYPES = frozenset({RECORD, CHECKPOINT, BASE, TAIL_SEAL, PAD})
MAGIC = b"KF"
HEADER_SIZE = 16
MAX_PAYLOAD = 16 << 20
_HEAD = struct.Struct(">2sBBI")
_CRCS = struct.Struct(">II")
RECORD_HEAD = struct.Struct(">2sBBIII")  # the whole 16-byte header: magic, type, reserved, length, CRCs


@dataclass(frozen=True)
class Frame:
    type: int
    payload: bytes
    offset: int  # of the frame header within the scanned buffer
    end: int  # offset just past the frame


@dataclass(frozen=True)
class FrameDamage:
    """Why scanning stopped: ``torn`` (buffer ends inside a frame) or ``bad`` (checksum/header)."""

    offset: int
    kind: str  # "torn" | "bad"
    detail: str


def encode_frame(ftype: int, payload: bytes) -> bytes:
    if ftype not in _TYPES:
        raise ValueError(f"unknown frame type {ftype}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("frame payload too large")
    head = _HEAD.pack(MAGIC, ftype, 0, len(payload))
    return head + _CRCS.pack(zlib.crc32(head), zlib.crc32(payload)) + payload


def record_frame(payload: bytes) -> bytes:
    """``encode_frame(RECORD, payload)`` for a payload already within the size limit (the commit path)."""
    head = _HEAD.pack(MAGIC, RECORD, 0, len(payload))
    return head + _CRCS.pack(zlib.crc32(head), zlib.crc32(payload)) + payload


def pad_frame(size: int) -> bytes:
    """A padding frame of exactly ``size`` bytes (at least a header): its payload is zero bytes.

    A commit that ends inside a flash page leaves that page to be written again, whole, by the next
    commit; padding to the page boundary writes fewer bytes than that rewrite (docs/ledger-format.md, 3)."""
    if size < HEADER_SIZE:
        raise ValueError("a padding frame is at least a frame header")
    return encode_frame(PAD, bytes(size - HEADER_SIZE))


def pad_valid(payload: bytes) -> bool:
    """A padding frame's payload: zero bytes only, less than a page (what a writer pads with)."""
    return len(payload) < MAX_PAD and not payload.strip(b"\x00")


MAX_PAD = 8192  # bytes of a padding frame's payload, at most (a writer pads less than a page)


def read_frame(buf: bytes | memoryview, off: int) -> Frame | FrameDamage:
    """The frame at ``off``, or why there is none."""
    end_of_buf = len(buf)
    if end_of_buf - off < HEADER_SIZE:
        return FrameDamage(off, "torn", f"{end_of_buf - off} bytes left, less than a frame header")
    magic, ftype, reserved, length = _HEAD.unpack_from(buf, off)
    head_crc, payload_crc = _CRCS.unpack_from(buf, off + 8)
    if zlib.crc32(buf[off : off + 8]) != head_crc:
        return FrameDamage(off, "bad", "frame header checksum mismatch")
    if magic != MAGIC or ftype not in _TYPES or reserved != 0 or length > MAX_PAYLOAD:
        return FrameDamage(off, "bad", "invalid frame header")
    end = off + HEADER_SIZE + length
    if end > end_of_buf:
        return FrameDamage(off, "torn", f"frame of {length} bytes runs past the end")
    if zlib.crc32(buf[off + HEADER_SIZE : end]) != payload_crc:
        return FrameDamage(off, "bad", "frame payload checksum mismatch")
    return Frame(ftype, bytes(buf[off + HEADER_SIZE : end]), off, end)


def iter_frames(buf: bytes, start: int = 0) -> Iterator[Frame | FrameDamage]:
    """Yield frames from ``buf[start:]``; the last item is a FrameDamage if the buffer ends badly."""
    off = start
    view = memoryview(buf)
    while off < len(buf):
        item = read_frame(view, off)
        yield item
        if isinstance(item, FrameDamage):
            return
        off = item.end


def find_next_frame(buf: bytes, start: int) -> Frame | None:
    """The first intact frame at an offset >= ``start`` (used to tell a torn tail from damage)."""
    view = memoryview(buf)
    pos = buf.find(MAGIC, start)
    while pos != -1:
        item = read_frame(view, pos)
        if isinstance(item, Frame):
            return item
        pos = buf.find(MAGIC, pos + 1)
    return None
