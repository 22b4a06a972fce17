"""The ledger (I/O shell): open and recover a ledger directory, append, read, prune.

:meth:`Ledger.open` takes the single-writer lock, verifies the log (cutting an
unfinished write, or records this device did not seal, after saving them under
``torn/``), and hands the verified end of the log to a
:class:`~.engine.CommitEngine`, which commits appends in groups and signs
checkpoints (its docstring describes the ``strict`` and ``batched`` modes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._internal.fsutil import atomic_write, ensure_private_dir, fsync_dir
from ..identity.keys import PublicKey, Signer
from .base import LogBase, encode_base
from .checkpoint import SignedCheckpoint, sign_checkpoint
from .engine import CommitEngine, Receipt, WriterState
from .errors import LedgerError, LedgerVerificationError
from .index import IndexBuilder
from .reader import export_chunks, iter_records, load_base, prove, rescan_root, walk_dir
from .record import Record
from .resume import RESUME_FILE, ResumePoint, decode_resume, encode_resume
from .store import (
    SegmentWriter,
    cut_tail,
    cut_torn_tail,
    lock_directory,
    map_segment,
    read_resume,
    segment_files,
    unlink_segments,
    write_base,
    write_resume,
)
from .verify import LogWalker, VerifiedLog, walk_parts

__all__ = ["Ledger", "Receipt", "Durability", "PruneResult", "DiskUsage"]

log = logging.getLogger("kestrel.ledger")
Durability = Literal["strict", "batched"]
_Files = list[tuple[int, Path, int]]  # (first seq, path, bytes) of segments


@dataclass(frozen=True)
class PruneResult:
    """What :meth:`Ledger.prune` dropped: records ``first_seq .. new_first_seq - 1``."""

    first_seq: int  # the first record before the prune
    new_first_seq: int  # the first record kept (the new base's size)
    segments: int  # segment files deleted
    bytes_freed: int

    @property
    def records(self) -> int:
        return self.new_first_seq - self.first_seq


@dataclass(frozen=True)
class DiskUsage:
    """Bytes the ledger directory holds, and its segments as (first seq, bytes), oldest first."""

    total: int
    segments: tuple[tuple[int, int], ...]


@dataclass
class _Recovered:
    """What recovery on open found: the log's verified end, its files, and what it cut."""

    base: LogBase | None
    state: WriterState
    index: IndexBuilder
    writer: SegmentWriter
    cut: list[dict[str, Any]]  # bodies of the ledger.recovered records to append


