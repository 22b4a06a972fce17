"""Segment files (I/O shell): reading, tail recovery, appending with rotation.

A ledger directory holds ``<first seq, 20 digits>.seg`` files. Each starts with
the 8-byte magic ``KLEDGER`` + version (``\\x02``; ``\\x01`` still read) followed by
frames; the log is the concatenation of the segments' frames in name order. Files
are only ever appended to; the exception is cutting a tail (unfinished, or not
sealed by this device) when the ledger is opened for writing, after saving the cut
bytes under ``torn/``. Readers map segments (:func:`map_segment`) rather than load them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import mmap
import os
import re
from pathlib import Path
from typing import Any

from .._internal.fsutil import atomic_write, ensure_private_dir, fsync_dir
from .base import BASE_MAGIC, MAX_BASE_SIZE, base_size_unsafe
from .errors import LedgerBusyError, LedgerIOError, LedgerVerificationError, Reason
from .resume import MAX_RESUME_SIZE, RESUME_FILE
from .verify import Part

__all__ = [
    "SEGMENT_MAGIC",
    "SEGMENT_MAGIC_V1",
    "SEGMENT_MAGIC_V2",
    "SEGMENT_MAGICS",
    "BASE_FILE",
    "cut_tail",
    "map_segment",
    "segment_parts",
    "segment_files",
    "read_base",
    "write_base",
    "read_resume",
    "write_resume",
    "unlink_segments",
    "cut_torn_tail",
    "lock_directory",
    "SegmentWriter",
]

log = logging.getLogger("kestrel.ledger")

SEGMENT_MAGIC = b"KLEDGER\x03"  # format version 3: segments may hold padding frames (type 0x05)
SEGMENT_MAGIC_V2 = b"KLEDGER\x02"  # version 2 (tail seals, type 0x04, but no padding): still read
SEGMENT_MAGIC_V1 = b"KLEDGER\x01"  # version 1 (no tail seals): still read and verified
SEGMENT_MAGICS = (SEGMENT_MAGIC, SEGMENT_MAGIC_V2, SEGMENT_MAGIC_V1)  # every version a reader accepts
_MAGICS = SEGMENT_MAGICS
BASE_FILE = "base"  # a pruned log's base (see base.py); absent until the first prune
_DSYNC = getattr(os, "RWF_DSYNC", 0)  # per-write O_DSYNC (pwritev2); 0 once the kernel refuses it
_NAME = re.compile(r"^([0-9]{20})\.seg$")


def _io_error(action: str, path: Path, exc: OSError) -> LedgerIOError:
    hint = "check the state directory's permissions (it must belong to the user running kestrel)"
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full: free space, then retry"
    return LedgerIOError(f"cannot {action} {path}: {exc.strerror or exc}", hint=hint)


def read_base(ledger_dir: Path) -> bytes | None:
    """The base payload (unverified) of a pruned log, or None if the log was never pruned."""
    path = ledger_dir / BASE_FILE
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BASE_SIZE + len(BASE_MAGIC) + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _io_error("read the ledger base", path, exc) from None
    if not data.startswith(BASE_MAGIC) or base_size_unsafe(data[len(BASE_MAGIC) :]) is None:
        raise LedgerVerificationError(0, Reason.CORRUPT, f"{path} is not a ledger base file")
    return data[len(BASE_MAGIC) :]


def read_resume(ledger_dir: Path) -> bytes | None:
    """The resume point file's bytes (unauthenticated, at most a little over its size limit), None if absent
    or unreadable (the writer then verifies the whole log)."""
    try:
        with open(ledger_dir / RESUME_FILE, "rb") as fh:
            return fh.read(MAX_RESUME_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ledger: cannot read the resume point (%s); verifying the whole log", exc)
        return None


def write_resume(ledger_dir: Path, data: bytes) -> None:
    """Replace the resume point durably; a failure is logged only (the next open verifies more)."""
    try:
        atomic_write(ledger_dir / RESUME_FILE, data)
    except OSError as exc:
        log.warning("ledger: cannot save the resume point: %s", exc)


def write_base(ledger_dir: Path, payload: bytes) -> None:
    """Replace the base durably (temporary file, fsync, rename, directory fsync)."""
    try:
        atomic_write(ledger_dir / BASE_FILE, BASE_MAGIC + payload)
    except OSError as exc:
        raise _io_error("write the ledger base", ledger_dir / BASE_FILE, exc) from None


def unlink_segments(ledger_dir: Path, paths: list[Path]) -> None:
    """Delete pruned segments (oldest first), then make the deletions durable."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _io_error("delete pruned segment", path, exc) from None
    fsync_dir(ledger_dir)


