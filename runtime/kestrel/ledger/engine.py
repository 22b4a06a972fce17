"""The commit engine (I/O shell): group commit and checkpoint signing for one open ledger.

Appends from any thread (or a future for asyncio callers) queue up; one
committer thread writes each group of records as frames with one durable write
(``RWF_DSYNC``, or ``write`` + ``fdatasync``), then wakes every waiting append.

* ``strict``: a commit starts as soon as the previous one ends (appends that
  arrive meanwhile share it) and carries its own signed checkpoint: when
  ``append`` returns, the record *and* a signed checkpoint covering it are on disk.
* ``batched``: the committer lingers up to ``delay_s`` to gather appends;
  ``append`` returns once the record is on disk. A signer thread signs the newest
  tree head (at most once per ``checkpoint_interval_s``) and the next commit
  writes that checkpoint, so a slow signer (a TPM) never sits on the append path
  and one signature covers every record committed meanwhile. The signer also
  hashes committed leaves into the Merkle tree (off the commit path).

Every deadline here runs on the monotonic clock (a wall-clock step, NTP on a
board without an RTC, changes record times only). :class:`~.ledger.Ledger`
recovers the log on open and hands the engine the writer's state.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..identity.keys import Signer
from .checkpoint import SignedCheckpoint, sign_checkpoint
from .errors import LedgerError, LedgerIOError
from .frame import CHECKPOINT, HEADER_SIZE, TAIL_SEAL, encode_frame, pad_frame, record_frame
from .index import BLOCK, IndexBuilder, IndexState, save_kinds
from .merkle import Frontier
from .record import assemble_record, prepare_body
from .resume import ResumePoint, encode_resume
from .store import SegmentWriter, write_resume
from .tailmac import seal_payload

__all__ = ["CommitEngine", "Receipt", "WriterState", "MAX_BATCH", "MAX_BATCH_BYTES", "PAGE", "padding"]

log = logging.getLogger("kestrel.ledger")
MAX_BATCH = 4096  # records in one commit
MAX_BATCH_BYTES = 8 << 20  # bytes of records in one commit (about; the record that crosses it is taken)
_KINDS_EVERY = 4096  # records between two saves of the latest-record-per-kind map (index.kinds)
PAGE = 4096  # the flash page (and page cache) granularity commits are padded to
PAD_SHARE = 4  # a commit is padded by at most 1/PAD_SHARE of its own bytes, and of a page
_CP_ROOM = 1024  # bytes a strict commit's own checkpoint frame takes, at most (rotation is decided before it)
_LEAF = hashlib.sha256(b"\x00")  # leaf hashes: copies of a hasher fed the RFC 6962 leaf prefix
_MAIN_THREAD = threading.main_thread().ident


@dataclass(frozen=True)
class Receipt:
    """Proof of a durable append: its sequence number, leaf hash (hex) and time."""

    seq: int
    digest: str
    time: float


@dataclass
class WriterState:
    """What a writer continues from: the log's verified end (recovery on open fills it in)."""

    size: int  # records in the log
    prev: bytes  # leaf hash of record size - 1 (ZERO_HASH for an empty log)
    frontier: Frontier  # the Merkle tree of the first ``size`` records
    checkpoint: SignedCheckpoint | None  # the latest durable checkpoint
    signed_size: int  # records it covers
    latest: dict[str, int]  # the newest seq of each kind


@dataclass(frozen=True)
class _SegmentStart:
    """What the committer knows when a new segment starts with record ``size``; the tree (frontier and
    index) at that size comes from whoever extends it (the signer in batched mode)."""

    size: int
    prev: bytes
    kinds: dict[str, int]
    checkpoint: SignedCheckpoint


