"""Incremental reading of a ledger directory's frame stream (docs/ledger-format.md, section 3).

The ledger's own readers load every segment in full on each call; a sync that follows a growing
ledger for days must not. :class:`SegmentTail` keeps its place (segment, byte offset, next record
seq) and reads only bytes appended since, moving to the next segment when one appears. It never
writes, and it stops at an unfinished frame (a write in progress) until more bytes arrive.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DataError, TransportError
from ..ledger.frame import RECORD, Frame, FrameDamage, iter_frames
from ..ledger.store import SEGMENT_MAGIC, SEGMENT_MAGICS

__all__ = ["SegmentTail"]

_NAME = re.compile(r"^([0-9]{20})\.seg$")
_CHUNK = 1 << 20


class SegmentTail:
    """Frames from record ``start`` on, in stream order; ``next()`` returns None when caught up."""

    def __init__(self, ledger_dir: str | os.PathLike[str], start: int) -> None:
        self.dir = Path(ledger_dir)
        segments = self._segments()
        first = [s for s in segments if s <= start]
        self._segment: int | None = first[-1] if first else (segments[0] if segments else None)
        self._offset = len(SEGMENT_MAGIC)
        self._buf = b""
        self._bufpos = 0
        self.seq = self._segment if self._segment is not None else 0  # seq of the next record frame
        self._start = start

    def _segments(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TransportError(f"cannot list the ledger directory {self.dir}: {exc.strerror or exc}") from None
        return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)

    def _path(self, first_seq: int) -> Path:
        return self.dir / f"{first_seq:020d}.seg"

    def _fill(self) -> bool:
        """Read newly appended bytes of the current segment (or move to the next); True if any."""
        if self._segment is None:
            segments = self._segments()
            if not segments:
                return False
            self._segment, self.seq = segments[0], segments[0]
        path = self._path(self._segment)
        try:
            with open(path, "rb") as fh:
                if self._offset == len(SEGMENT_MAGIC) and fh.read(len(SEGMENT_MAGIC)) not in SEGMENT_MAGICS:
                    raise DataError(
                        f"ledger segment {path} does not start with the ledger magic bytes",
                        hint="run `kestrel audit verify`",
                    )
                fh.seek(self._offset)
                data = fh.read(_CHUNK)
        except OSError as exc:
            raise TransportError(f"cannot read ledger segment {path}: {exc.strerror or exc}") from None
        if data:
            self._buf = self._buf[self._bufpos :] + data
            self._bufpos = 0
            self._offset += len(data)
            return True
        later = [s for s in self._segments() if s > self._segment]
        if later:  # this segment is final (a torn remainder, if any, was never acknowledged): move on
            self._segment, self._offset, self._buf, self._bufpos = later[0], len(SEGMENT_MAGIC), b"", 0
            if later[0] != self.seq:
                raise DataError(
                    f"ledger segment {self._path(later[0])} starts at record {later[0]}, expected {self.seq}",
                    hint="run `kestrel audit verify`",
                )
            return self._fill()
        return False

    def next(self) -> Frame | None:
        """The next complete frame at or after record ``start`` (checkpoints included), or None."""
        while True:
            frame = self._parse()
            if frame is None:
                if not self._fill():
                    return None
                continue
            if frame.type == RECORD:
                self.seq += 1
                if self.seq - 1 < self._start:
                    continue
            elif self.seq < self._start:
                continue
            return frame

    def _parse(self) -> Frame | None:
        if self._bufpos >= len(self._buf):
            return None
        item = next(iter_frames(self._buf, self._bufpos), None)
        if item is None:
            return None
        if isinstance(item, FrameDamage):
            if item.kind == "torn":
                return None  # an unfinished write: wait for the rest
            raise DataError(
                f"ledger frame damaged in segment {self._segment:020d}.seg ({item.detail})",
                hint="run `kestrel audit verify` to locate the damage",
            )
        self._bufpos = item.end
        return item