class Ledger:
    """An open, writable ledger. Use :meth:`open`; close with :meth:`close` (or ``with``)."""

    def __init__(
        self,
        directory: Path,
        *,
        lock_fd: int,
        signer: Signer,
        base: LogBase | None,
        engine: CommitEngine,
    ) -> None:
        """Wrap a recovered ledger (``open`` builds one: it holds the directory's lock ``lock_fd``)."""
        self._dir: Path = directory
        self._lock_fd: int = lock_fd
        self._signer: Signer = signer
        self._pk: PublicKey = signer.public_key
        self._base: LogBase | None = base
        self._engine: CommitEngine = engine
        self._prune_lock: threading.Lock = threading.Lock()
        self._closed: bool = False

    @classmethod
    def open(
        cls,
        ledger_dir: str | Path,
        *,
        signer: Signer,
        durability: Durability = "batched",
        max_batch_delay_ms: float = 5.0,
        max_segment_bytes: int = 64 << 20,
        checkpoint_interval_ms: float = 50.0,
        tail_key: bytes | None = None,
    ) -> Ledger:
        """Open (creating if needed) and recover: cut a torn tail, verify, sign an unsigned tail.

        ``tail_key`` (default: ``signer.ledger_secret()`` where the signer has one) authenticates the
        unsigned tail: records after the last checkpoint that no tail seal under this key vouches for
        were not written by this device's ledger; they are cut, saved under torn/ and recorded
        (``ledger.recovered``), never signed. Without a key every unsigned tail is cut that way."""
        if durability not in ("strict", "batched"):
            raise ValueError("durability must be 'strict' or 'batched'")
        directory = Path(ledger_dir)
        if not directory.is_dir():
            ensure_private_dir(directory)
            fsync_dir(directory.parent)  # the new directory's entry is durable too
        lock_fd = lock_directory(directory)
        if tail_key is None:
            secret = getattr(signer, "ledger_secret", None)
            tail_key = secret() if callable(secret) else None
        try:
            found = _recover(directory, signer.public_key, tail_key, max_segment_bytes)
        except BaseException:
            os.close(lock_fd)
            raise
        engine = CommitEngine(
            directory,
            writer=found.writer,
            index=found.index,
            signer=signer,
            state=found.state,
            tail_key=tail_key,
            strict=durability == "strict",
            delay_s=max_batch_delay_ms / 1000.0,
            checkpoint_interval_s=checkpoint_interval_ms / 1000.0,
        )
        self = cls(directory, lock_fd=lock_fd, signer=signer, base=found.base, engine=engine)
        try:
            engine.start()  # signs the records a crash left unsigned first
            self.flush()  # the recovery checkpoint (if any) is durable before open returns
            # auditors see what was cut: an unacknowledged write, records nobody sealed
            for body in found.cut:
                self.append("ledger.recovered", body)
            self.flush()  # signed, like everything the ledger holds when open returns
        except BaseException:
            self.close()
            raise
        return self

    # -- public API ---------------------------------------------------------
    @property
    def public_key(self) -> PublicKey:
        return self._pk

    @property
    def size(self) -> int:
        """Number of durable records."""
        return self._engine.size

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def first_seq(self) -> int:
        """The first record still stored (0 unless the ledger was pruned)."""
        return self._base.size if self._base is not None else 0

    @property
    def base(self) -> LogBase | None:
        """The signed base of a pruned ledger (None if never pruned)."""
        return self._base

    def disk_usage(self) -> DiskUsage:
        """Bytes used by the ledger directory (segments, base, resume point, torn/ files), and per segment."""
        segs = tuple((start, size) for start, _, size in segment_files(self._dir))
        total = sum(size for _, size in segs)
        for extra in (self._dir / "base", self._dir / "lock", self._dir / RESUME_FILE):
            try:
                total += extra.stat().st_size
            except FileNotFoundError:
                pass
        try:
            total += sum(e.stat().st_size for e in os.scandir(self._dir / "torn") if e.is_file())
        except FileNotFoundError:
            pass
        return DiskUsage(total, segs)

    def prune(self, before_seq: int, *, reason: str = "manual", details: dict[str, Any] | None = None) -> PruneResult:
        """Delete the oldest whole segments whose records all precede ``before_seq``.

        Never the segment being written, never a partial segment: records from the returned
        ``new_first_seq`` on are kept. Crash-safe order: a new signed base (frontier, prev hash and a
        checkpoint for exactly ``new_first_seq`` records) is written and fsynced first, then the
        segments are unlinked and the directory fsynced. A ``ledger.pruned`` record (range,
        ``reason``, counts, and ``details``) is appended when something was dropped.
        """
        with self._prune_lock:
            self._engine.check_open()
            old_first = self.first_seq
            files = [f for f in segment_files(self._dir) if f[0] >= old_first]
            with self._engine.lock:
                durable = self._engine.size
            # a segment goes only if the next one starts at or below before_seq (and it is not the last)
            drop = [
                (start, path, size)
                for (start, path, size), (nxt, _, _) in zip(files, files[1:], strict=False)
                if nxt <= min(before_seq, durable)
            ]
            if not drop:
                return PruneResult(old_first, old_first, 0, 0)
            new_first = files[len(drop)][0]
            pruned = [map_segment(path, start) for start, path, _ in drop]
            try:
                verified, walker = walk_parts(
                    pruned,
                    self._pk,
                    all_signatures=False,
                    base=self._base,
                    keep_leaves=False,
                    rescan=lambda n: rescan_root(self._dir, self._base, n),
                )
            finally:
                for part in pruned:
                    part.close()  # type: ignore[misc]
            if walker.size != new_first:
                raise LedgerError(
                    f"segments before {new_first} hold records up to {walker.size - 1}",
                    hint="run `kestrel audit verify`",
                )
            frontier = walker.frontier()
            cp = sign_checkpoint(self._signer, size=new_first, root=frontier.root())
            base = encode_base(frontier=frontier, prev=walker.prev, checkpoint=cp)
            write_base(self._dir, base.payload)
            self._base = base
            unlink_segments(self._dir, [path for _, path, _ in drop])
            result = PruneResult(old_first, new_first, len(drop), sum(size for *_, size in drop))
        log.warning(
            "ledger: pruned records %d..%d (%d segments, %d bytes): %s",
            old_first,
            new_first - 1,
            result.segments,
            result.bytes_freed,
            reason,
        )
        self.append(
            "ledger.pruned",
            {
                **(details or {}),
                "from": old_first,
                "to": new_first,
                "records": result.records,
                "segments": result.segments,
                "bytes": result.bytes_freed,
                "reason": reason,
            },
        )
        return result

    def submit(self, kind: str, body: dict[str, Any]) -> concurrent.futures.Future[Receipt]:
        """Queue an append; the future resolves to its Receipt once durable."""
        fut: concurrent.futures.Future[Receipt] = concurrent.futures.Future()
        self._engine.enqueue(kind, body, fut)
        return fut

    def append(self, kind: str, body: dict[str, Any]) -> Receipt:
        """Append a record; return once it is durable (see :mod:`.engine`). Thread-safe."""
        return self._engine.enqueue(kind, body, None).wait()

    async def append_async(self, kind: str, body: dict[str, Any]) -> Receipt:
        """:meth:`append` for asyncio callers: waits without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(kind, body))

    def flush(self) -> None:
        """Wait until every append so far is durable and covered by a durable signed checkpoint."""
        self._engine.flush()

    def close(self) -> None:
        """Flush and stop the ledger's threads. Idempotent."""
        if self._closed:
            return
        try:
            self._engine.close()
        finally:
            os.close(self._lock_fd)  # releases the single-writer lock
            self._closed = True

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def records(self, since_seq: int = 0, kind: str | None = None) -> Iterator[Record]:
        """Durable records, oldest first (read from disk)."""
        for rec in iter_records(self._dir, since_seq=since_seq, kind=kind):
            if rec.seq >= self._engine.size:
                return
            yield rec

    def entries_raw(self, start_seq: int = 0) -> Iterator[bytes]:
        """The exact stored bytes of records from ``start_seq`` (for sync and export)."""
        return (r.raw for r in self.records(since_seq=start_seq))

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._engine.latest_checkpoint

    def latest(self, kind: str) -> Record | None:
        """The newest durable record of ``kind`` (kept as records are written: no scan of the log)."""
        seq = self._engine.latest_seq(kind)
        if seq is None:
            return None
        return next(iter_records(self._dir, since_seq=seq), None)

    def verify(self) -> VerifiedLog:
        """Verify everything on disk; raise LedgerVerificationError naming the first bad record."""
        return walk_dir(self._dir, self._pk)[0]

    def export(self, path: str | Path) -> VerifiedLog:
        """Write an export file of every signed record (see docs/ledger-format.md)."""
        self.flush()
        verified, chunks = export_chunks(self._dir, self._pk)
        atomic_write(Path(path), chunks, mode=0o644)
        return verified

    def prove(self, seq: int) -> bytes:
        """An inclusion-proof file for record ``seq``."""
        self.flush()
        return prove(self._dir, self._pk, seq)


