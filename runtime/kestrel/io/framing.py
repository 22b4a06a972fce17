"""Serial framing (pure: bytes in, frames out, no I/O). Specified in docs/io.md.

Two framings:

* :class:`LineFraming`: text lines ended by ``\\n`` (a trailing ``\\r`` is removed),
  optionally NMEA 0183 sentences (``$...*HH``) whose XOR checksum is checked.
* :class:`LengthPrefixedFraming`: ``[sync][length, 1 or 2 bytes big-endian][payload]
  [CRC of length+payload, big-endian]``; sync and CRC optional.

Garbage, over-long frames and bad checksums are counted and skipped; the framer
resynchronises on the next terminator (line) or by sliding one byte (binary). The
buffer never exceeds the maximum frame size plus one read, whatever arrives.
"""

from __future__ import annotations

import binascii
import zlib
from dataclasses import dataclass
from typing import Literal, Protocol

from ..errors import ConfigError

__all__ = [
    "LineFraming",
    "LengthPrefixedFraming",
    "FramerStats",
    "Framer",
    "make_framer",
    "encode_frame",
    "nmea_checksum",
    "nmea_sentence",
]

CrcName = Literal["crc16", "crc32"]
_CRC_LEN = {None: 0, "crc16": 2, "crc32": 4}


@dataclass(frozen=True)
class LineFraming:
    terminator: bytes = b"\n"
    max_line: int = 1024
    nmea_checksum: bool = False

    def __post_init__(self) -> None:
        if not self.terminator or not 8 <= self.max_line <= 1 << 20:
            raise ConfigError("line framing needs a terminator and 8 <= max_line <= 1 MiB", key="max_line")


@dataclass(frozen=True)
class LengthPrefixedFraming:
    length_bytes: int = 2
    crc: CrcName | None = None
    sync: bytes = b""
    max_frame: int = 4096

    def __post_init__(self) -> None:
        if self.length_bytes not in (1, 2):
            raise ConfigError("length_bytes must be 1 or 2", key="length_bytes")
        if self.crc not in _CRC_LEN:
            raise ConfigError(f"crc must be one of crc16, crc32 or none, got {self.crc!r}", key="crc")
        limit = (1 << (8 * self.length_bytes)) - 1
        if not 1 <= self.max_frame <= limit:
            raise ConfigError(
                f"max_frame must be within 1..{limit} for {self.length_bytes}-byte lengths", key="max_frame"
            )
        if len(self.sync) > 8:
            raise ConfigError("sync marker is at most 8 bytes", key="sync")


@dataclass
class FramerStats:
    frames: int = 0
    garbage_bytes: int = 0  # bytes skipped while looking for a frame
    bad_checksums: int = 0  # frames whose NMEA checksum or CRC did not match
    overruns: int = 0  # frames longer than the maximum (dropped)


class Framer(Protocol):
    stats: FramerStats

    def feed(self, data: bytes) -> list[bytes]: ...

    def reset(self) -> None: ...


def make_framer(framing: LineFraming | LengthPrefixedFraming) -> Framer:
    if isinstance(framing, LineFraming):
        return _LineFramer(framing)
    if isinstance(framing, LengthPrefixedFraming):
        return _LengthFramer(framing)
    raise ConfigError(f"unknown framing {framing!r}", key="framing")


def nmea_checksum(body: bytes) -> int:
    """XOR of the bytes between ``$`` and ``*``."""
    c = 0
    for b in body:
        c ^= b
    return c


def nmea_sentence(body: str | bytes) -> bytes:
    """``GPGGA,...`` -> ``$GPGGA,...*HH\\r\\n``."""
    raw = body.encode("ascii") if isinstance(body, str) else body
    return b"$" + raw + b"*%02X\r\n" % nmea_checksum(raw)


