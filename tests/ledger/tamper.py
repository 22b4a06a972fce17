"""Tampering helpers for the ledger tests: edit a frame stream the way an attacker would."""

from __future__ import annotations

from dataclasses import dataclass

from kestrel.ledger.frame import RECORD, Frame, encode_frame, iter_frames
from kestrel.ledger.record import decode_record


@dataclass(frozen=True)
class Span:
    type: int
    start: int
    end: int
    payload: bytes

    @property
    def seq(self) -> int | None:
        return decode_record(self.payload).seq if self.type == RECORD else None


def spans(buf: bytes, start: int = 0) -> list[Span]:
    out = []
    for item in iter_frames(buf, start):
        assert isinstance(item, Frame), f"stream already damaged at {item.offset}"
        out.append(Span(item.type, item.offset, item.end, item.payload))
    return out


def record_span(buf: bytes, seq: int, start: int = 0) -> Span:
    return next(s for s in spans(buf, start) if s.seq == seq)


def remove(buf: bytes, span: Span) -> bytes:
    return buf[: span.start] + buf[span.end :]


def insert_at(buf: bytes, offset: int, data: bytes) -> bytes:
    return buf[:offset] + data + buf[offset:]


def swap(buf: bytes, a: Span, b: Span) -> bytes:
    assert a.end <= b.start
    return buf[: a.start] + buf[b.start : b.end] + buf[a.end : b.start] + buf[a.start : a.end] + buf[b.end :]


def flip_bit(buf: bytes, bit: int) -> bytes:
    out = bytearray(buf)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def reframe(ftype: int, payload: bytes) -> bytes:
    """A frame with a correct checksum: what an attacker who edits records writes."""
    return encode_frame(ftype, payload)