class _Item:
    """One queued append. Sync callers wait on ``done`` (a held lock: the cheapest wake-up);
    ``future`` callers get it resolved. The committer fills in ``seq`` and ``digest``; the
    waiter builds its own Receipt, off the commit path.

    Sync appends from threads other than the main one are woken as a chain (``next``):
    the committer releases the first, and each waiter releases its successor as soon
    as it wakes. Waking one thread at a time lets each take the GIL the moment the
    previous one gives it up, instead of the whole batch waking at once and queueing
    on the GIL (two wake-ups each). The main thread is never in a chain: only it can
    be interrupted (KeyboardInterrupt) while waiting, which would break the chain.
    """

    __slots__ = ("prepared", "kind", "time", "mono", "future", "done", "seq", "digest", "error", "next", "chained")

    def __init__(self, prepared: bytes, future: concurrent.futures.Future[Receipt] | None, kind: str = "") -> None:
        self.kind = kind
        # ``time`` is the record's (wall clock, may step); ``mono`` paces the commit (monotonic)
        self.prepared, self.time, self.mono, self.future = prepared, time.time(), time.monotonic(), future
        self.seq, self.digest = -1, b""
        self.error: BaseException | None = None
        self.next: _Item | None = None
        self.chained = future is None and threading.get_ident() != _MAIN_THREAD
        self.done = threading.Lock()  # held until committed (sync appends only wait on it)
        if future is None:
            self.done.acquire()

    def receipt(self) -> Receipt:
        return Receipt(self.seq, self.digest.hex(), self.time)

    def resolve(self) -> None:
        """Hand over the committed ``seq`` and ``digest`` (not for chained items: see ``wake``)."""
        if self.future is None:
            self.done.release()
        elif not self.future.done():
            self.future.set_result(self.receipt())

    def fail(self, error: BaseException) -> None:
        if self.future is None:
            self.error = error
            self.done.release()
        elif not self.future.done():
            self.future.set_exception(error)

    def wait(self) -> Receipt:
        """Block until committed (a sync append); pass the wake-up on down the chain first."""
        self.done.acquire()
        if self.next is not None:
            self.next.done.release()
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
        head.done.release()


def padding(end: int, size: int) -> int:
    """Bytes of the padding frame that ends a commit of ``size`` bytes (ending at file offset ``end``)
    on a page boundary; 0 for none.

    A durable write that ends inside a page leaves that page to be written again, whole, by the next
    commit: 16 closed-loop producers commit about 7 KB at a time, so that rewrite alone costs 0.57
    bytes of flash per byte of record. Zero bytes up to the boundary cost less than the rewrite; they
    take disk space, so a commit is padded only by up to a quarter of a page and of its own size
    (small, sparse commits are not padded: their rewrite costs less than the space padding would take)."""
    gap = -end % PAGE
    if gap and gap < HEADER_SIZE:  # no room for a frame header: the next boundary is too far
        return 0
    return gap if gap * PAD_SHARE <= min(size, PAGE) else 0