def encode_frame(framing: LengthPrefixedFraming, payload: bytes) -> bytes:
    """One binary frame for ``framing`` (what a device would send, or what we write)."""
    if not 1 <= len(payload) <= framing.max_frame:
        from .errors import PayloadTooLarge

        raise PayloadTooLarge(f"frame payload of {len(payload)} bytes; allowed 1..{framing.max_frame}")
    body = len(payload).to_bytes(framing.length_bytes, "big") + payload
    return framing.sync + body + _crc(framing.crc, body)


def _crc(name: CrcName | None, data: bytes | memoryview) -> bytes:
    if name == "crc16":  # CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)
        return binascii.crc_hqx(data, 0xFFFF).to_bytes(2, "big")
    if name == "crc32":  # ISO-HDLC / zlib
        return zlib.crc32(data).to_bytes(4, "big")
    return b""


class _LineFramer:
    def __init__(self, framing: LineFraming) -> None:
        self.f = framing
        self.stats = FramerStats()
        self._buf = bytearray()
        self._discarding = False  # inside an over-long line: drop until the next terminator

    def reset(self) -> None:
        self._buf.clear()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf, term = self._buf, self.f.terminator
        buf += data
        while True:
            i = buf.find(term)
            if i < 0:
                if len(buf) > self.f.max_line:
                    if not self._discarding:
                        self.stats.overruns += 1
                    self.stats.garbage_bytes += len(buf) - (len(term) - 1)
                    del buf[: len(buf) - (len(term) - 1)]
                    self._discarding = True
                return out
            line = bytes(buf[:i])
            del buf[: i + len(term)]
            if self._discarding:
                self._discarding = False
                self.stats.garbage_bytes += len(line) + len(term)
                continue
            if len(line) > self.f.max_line:
                self.stats.overruns += 1
                self.stats.garbage_bytes += len(line) + len(term)
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                continue
            if self.f.nmea_checksum:
                checked = self._nmea(line)
                if checked is None:
                    continue
                line = checked
            self.stats.frames += 1
            out.append(line)

    def _nmea(self, line: bytes) -> bytes | None:
        start = max(line.rfind(b"$"), line.rfind(b"!"))
        if start < 0:
            self.stats.garbage_bytes += len(line)
            return None
        if start:
            self.stats.garbage_bytes += start
            line = line[start:]
        star = line.rfind(b"*")
        if star < 0 or len(line) - star != 3:
            self.stats.bad_checksums += 1
            return None
        try:
            want = int(line[star + 1 :], 16)
        except ValueError:
            self.stats.bad_checksums += 1
            return None
        if nmea_checksum(line[1:star]) != want:
            self.stats.bad_checksums += 1
            return None
        return line


class _LengthFramer:
    def __init__(self, framing: LengthPrefixedFraming) -> None:
        self.f = framing
        self.stats = FramerStats()
        self._buf = bytearray()
        self._crc_len = _CRC_LEN[framing.crc]

    def reset(self) -> None:
        self._buf.clear()

    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self.stats.garbage_bytes += n

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf, f = self._buf, self.f
        buf += data
        sync, lb = f.sync, f.length_bytes
        while True:
            if sync:
                i = buf.find(sync)
                if i < 0:
                    self._skip(max(0, len(buf) - (len(sync) - 1)))
                    return out
                if i:
                    self._skip(i)
            hdr = len(sync) + lb
            if len(buf) < hdr:
                return out
            n = int.from_bytes(buf[len(sync) : hdr], "big")
            if n == 0 or n > f.max_frame:
                self.stats.overruns += n > f.max_frame
                self._skip(1)
                continue
            total = hdr + n + self._crc_len
            if len(buf) < total:
                return out
            if self._crc_len:
                body = memoryview(buf)[len(sync) : hdr + n]
                ok = _crc(f.crc, body) == bytes(buf[hdr + n : total])
                body.release()
                if not ok:
                    self.stats.bad_checksums += 1
                    self._skip(1)
                    continue
            out.append(bytes(buf[hdr : hdr + n]))
            del buf[:total]
            self.stats.frames += 1