def segment_files(ledger_dir: Path) -> list[tuple[int, Path, int]]:
    """(first seq, path, bytes) of every segment file, oldest first, without reading them."""
    out = []
    try:
        entries = list(os.scandir(ledger_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _io_error("list the ledger directory", ledger_dir, exc) from None
    for entry in entries:
        m = _NAME.match(entry.name)
        if m:
            try:
                out.append((int(m.group(1)), Path(entry.path), entry.stat(follow_symlinks=False).st_size))
            except FileNotFoundError:
                continue
    return sorted(out)


def map_segment(path: Path, first_seq: int) -> Part:
    """A segment file mapped read-only as a :class:`Part` of the frame stream (pages are loaded as they
    are read, and dropped again by ``release``: reading a segment costs bounded memory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise _io_error("read ledger segment", path, exc) from None
    try:
        size = os.fstat(fd).st_size
        if os.pread(fd, len(SEGMENT_MAGIC), 0) not in _MAGICS:
            raise LedgerVerificationError(
                first_seq, Reason.BIT_FLIP, f"segment {path} does not start with the ledger magic bytes"
            )
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    except OSError as exc:
        raise _io_error("read ledger segment", path, exc) from None
    finally:
        os.close(fd)

    def release(upto: int) -> None:
        upto -= upto % mmap.PAGESIZE
        if upto > 0 and hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_DONTNEED, 0, upto)

    def close() -> None:
        try:
            mm.close()
        except BufferError:  # a view of it is still referenced: the GC unmaps it
            pass

    return Part(mm, len(SEGMENT_MAGIC), first_seq, path.name, release, close)


def segment_parts(ledger_dir: Path, *, from_seq: int = 0) -> list[Part]:
    """Every segment that can hold records >= ``from_seq`` (from the base, if pruned), mapped, oldest first."""
    base = read_base(ledger_dir)
    floor = (base_size_unsafe(base) if base is not None else None) or 0
    files = [(start, path) for start, path, _ in segment_files(ledger_dir) if start >= floor]
    first = 0
    for i, (start, _) in enumerate(files):
        if start <= from_seq:
            first = i
    parts: list[Part] = []
    try:
        for start, path in files[first:]:
            parts.append(map_segment(path, start))
    except BaseException:
        for part in parts:
            part.close()  # type: ignore[misc]
        raise
    return parts


def cut_torn_tail(ledger_dir: Path, path: Path, size: int, torn_bytes: int, *, remove: bool = False) -> dict[str, Any]:
    """Save the last ``torn_bytes`` of the segment ``path`` (``size`` bytes) under torn/, then truncate them
    (or, with ``remove``, delete the whole file, which then holds only its magic).

    Returns what was cut, as the body of the ``ledger.recovered`` record the writer appends."""
    keep = size - torn_bytes
    if keep < len(SEGMENT_MAGIC):
        raise LedgerVerificationError(0, Reason.BIT_FLIP, f"damage crosses segment {path}")
    try:
        with open(path, "rb") as fh:
            fh.seek(keep)
            cut = fh.read(torn_bytes)
    except OSError as exc:
        raise _io_error("read ledger segment", path, exc) from None
    torn_dir = ledger_dir / "torn"
    if not torn_dir.is_dir():
        ensure_private_dir(torn_dir)
        fsync_dir(ledger_dir)
    saved = torn_dir / f"{path.name}.{keep}.bin"
    atomic_write(saved, cut)
    try:
        if remove:
            os.unlink(path)
            fsync_dir(ledger_dir)
        else:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, keep)
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise _io_error("truncate ledger segment", path, exc) from None
    digest = hashlib.sha256(cut).hexdigest()
    log.warning(
        "ledger: cut %d bytes (sha256 %s) from %s at offset %d; saved as %s", len(cut), digest, path, keep, saved
    )
    return {"segment": path.name, "offset": keep, "bytes": len(cut), "sha256": digest, "saved": f"torn/{saved.name}"}


def cut_tail(
    ledger_dir: Path, files: list[tuple[int, Path, int]], stream_offset: int, *, records: int, reason: str
) -> list[dict[str, Any]]:
    """Cut the frame stream of ``files`` ((first seq, path, bytes) of each segment, as walked) at
    ``stream_offset``: save what follows under torn/ and truncate it (whole later segments are saved and
    removed). Returns one ``ledger.recovered`` body per segment touched; ``records`` complete records are
    among the cut bytes, ``reason`` says why."""
    pos = 0
    bodies: list[dict[str, Any]] = []
    for i, (_, path, size) in enumerate(files):
        frames = size - len(SEGMENT_MAGIC)
        if pos + frames > stream_offset or (i == len(files) - 1 and pos + frames >= stream_offset):
            keep = len(SEGMENT_MAGIC) + max(0, stream_offset - pos)
            if keep < size:
                whole = keep == len(SEGMENT_MAGIC) and i > 0
                body = cut_torn_tail(ledger_dir, path, size, size - keep, remove=whole)
                bodies.append({**body, "reason": reason, "records": records if not bodies else 0})
        pos += frames
    return bodies


def lock_directory(ledger_dir: Path) -> int:
    """Take the ledger's single-writer lock (``ledger/lock``, flock); return its fd. Never waits."""
    path = ledger_dir / "lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _io_error("open the ledger lock", path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise LedgerBusyError(
            f"the ledger {ledger_dir} is already open for writing (by pid {holder})",
            holder=holder,
            hint="one writer at a time: stop the agent (`kestrel run`), or act through it (its control socket)",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class SegmentWriter:
    """Appends to the last segment; starts a new one when it would grow past ``max_bytes``."""

    def __init__(self, ledger_dir: Path, *, max_bytes: int, last: tuple[int, Path, int] | None, next_seq: int) -> None:
        self._dir = ledger_dir
        self._max = max_bytes
        self._fd = -1
        if last is None:
            self._create(next_seq)
        else:
            first_seq, path, size = last
            self._open(path, size, first_seq)
            if os.pread(self._fd, len(SEGMENT_MAGIC), 0) != SEGMENT_MAGIC:  # an older version: it may hold
                # seals and padding from now on
                self._upgrade(path)

    def _upgrade(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.pwrite(fd, SEGMENT_MAGIC, 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _io_error("upgrade ledger segment", path, exc) from None

    def _open(self, path: Path, size: int, first_seq: int) -> None:
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
        except OSError as exc:
            raise _io_error("open ledger segment", path, exc) from None
        self._path, self._size, self.first_seq = path, size, first_seq

    def _create(self, first_seq: int) -> None:
        path = self._dir / f"{first_seq:020d}.seg"
        atomic_write(path, SEGMENT_MAGIC)  # temp file, fsync, rename, fsync dir
        self._open(path, len(SEGMENT_MAGIC), first_seq)

    def write_durable(self, data: bytes, *, next_seq: int) -> None:
        """Write ``data`` (whole frames; rotate first if the segment would outgrow its limit) and make
        it durable: one system call where the kernel takes ``RWF_DSYNC`` (Linux >= 4.7: the data and
        what is needed to read it back are durable on return), else write, then ``fdatasync``."""
        global _DSYNC
        self._make_room(len(data), next_seq)
        if _DSYNC and self._write(data, _DSYNC):
            return
        _DSYNC = 0  # no such flag here (or the file system refused it): write, then fdatasync
        self._write(data, 0)
        self.sync()

    def fits(self, size: int) -> bool:
        """True if ``size`` more bytes go into the current segment (no rotation)."""
        return self._size + size <= self._max or self._size <= len(SEGMENT_MAGIC)

    def position_for(self, size: int, next_seq: int) -> tuple[int, int]:
        """Make room for a write of ``size`` bytes (rotating if needed); return where it will start:
        (the segment's first seq, the offset in its file)."""
        self._make_room(size, next_seq)
        return self.first_seq, self._size

    def _make_room(self, size: int, next_seq: int) -> None:
        if self._size > len(SEGMENT_MAGIC) and self._size + size > self._max:
            self.sync()
            os.close(self._fd)
            self._create(next_seq)

    def _write(self, data: bytes, flags: int) -> bool:
        """Write all of ``data``; False if ``flags`` are refused before anything was written."""
        view = memoryview(data)
        try:
            while view:
                n = os.pwritev(self._fd, [view], -1, flags) if flags else os.write(self._fd, view)
                view = view[n:]
                self._size += n
        except OSError as exc:
            if flags and len(view) == len(data) and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return False
            raise _io_error("write ledger segment", self._path, exc) from None
        return True

    def sync(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _io_error("fsync ledger segment", self._path, exc) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