class CommitEngine:
    """Queues appends and commits them in groups; signs checkpoints (see the module docstring).

    Built stopped; :meth:`start` signs what recovery left unsigned and starts the threads.
    ``lock`` guards the state below; readers take it to see a consistent ``size``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        writer: SegmentWriter,
        index: IndexBuilder,
        signer: Signer,
        state: WriterState,
        tail_key: bytes | None,
        strict: bool,
        delay_s: float,
        checkpoint_interval_s: float,
    ) -> None:
        self._dir = directory
        self._writer = writer
        self._index = index
        self._signer = signer
        self._tail_key = tail_key
        self._strict = strict
        self._delay = max(0.0, delay_s)
        self._cp_interval = max(0.0, checkpoint_interval_s)
        self.lock = threading.Lock()
        self._cond = threading.Condition(self.lock)  # the committer waits here (work to do)
        self._sign_cond = threading.Condition(self.lock)  # the signer waits here (new records)
        self._idle_cond = threading.Condition(self.lock)  # flush() waits here (progress)
        self._pending: list[_Item] = []
        self._failed: BaseException | None = None
        self._closing = False
        self._closed = False
        self._busy = False  # a commit is being written
        self._cp_ready: SignedCheckpoint | None = None  # signed, for the next commit to write
        self._last_batch = 1  # records the last commit took (with those that were left pending)
        self._idle = False  # the committer waits for a first append (not lingering)
        self._signer_idle = False  # the signer waits for new records (not for its interval)
        self._urgent = 0  # flush() callers waiting: sign without waiting for the interval
        self._size = state.size
        self._prev = state.prev
        self._frontier = state.frontier
        self._unhashed: list[bytes] = []  # batched mode: leaves committed since the signer last extended the tree
        self._latest_cp = state.checkpoint
        self._signed_size = state.signed_size
        self._sign_requested = state.signed_size  # the size the signer last took
        self._latest = state.latest
        self._segment = writer.first_seq  # the segment being written (its first seq)
        self._started: _SegmentStart | None = None  # batched: a segment start the signer saves (resume.py)
        self._committer: threading.Thread | None = None
        self._signer_thread: threading.Thread | None = None

    # -- state -------------------------------------------------------------
    @property
    def size(self) -> int:
        """Durable records."""
        return self._size

    @property
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._latest_cp

    def latest_seq(self, kind: str) -> int | None:
        """The seq of the newest durable record of ``kind``."""
        with self.lock:
            return self._latest.get(kind)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Sign the records recovery found unsigned (the first commit writes it), start the threads."""
        if self._size > self._signed_size:
            self._cp_ready = sign_checkpoint(self._signer, size=self._size, root=self._frontier.root())
            self._sign_requested = self._size
        self._committer = threading.Thread(target=self._commit_loop, name="kestrel-ledger-commit", daemon=True)
        self._committer.start()
        if not self._strict:
            self._signer_thread = threading.Thread(target=self._sign_loop, name="kestrel-ledger-sign", daemon=True)
            self._signer_thread.start()

    def close(self) -> None:
        """Flush (unless failed), stop the threads, close the files. Idempotent."""
        if self._closed:
            return
        try:
            if not self._failed:
                self.flush()
        finally:
            with self._cond:
                self._closing = True
                self._wake_all()
            for thread in (self._committer, self._signer_thread):
                if thread is not None:
                    thread.join()
            self._writer.close()
            self._index.close()
            if not self._failed:
                save_kinds(self._dir, self._size, self._latest)
            self._closed = True

    # -- appending -----------------------------------------------------------
    def enqueue(self, kind: str, body: dict[str, Any], future: concurrent.futures.Future[Receipt] | None) -> _Item:
        """Queue a record (encoded and checked here, in the caller's thread)."""
        item = _Item(prepare_body(kind, body), future, kind)
        with self._cond:
            self.check_open()
            self._pending.append(item)
            n = len(self._pending)
            if n >= self._last_batch or (n == 1 and self._idle):  # the committer lingers for more, or sleeps
                self._cond.notify()
        return item

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
                raise self.failure()

    def check_open(self) -> None:
        if self._failed:
            raise self.failure()
        if self._closing or self._closed:
            raise LedgerError("the ledger is closed", hint="open it again with Ledger.open")

    def failure(self) -> LedgerError | LedgerIOError:
        """The error every later call gets once a commit or a signature failed."""
        exc = self._failed
        if isinstance(exc, (LedgerError, LedgerIOError)):
            return exc
        return LedgerIOError(f"the ledger stopped after an error: {exc}", hint="reopen the ledger")

    def _wake_all(self) -> None:
        self._cond.notify_all()
        self._sign_cond.notify_all()
        self._idle_cond.notify_all()

    # -- the committer -------------------------------------------------------
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
            for item in self._pending[:MAX_BATCH]:  # bounded in records and bytes
                nbytes += len(item.prepared)
                n += 1
                if nbytes >= MAX_BATCH_BYTES:
                    break
            batch, self._pending = self._pending[:n], self._pending[n:]
            # the producers of this batch come back after it; those still pending join them in the next
            self._last_batch = min(len(batch) + len(self._pending), MAX_BATCH)
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
                    item.fail(self.failure())
                return

    def _commit(self, batch: list[_Item], cp: SignedCheckpoint | None) -> None:
        frames = [encode_frame(CHECKPOINT, cp.note)] if cp is not None else []
        prev, seq = self._prev, self._size
        leaves: list[bytes] = []
        assemble, frame, leaf = assemble_record, record_frame, _LEAF.copy  # bound once: this loop is hot
        add_frame, add_leaf = frames.append, leaves.append
        kinds: dict[str, int] = {}  # this batch's newest record of each kind
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
            kinds[item.kind] = seq
            seq += 1
        strict = self._strict and bool(batch)
        if batch and not strict and self._tail_key is not None:  # batched: seal what no checkpoint covers yet
            frames.append(encode_frame(TAIL_SEAL, seal_payload(self._tail_key, seq, prev)))
        nbytes = sum(map(len, frames))
        segment, offset = self._writer.position_for(nbytes + (_CP_ROOM if strict else 0), self._size)
        if segment != self._segment:  # a new segment: save the state at its first record (resume.py)
            self._segment = segment
            self._segment_started()
        latest = self._latest
        latest.update(kinds)
        own_cp = frontier = None
        if strict:  # this commit's own checkpoint needs the tree now
            frontier = self._frontier.copy()
            self._index.extend(frontier, leaves)
            own_cp = sign_checkpoint(self._signer, size=seq, root=frontier.root())
            frames.append(encode_frame(CHECKPOINT, own_cp.note))
            nbytes = sum(map(len, frames))
        pad = padding(offset + nbytes, nbytes)
        if pad and self._writer.fits(nbytes + pad):  # end on a page boundary (never rotate for padding)
            frames.append(pad_frame(pad))
        data = b"".join(frames)
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

    # -- resume points (resume.py) ------------------------------------------------
    def _segment_started(self) -> None:
        """The committer starts a segment with record ``self._size``: save the writer's state there, so
        that the next open verifies the log from this segment on only. Strict mode has the tree at
        that size now; batched mode hands it to the signer, which extends the tree."""
        cp = self._latest_cp
        if self._tail_key is None or cp is None or self._segment != self._size:
            return
        start = _SegmentStart(self._size, self._prev, dict(self._latest), cp)
        if self._strict:
            self._save_resume(start, self._frontier, self._index.state(self._size))
        else:
            with self._cond:
                self._started = start

    def _save_resume(self, start: _SegmentStart, frontier: Frontier, index: IndexState | None) -> None:
        if self._tail_key is None or index is None or frontier.size != start.size:
            return
        point = ResumePoint(start.size, start.prev, frontier.hashes, start.checkpoint, start.kinds, index)
        write_resume(self._dir, encode_resume(self._tail_key, point))

    # -- the signer (batched mode) ---------------------------------------------
    def _sign_loop(self) -> None:
        last = took = 0.0
        while True:
            with self._cond:
                while not (self._closing or self._failed or self._started) and self._sign_requested >= self._size:
                    self._signer_idle = True  # the next commit wakes the signer (not every commit)
                    self._sign_cond.wait()
                self._signer_idle = False
                if self._failed or (self._closing and self._sign_requested >= self._size and not self._started):
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
                started, self._started = self._started, None
                self._unhashed = []
                fresh = size > self._sign_requested  # records to sign (else only a segment start to save)
                self._sign_requested = size
            last = time.monotonic()
            try:
                if unhashed or started:  # outside the lock: in batched mode only the signer updates the tree
                    frontier = frontier.copy()
                    split = started.size - frontier.size if started is not None else 0
                    if started is not None and 0 <= split <= len(unhashed):  # the tree at a segment start
                        self._index.extend(frontier, unhashed[:split])
                        self._save_resume(started, frontier, self._index.state(started.size))
                        unhashed = unhashed[split:]
                    self._index.extend(frontier, unhashed)
                    with self._cond:
                        self._frontier = frontier
                if not fresh:
                    continue
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
