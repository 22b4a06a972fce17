"""The ledger (I/O shell): group commit, checkpoint signing, recovery on open.

Appends from any thread (or ``append_async`` from asyncio) queue up; one
committer thread writes each group of records as frames with one durable write
(``RWF_DSYNC``, or ``write`` + ``fdatasync``), then wakes every waiting append.

* ``strict``: a commit starts as soon as the previous one ends (appends that
  arrive meanwhile share it) and carries its own signed checkpoint: when
  ``append`` returns, the record *and* a signed checkpoint covering it are on disk.
* ``batched``: the committer lingers up to ``max_batch_delay_ms`` to gather
  appends; ``append`` returns once the record is on disk. A signer thread signs
  the newest tree head (at most once per ``checkpoint_interval_ms``) and the
  next commit writes that checkpoint, so a slow signer (a TPM) never sits on
  the append path and one signature covers every record committed meanwhile.
  The signer also hashes committed leaves into the Merkle tree (off the commit path).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._internal.fsutil import ensure_private_dir, fsync_dir
from ..identity.keys import PublicKey, Signer
from .base import LogBase, encode_base
from .checkpoint import SignedCheckpoint, sign_checkpoint
from .errors import LedgerError, LedgerIOError
from .frame import CHECKPOINT, TAIL_SEAL, encode_frame, record_frame
from .index import BLOCK, IndexBuilder, save_kinds
from .reader import export_chunks, iter_records, load_base, prove, rescan_root, walk_dir
from .record import Record, assemble_record, prepare_body
from .store import (
    SegmentWriter,
    cut_tail,
    cut_torn_tail,
    lock_directory,
    map_segment,
    segment_files,
    unlink_segments,
    write_base,
)
from .tailmac import seal_payload
from .verify import VerifiedLog, walk_parts

__all__ = ["Ledger", "Receipt", "Durability", "PruneResult", "DiskUsage"]

log = logging.getLogger("kestrel.ledger")
Durability = Literal["strict", "batched"]
_MAX_BATCH = 4096
_MAX_BATCH_BYTES = 8 << 20
_KINDS_EVERY = 4096  # records between two saves of the latest-record-per-kind map (index.kinds)
_LEAF = hashlib.sha256(b"\x00")  # leaf hashes: copies of a hasher fed the RFC 6962 leaf prefix


@dataclass(frozen=True)
class Receipt:
    """Proof of a durable append: its sequence number, leaf hash (hex) and time."""

    seq: int
    digest: str
    time: float


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


_MAIN_THREAD = threading.main_thread().ident


class _Item:
    """One queued append. Sync callers wait on ``done`` (a held lock: the cheapest wake-up);
    ``submit`` callers get ``future``. The committer fills in ``seq`` and ``digest``; the
    waiter builds its own Receipt, off the commit path.

    Sync appends from threads other than the main one are woken as a chain (``next``):
    the committer releases the first, and each waiter releases its successor as soon
    as it wakes. Waking one thread at a time lets each take the GIL the moment the
    previous one gives it up, instead of the whole batch waking at once and queueing
    on the GIL (two wake-ups each). The main thread is never in a chain: only it can
    be interrupted (KeyboardInterrupt) while waiting, which would break the chain.
    """

    __slots__ = ("prepared", "kind", "time", "mono", "future", "done", "seq", "digest", "error", "next", "chained")

    def __init__(self, prepared: bytes, future: concurrent.futures.Future | None, kind: str = "") -> None:
        self.kind = kind
        # ``time`` is the record's (wall clock, may step); ``mono`` paces the commit (monotonic)
        self.prepared, self.time, self.mono, self.future = prepared, time.time(), time.monotonic(), future
        self.seq, self.digest = -1, b""
        self.error: BaseException | None = None
        self.done: threading.Lock | None = None
        self.next: _Item | None = None
        self.chained = future is None and threading.get_ident() != _MAIN_THREAD
        if future is None:
            self.done = threading.Lock()
            self.done.acquire()

    def receipt(self) -> Receipt:
        return Receipt(self.seq, self.digest.hex(), self.time)

    def resolve(self) -> None:
        """Hand over the committed ``seq`` and ``digest`` (not for chained items: see ``wake``)."""
        if self.future is None:
            self.done.release()  # type: ignore[union-attr]
        elif not self.future.done():
            self.future.set_result(self.receipt())

    def fail(self, error: BaseException) -> None:
        if self.future is None:
            self.error = error
            self.done.release()  # type: ignore[union-attr]
        elif not self.future.done():
            self.future.set_exception(error)

    def wait(self) -> Receipt:
        """Block until committed (a sync append); pass the wake-up on down the chain first."""
        self.done.acquire()  # type: ignore[union-attr]
        if self.next is not None:
            self.next.done.release()  # type: ignore[union-attr]
        if self.error is not None:
            raise self.error
        return self.receipt()


def _wake(batch: list[_Item]) -> None:
    """Wake a committed batch: futures and main-thread appends directly, the rest as one chain."""
    head: _Item | None = None
    for item in reversed(batch):
        if item.chained:
            item.next, head = head, item
        else:
            item.resolve()
    if head is not None:
        head.done.release()  # type: ignore[union-attr]


class Ledger:
    """An open, writable ledger. Use :meth:`open`; close with :meth:`close` (or ``with``)."""

    def __init__(self, *_: Any) -> None:
        raise TypeError("use Ledger.open(ledger_dir, signer=...)")

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
        self = object.__new__(cls)
        self._dir = Path(ledger_dir)
        if not self._dir.is_dir():
            ensure_private_dir(self._dir)
            fsync_dir(self._dir.parent)  # the new directory's entry is durable too
        self._lock_fd = lock_directory(self._dir)
        self._signer = signer
        self._pk = signer.public_key
        if tail_key is None and callable(getattr(signer, "ledger_secret", None)):
            tail_key = signer.ledger_secret()
        self._tail_key = tail_key
        self._strict = durability == "strict"
        self._delay = max(0.0, max_batch_delay_ms) / 1000.0
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the committer waits here (work to do)
        self._sign_cond = threading.Condition(lock)  # the signer waits here (new records)
        self._idle_cond = threading.Condition(lock)  # flush() waits here (progress)
        self._pending: list[_Item] = []
        self._failed: BaseException | None = None
        self._closing = False
        self._closed = False
        self._busy = False
        self._cp_ready: SignedCheckpoint | None = None
        self._last_batch = 1
        self._idle = False  # the committer waits for a first append (not lingering)
        self._signer_idle = False  # the signer waits for new records (not for its interval)
        self._cp_interval = max(0.0, checkpoint_interval_ms) / 1000.0
        self._urgent = 0  # flush() callers waiting: sign without waiting for the interval
        try:
            self._recover(max_segment_bytes)
            if self._size > self._signed_size:  # records a crash left unsigned: sign them first
                self._cp_ready = sign_checkpoint(self._signer, size=self._size, root=self._frontier.root())
                self._sign_requested = self._size
        except BaseException:
            if hasattr(self, "_writer"):
                self._writer.close()
            os.close(self._lock_fd)
            raise
        self._committer = threading.Thread(target=self._commit_loop, name="kestrel-ledger-commit", daemon=True)
        self._committer.start()
        self._signer_thread = None
        if not self._strict:
            self._signer_thread = threading.Thread(target=self._sign_loop, name="kestrel-ledger-sign", daemon=True)
            self._signer_thread.start()
        self.flush()  # the recovery checkpoint (if any) is durable before open returns
        if self._recovered:  # auditors see what was cut: an unacknowledged write, records nobody sealed
            try:
                for body in self._recovered:
                    self.append("ledger.recovered", body)
                self.flush()  # signed, like everything the ledger holds when open returns
            except BaseException:
                self.close()
                raise
        return self

    def _recover(self, max_segment_bytes: int) -> None:
        self._base = load_base(self._dir, self._pk)
        self._prune_lock = threading.Lock()
        if self._base is not None:  # finish a prune that was interrupted before its segments were deleted
            unlink_segments(self._dir, [p for start, p, _ in segment_files(self._dir) if start < self._base.size])
        verified, walker, files = self._walk(allow_torn_tail=True)
        self._recovered: list[dict[str, Any]] = []
        if walker.authenticated < walker.size:  # records that are not this writer's: cut, never signed
            n = walker.size - walker.authenticated
            log.warning("ledger: %d unsigned records at the end are not sealed by this device; cutting them", n)
            self._index.close()
            self._recovered = cut_tail(self._dir, files, walker.safe_offset, records=n, reason="unauthenticated")
            verified, walker, files = self._walk(allow_torn_tail=False)
        elif verified.torn_bytes:
            self._recovered = [
                {
                    **cut_torn_tail(self._dir, files[-1][1], files[-1][2], verified.torn_bytes),
                    "reason": "unfinished write",
                    "records": 0,
                }
            ]
            files = segment_files(self._dir)
        self._index.commit()
        self._frontier = walker.frontier()
        self._unhashed: list[bytes] = []  # batched mode: leaves committed since the signer last extended the tree
        self._size = walker.size
        self._prev = walker.prev
        self._latest_cp = verified.checkpoint
        self._signed_size = verified.signed_size
        self._sign_requested = verified.signed_size
        self._writer = SegmentWriter(
            self._dir, max_bytes=max_segment_bytes, last=files[-1] if files else None, next_seq=self._size
        )
        if verified.unsigned:
            log.info("ledger: %d records after the last checkpoint; signing them now", verified.unsigned)

    def _walk(self, *, allow_torn_tail: bool) -> tuple[VerifiedLog, Any, list[tuple[int, Path, int]]]:
        """Verify the log segment by segment in bounded memory, rebuilding the index and the latest-kind map."""
        floor = self._base.size if self._base is not None else 0
        files = [f for f in segment_files(self._dir) if f[0] >= floor]
        parts = [map_segment(path, start) for start, path, _ in files]
        self._index = IndexBuilder(self._dir, first_seq=floor)
        self._latest: dict[str, int] = {}
        try:
            verified, walker = walk_parts(
                parts,
                self._pk,
                allow_torn_tail=allow_torn_tail,
                all_signatures=False,
                base=self._base,
                tail_key=self._tail_key,
                keep_leaves=False,
                rescan=lambda n: rescan_root(self._dir, self._base, n),
                index=self._index,
                kinds=self._latest,
            )
        except BaseException:
            self._index.close()
            raise
        finally:
            for part in parts:
                part.close()  # type: ignore[misc]
        return (
            verified,
            walker,
            [(start, path, part.length + 8) for (start, path, _), part in zip(files, parts, strict=False)],
        )

    # -- public API ---------------------------------------------------------
    @property
    def public_key(self) -> PublicKey:
        return self._pk

    @property
    def size(self) -> int:
        """Number of durable records."""
        return self._size

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
        """Bytes used by the ledger directory (segments, base, torn/ files), and per segment."""
        segs = tuple((start, size) for start, _, size in segment_files(self._dir))
        total = sum(size for _, size in segs)
        for extra in (self._dir / "base", self._dir / "lock"):
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
            self._check_open()
            old_first = self.first_seq
            files = [f for f in segment_files(self._dir) if f[0] >= old_first]
            with self._cond:
                durable = self._size
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

    def _enqueue(self, kind: str, body: dict[str, Any], future: concurrent.futures.Future | None) -> _Item:
        item = _Item(prepare_body(kind, body), future, kind)
        with self._cond:
            self._check_open()
            self._pending.append(item)
            n = len(self._pending)
            if n >= self._last_batch or (n == 1 and self._idle):  # the committer lingers for more, or sleeps
                self._cond.notify()
        return item

    def submit(self, kind: str, body: dict[str, Any]) -> concurrent.futures.Future:
        """Queue an append; the future resolves to its Receipt once durable."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._enqueue(kind, body, fut)
        return fut

    def append(self, kind: str, body: dict[str, Any]) -> Receipt:
        """Append a record; return once it is durable (see the module docstring). Thread-safe."""
        return self._enqueue(kind, body, None).wait()

    async def append_async(self, kind: str, body: dict[str, Any]) -> Receipt:
        """:meth:`append` for asyncio callers: waits without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(kind, body))

    def flush(self) -> None:
        """Wait until every append so far is durable and covered by a durable signed checkpoint."""
        with self._cond:
            self._urgent += 1
            self._sign_cond.notify()
            self._cond.notify()  # cut a linger short
            try:
                while (
                    not self._failed
                    and not self._closed
                    and (self._pending or self._busy or self._cp_ready is not None or self._signed_size < self._size)
                ):
                    self._idle_cond.wait(0.5)
            finally:
                self._urgent -= 1
            if self._failed:
                raise self._failure()

    def close(self) -> None:
        """Flush and stop the ledger's threads. Idempotent."""
        if self._closed:
            return
        try:
            if not self._failed:
                self.flush()
        finally:
            with self._cond:
                self._closing = True
                self._wake_all()
            self._committer.join()
            if self._signer_thread is not None:
                self._signer_thread.join()
            self._writer.close()
            self._index.close()
            if not self._failed:
                save_kinds(self._dir, self._size, self._latest)
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
            if rec.seq >= self._size:
                return
            yield rec

    def entries_raw(self, start_seq: int = 0) -> Iterator[bytes]:
        """The exact stored bytes of records from ``start_seq`` (for sync and export)."""
        return (r.raw for r in self.records(since_seq=start_seq))

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._latest_cp

    def latest(self, kind: str) -> Record | None:
        """The newest durable record of ``kind`` (kept as records are written: no scan of the log)."""
        with self._cond:
            seq = self._latest.get(kind)
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
        from .._internal.fsutil import atomic_write

        atomic_write(Path(path), chunks, mode=0o644)
        return verified

    def prove(self, seq: int) -> bytes:
        """An inclusion-proof file for record ``seq``."""
        self.flush()
        return prove(self._dir, self._pk, seq)

    # -- internals ----------------------------------------------------------
    def _check_open(self) -> None:
        if self._failed:
            raise self._failure()
        if self._closing or self._closed:
            raise LedgerError("the ledger is closed", hint="open it again with Ledger.open")

    def _wake_all(self) -> None:
        self._cond.notify_all()
        self._sign_cond.notify_all()
        self._idle_cond.notify_all()

    def _failure(self) -> LedgerError | LedgerIOError:
        exc = self._failed
        if isinstance(exc, (LedgerError, LedgerIOError)):
            return exc
        return LedgerIOError(f"the ledger stopped after an error: {exc}", hint="reopen the ledger")

    def _take_batch(self) -> tuple[list[_Item], SignedCheckpoint | None] | None:
        with self._cond:
            if not self._strict and self._delay:
                self._linger()
            while not (self._pending or self._cp_ready or self._closing):
                self._idle = True  # the next append wakes the committer
                self._cond.wait()
            self._idle = False
            if not self._pending and not self._cp_ready:
                return None
            n, nbytes = 0, 0
            for item in self._pending[:_MAX_BATCH]:  # bounded in records and bytes
                nbytes += len(item.prepared)
                n += 1
                if nbytes >= _MAX_BATCH_BYTES:
                    break
            batch, self._pending = self._pending[:n], self._pending[n:]
            # the producers of this batch come back after it; those still pending join them in the next
            self._last_batch = min(len(batch) + len(self._pending), _MAX_BATCH)
            cp, self._cp_ready = self._cp_ready, None
            self._busy = True
            return batch, cp

    def _linger(self) -> None:
        """Wait (with the lock held) for as many appends as are in flight, at most the delay.

        Closed-loop producers come back right after their receipts: waiting for
        about as many as last time makes one commit of what would otherwise be
        several small ones. When fewer come, the wait ends at the delay and the
        next commit expects that many, so sparse appends wait at most once. The
        wait starts right after the previous commit (no wake-up for the first
        append) and ends at the first pending append's time plus the delay, so
        no append waits longer than the delay; ``flush()`` cuts it short.
        """
        start = time.monotonic()  # never the wall clock: a step (NTP on a board without RTC) must not stall commits
        want = self._last_batch
        while len(self._pending) < want and not (self._closing or self._urgent):
            deadline = (self._pending[0].mono if self._pending else start) + self._delay
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _commit_loop(self) -> None:
        while True:
            taken = self._take_batch()
            if taken is None:
                return
            batch, cp = taken
            try:
                self._commit(batch, cp)
            except BaseException as exc:  # the on-disk state is unknown now: stop accepting appends
                log.error("ledger commit failed: %s", exc)
                with self._cond:
                    self._failed = exc
                    self._busy = False
                    failed, self._pending = batch + self._pending, []
                    self._wake_all()
                for item in failed:
                    item.fail(self._failure())
                return

    def _commit(self, batch: list[_Item], cp: SignedCheckpoint | None) -> None:
        frames = [encode_frame(CHECKPOINT, cp.note)] if cp is not None else []
        prev, seq = self._prev, self._size
        leaves: list[bytes] = []
        assemble, frame, leaf = assemble_record, record_frame, _LEAF.copy  # bound once: this loop is hot
        add_frame, add_leaf = frames.append, leaves.append
        latest = self._latest
        starts: list[tuple[int, int]] = []  # (seq, index in frames) of block starts, for the index
        for item in batch:
            raw = assemble(seq=seq, time=item.time, prepared=item.prepared, prev=prev)
            h = leaf()
            h.update(raw)
            item.seq, item.digest = seq, (prev := h.digest())
            add_leaf(prev)
            if not seq % BLOCK:
                starts.append((seq, len(frames)))
            add_frame(frame(raw))
            latest[item.kind] = seq
            seq += 1
        own_cp = frontier = None
        if self._strict and batch:  # strict: this commit's own checkpoint needs the tree now
            frontier = self._frontier.copy()
            self._index.extend(frontier, leaves)
            own_cp = sign_checkpoint(self._signer, size=seq, root=frontier.root())
            frames.append(encode_frame(CHECKPOINT, own_cp.note))
        elif batch and self._tail_key is not None:  # batched: seal the records no checkpoint covers yet
            frames.append(encode_frame(TAIL_SEAL, seal_payload(self._tail_key, seq, prev)))
        data = b"".join(frames)
        segment, offset = self._writer.position_for(len(data), self._size)
        for start, i in starts:
            self._index.start(start, segment, offset + sum(len(f) for f in frames[:i]))
        self._writer.write_durable(data, next_seq=self._size)
        if seq // _KINDS_EVERY != self._size // _KINDS_EVERY:
            save_kinds(self._dir, seq, latest)
        with self._cond:
            self._prev, self._size = prev, seq
            if frontier is not None:
                self._frontier = frontier
            else:  # batched: the signer hashes these into the tree, off the commit path
                self._unhashed += leaves
            for written in (cp, own_cp):
                if written is not None and written.size >= self._signed_size:
                    self._latest_cp, self._signed_size = written, written.size
            self._busy = False
            if self._signer_idle:
                self._sign_cond.notify()
            self._idle_cond.notify_all()
        _wake(batch)

    def _sign_loop(self) -> None:
        last = took = 0.0
        while True:
            with self._cond:
                while not self._closing and not self._failed and self._sign_requested >= self._size:
                    self._signer_idle = True  # the next commit wakes the signer (not every commit)
                    self._sign_cond.wait()
                self._signer_idle = False
                if self._failed or (self._closing and self._sign_requested >= self._size):
                    return
                # at most one checkpoint per interval (and the signer busy at most 1/5 of the
                # time): bounds TPM load and checkpoint bytes; flush() and close() skip the wait
                while not (self._closing or self._urgent or self._failed):
                    left = last + max(self._cp_interval, 4 * took) - time.monotonic()
                    if left <= 0:
                        break
                    self._sign_cond.wait(left)
                if self._failed:
                    return
                size, frontier, unhashed = self._size, self._frontier, self._unhashed
                self._unhashed = []
                self._sign_requested = size
            last = time.monotonic()
            try:
                if unhashed:  # outside the lock: in batched mode only the signer updates the tree (and index)
                    frontier = frontier.copy()
                    self._index.extend(frontier, unhashed)
                    with self._cond:
                        self._frontier = frontier
                cp = sign_checkpoint(self._signer, size=size, root=frontier.root())
                took = time.monotonic() - last
            except BaseException as exc:
                log.error("ledger: checkpoint signing failed: %s", exc)
                with self._cond:
                    self._failed = exc
                    self._wake_all()
                return
            with self._cond:
                self._cp_ready = cp
                self._cond.notify()