def _recover(directory: Path, public_key: PublicKey, tail_key: bytes | None, max_segment_bytes: int) -> _Recovered:
    """Verify the log on open; cut a torn or unauthenticated tail (saved under torn/).

    With a resume point (resume.py) that authenticates and fits the log, only the segments from the
    one it was saved for are verified; otherwise the whole log is."""
    base = load_base(directory, public_key)
    if base is not None:  # finish a prune that was interrupted before its segments were deleted
        unlink_segments(directory, [p for start, p, _ in segment_files(directory) if start < base.size])
    walk = _Walk(directory, public_key, base, tail_key)
    start = _load_resume(directory, public_key, tail_key, base)
    walked = None
    if start is not None:
        try:
            walked = walk.run(start, allow_torn_tail=True)
        except (LedgerVerificationError, _Unfit) as exc:
            log.warning(
                "ledger: the resume point at record %d does not fit the log (%s); verifying all of it", start.size, exc
            )
            start = None
    if walked is None:
        walked = walk.run(None, allow_torn_tail=True)
    verified, walker, files, index = walked
    cut: list[dict[str, Any]] = []
    try:
        if walker.authenticated < walker.size:  # records that are not this writer's: cut, never signed
            n = walker.size - walker.authenticated
            log.warning("ledger: %d unsigned records at the end are not sealed by this device; cutting them", n)
            index.close()
            cut = cut_tail(directory, files, walker.safe_offset, records=n, reason="unauthenticated")
            verified, walker, files, index = walk.run(start, allow_torn_tail=False)
        elif verified.torn_bytes:
            body = cut_torn_tail(directory, files[-1][1], files[-1][2], verified.torn_bytes)
            cut = [{**body, "reason": "unfinished write", "records": 0}]
            files = segment_files(directory)
        index.commit()
        writer = SegmentWriter(
            directory, max_bytes=max_segment_bytes, last=files[-1] if files else None, next_seq=walker.size
        )
    except BaseException:
        index.close()
        raise
    if verified.unsigned:
        log.info("ledger: %d records after the last checkpoint; signing them now", verified.unsigned)
    newest = walk.newest
    if tail_key is not None and newest is not None and newest.size <= walker.size and newest != start:
        write_resume(directory, encode_resume(tail_key, newest))  # the next open verifies the last segment only
    state = WriterState(
        size=walker.size,
        prev=walker.prev,
        frontier=walker.frontier(),
        checkpoint=verified.checkpoint,
        signed_size=verified.signed_size,
        latest=walk.latest,
    )
    return _Recovered(base=base, state=state, index=index, writer=writer, cut=cut)


class _Unfit(Exception):
    """A resume point that authenticates but does not fit the log as it is (its segment is gone, or the
    index files hold less than it says)."""


def _load_resume(
    directory: Path, public_key: PublicKey, tail_key: bytes | None, base: LogBase | None
) -> ResumePoint | None:
    """The saved resume point, if there is one that authenticates under the tail key (else None: the
    whole log is verified). One that does not authenticate is reported, never used."""
    data = read_resume(directory) if tail_key is not None else None
    if tail_key is None or data is None:
        return None
    point = decode_resume(tail_key, data, public_key)
    if point is None:
        log.warning("ledger: the resume point does not authenticate; verifying the whole log")
        return None
    if base is not None and point.size < base.size:
        return None  # saved before a prune
    return point


class _Walk:
    """Verifies the log for a writer: all of it, or from a resume point; keeps the newest segment
    start met (a resume point for the next open) and the newest record of each kind."""

    def __init__(self, directory: Path, public_key: PublicKey, base: LogBase | None, tail_key: bytes | None) -> None:
        self.directory, self.public_key, self.base, self.tail_key = directory, public_key, base, tail_key
        self.latest: dict[str, int] = {}
        self.newest: ResumePoint | None = None
        self._index: IndexBuilder | None = None

    def run(
        self, start: ResumePoint | None, *, allow_torn_tail: bool
    ) -> tuple[VerifiedLog, LogWalker, _Files, IndexBuilder]:
        """Verify the segments (from ``start``'s on) in bounded memory, rebuilding the index."""
        directory, base = self.directory, self.base
        floor = base.size if base is not None else 0
        self.newest = start
        if start is None:
            files = [f for f in segment_files(directory) if f[0] >= floor]
            index = IndexBuilder(directory, first_seq=floor)
            walk_base, self.latest = base, {}
        else:
            files = [f for f in segment_files(directory) if f[0] >= start.size]
            if not files or files[0][0] != start.size:
                raise _Unfit(f"segment {start.size:020d}.seg is gone")
            resumed = IndexBuilder.resume(directory, start.index)
            if resumed is None:
                raise _Unfit("the index files hold less than it says")
            index = resumed
            walk_base = LogBase(start.size, start.prev, start.frontier, start.checkpoint)
            self.latest = dict(start.kinds)
        self._index = index
        parts = [map_segment(path, first) for first, path, _ in files]
        try:
            verified, walker = walk_parts(
                parts,
                self.public_key,
                allow_torn_tail=allow_torn_tail,
                all_signatures=False,
                base=walk_base,
                tail_key=self.tail_key,
                keep_leaves=False,
                rescan=lambda n: rescan_root(directory, base, n),
                index=index,
                kinds=self.latest,
                on_segment=self._segment_start,
            )
        except BaseException:
            index.close()
            raise
        finally:
            for part in parts:
                if part.close is not None:
                    part.close()
        walked = [(first, path, part.length + 8) for (first, path, _), part in zip(files, parts, strict=True)]
        return verified, walker, walked, index

    def _segment_start(self, walker: LogWalker, checkpoint: SignedCheckpoint | None) -> None:
        """Every record before this segment is authenticated: a resume point for the next open."""
        index = self._index.state(walker.size) if self._index is not None else None
        if checkpoint is None or index is None or self.tail_key is None:
            return
        frontier = walker.peek_frontier()
        self.newest = ResumePoint(walker.size, walker.prev, frontier.hashes, checkpoint, dict(self.latest), index)
