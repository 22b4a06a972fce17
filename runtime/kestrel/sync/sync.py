"""Store-and-forward ledger sync over the runtime's MQTT bridge (the I/O shell).

The daemon starts one :class:`LedgerSync` per agent when an MQTT broker is configured::

    sync = LedgerSync(ledger, bridge, config=cfg.sync, state_dir=state_dir)
    await sync.start()      # returns at once; the work runs in a task on the loop
    ...
    await sync.stop()       # persists the acknowledged offset and the status

Records are read from the ledger in a worker thread, published in order at QoS 1 on
``kestrel/<did>/ledger/batch`` with up to ``max_inflight`` messages awaiting PUBACK, and the
offset advances only over a contiguous run of acknowledged messages. After an outage, a broker
restart or a process restart, publishing resumes at the last persisted offset; messages sent
twice are dropped by the collector (it deduplicates by (agent, seq)).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, KestrelError
from ._tasks import cancel_task
from .config import SyncConfig, parse_sync_config
from .limits import TokenBucket, prune_point, retention_warnings
from .state import Offset, OffsetStore, SyncStatus, write_status
from .tail import SegmentTail
from .wire import BATCH_OVERHEAD, SyncBatch, SyncFormatError, decode_resend, encode_batch, ledger_topic, resend_topic

if TYPE_CHECKING:
    from ..ledger import Ledger

__all__ = ["LedgerSync", "run_sync"]

log = logging.getLogger("kestrel.sync")
_RECORD_OVERHEAD = 5  # msgpack bin header per record
_NOTE_ROOM = 600  # room kept in a batch for a checkpoint note
_MAX_SKIP_WARNINGS = 5


class _Reader:
    """Reads consecutive batches of the ledger's frames (called from one worker thread at a time).

    It follows the segment files with :class:`~kestrel.sync.tail.SegmentTail` rather than
    ``Ledger.entries_raw`` (which rereads every segment on each call), so records are not decoded
    and the checkpoints the ledger signed along the way travel with the records they cover, in
    ledger order. Only records below ``ledger.size`` (durable) are sent.
    """

    def __init__(self, ledger: Ledger, config: SyncConfig) -> None:
        self._ledger, self._config = ledger, config
        self._tail: SegmentTail | None = None
        self._pos = -1  # seq of the next record to send (the first of _back, else the tail's next)
        self._back: deque[bytes] = deque()  # records read but left for the next batch
        self._cp: tuple[int, bytes] | None = None  # newest checkpoint frame read: (size, note)
        self.skipped: list[tuple[int, int, str]] = []  # (seq, bytes, sha256 leaf hex) too large to send

    def read(self, start: int, checkpoint_sent: int) -> tuple[SyncBatch, int] | None:
        """The next batch from ``start`` and the size of the checkpoint it carries (0: none).

        A record too large for one message even alone is skipped (appended to :attr:`skipped`):
        the batch then starts after it, or is empty when nothing else is ready."""
        from ..ledger.frame import CHECKPOINT, RECORD
        from ..ledger.record import leaf_hash

        durable = self._ledger.size
        records: list[bytes] = []
        if self._tail is None or self._pos != start:
            self._tail, self._pos, self._cp = SegmentTail(self._ledger.directory, start), start, None
            self._back.clear()
        nbytes = BATCH_OVERHEAD + _NOTE_ROOM
        half = max(1, self._config.batch_records // 2)
        while len(records) < self._config.batch_records and start + len(records) < durable:
            if self._back:
                raw = self._back.popleft()
            else:
                frame = self._tail.next()
                if frame is None:
                    break
                if frame.type == CHECKPOINT:
                    size = self._note_checkpoint(frame.payload)
                    if size is not None and half <= size - start <= len(records):
                        # End the batch at this checkpoint so that the collector can verify the
                        # whole message at once; the records after it open the next batch.
                        self._back.extendleft(reversed(records[size - start :]))
                        del records[size - start :]
                        break
                    continue
                if frame.type != RECORD:
                    continue  # a base frame belongs in exports only; `kestrel audit verify` reports it
                raw = frame.payload
            if not records and nbytes + len(raw) + _RECORD_OVERHEAD > self._config.batch_bytes:
                self.skipped.append((start, len(raw), leaf_hash(raw).hex()))  # would never fit: never retry it
                start += 1
                continue
            if records and nbytes + len(raw) + _RECORD_OVERHEAD > self._config.batch_bytes:
                self._back.appendleft(raw)
                break
            records.append(raw)
            nbytes += len(raw) + _RECORD_OVERHEAD
        self._pos = start + len(records)
        end = start + len(records)
        candidates = [self._cp] if self._cp is not None else []
        latest = self._ledger.latest_checkpoint() if durable else None
        if latest is not None:
            candidates.append((latest.size, latest.note))
        usable = [c for c in candidates if checkpoint_sent < c[0] <= min(end, durable)]
        if not records and not usable:
            return (SyncBatch(start, ()), 0) if self.skipped and self.skipped[-1][0] == start - 1 else None
        cp_size, note = max(usable, key=lambda c: c[0]) if usable else (0, None)
        return SyncBatch(start, tuple(records), note), cp_size

    def _note_checkpoint(self, note: bytes) -> int | None:
        """Remember the newest checkpoint frame read so far (its size is on the note's second line)."""
        try:
            size = int(note.split(b"\n", 2)[1])
        except (IndexError, ValueError):
            return None  # unreadable: the collector would refuse it anyway
        if self._cp is None or size >= self._cp[0]:
            self._cp = (size, note)
        return size


class LedgerSync:
    """Publishes one agent's ledger to the broker; never blocks the event loop."""

    def __init__(self, ledger: Ledger, bridge: Any, *, config: SyncConfig, state_dir: str | os.PathLike[str]) -> None:
        limit = getattr(bridge, "max_payload", None)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit < config.batch_bytes:
            config = dataclasses.replace(config, batch_bytes=limit)  # a message must pass the bridge
        self.ledger, self.bridge, self.config = ledger, bridge, config
        self.state_dir = Path(state_dir)
        self.did: str = ledger.public_key.did
        self.topic = ledger_topic(self.did)
        self._offsets = OffsetStore(self.state_dir)
        self._reader = _Reader(ledger, config)
        self._offset = Offset(self.did)
        self._saved = self._offset
        self._next = 0
        self._cp_sent = 0
        self._base_due = False  # records were pruned before being sent: publish the ledger's signed base
        self._inflight: deque[tuple[SyncBatch, int, asyncio.Task[Any]]] = deque()
        self._bucket = (
            TokenBucket(config.bandwidth, burst=config.burst, now=time.monotonic()) if config.bandwidth else None
        )
        self._task: asyncio.Task[None] | None = None
        self._resend_task: asyncio.Task[None] | None = None
        self._resend_sub: Any = None
        self._resend_from: int | None = None
        self._last_resend = -1e18
        self.resends = 0  # collector requests honoured
        self._rate = 0.0
        self._warnings: tuple[str, ...] = ()
        self._skip_warnings: tuple[str, ...] = ()
        self._skipped_seen: set[int] = set()
        self.pruned: list[Any] = []  # PruneResults of retention prunes in this process
        self._warn_level = 0
        self._ledger_bytes = 0
        self.published = 0  # messages acknowledged by the broker in this process
        self._persist_lock = threading.Lock()
        self._error: str | None = None  # the last failure, until a publish succeeds

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._offset = self._saved = await asyncio.to_thread(self._offsets.load, self.did)
        self._next, self._cp_sent = self._offset.acked, self._offset.checkpoint_size
        if self._offset.acked > self.ledger.size:
            raise DataError(
                f"sync offset {self._offset.acked} is beyond the ledger's {self.ledger.size} records",
                hint=f"the ledger was replaced; delete {self._offsets.path} to resend it",
            )
        self._resend_sub = await self.bridge.subscribe(resend_topic(self.did), qos=1, queue_size=8)
        self._task = asyncio.create_task(self._main(), name="kestrel-sync")
        self._resend_task = asyncio.create_task(self._resend_requests(), name="kestrel-sync-resend")

    async def stop(self) -> None:
        await cancel_task(self._resend_task)
        await cancel_task(self._task)
        self._task = self._resend_task = None
        if self._resend_sub is not None:
            with contextlib.suppress(Exception):
                await self.bridge.unsubscribe(self._resend_sub)
            self._resend_sub = None
        for *_, task in self._inflight:
            task.cancel()
        self._inflight.clear()
        await asyncio.to_thread(self._persist, True)

    async def wait_synced(self, size: int | None = None, *, timeout: float | None = None) -> bool:
        """Wait until the broker has acknowledged the first ``size`` records (default: all)."""

        async def _wait() -> None:
            while self._offset.acked < (self.ledger.size if size is None else size):
                if self._task is not None and self._task.done():
                    self._task.result()
                await asyncio.sleep(0.02)

        try:
            await asyncio.wait_for(_wait(), timeout)
            return True
        except TimeoutError:
            return False

    @property
    def status(self) -> SyncStatus:
        return SyncStatus(
            agent=self.did,
            connected=bool(self.bridge.connected),
            acked=self._offset.acked,
            ledger_size=self.ledger.size,
            rate=round(self._rate, 1),
            updated=time.time(),
            pid=os.getpid(),
            ledger_bytes=self._ledger_bytes,
            retention_limit=self.config.retention.max_bytes,
            warnings=self._warnings + self._skip_warnings + ((self._error,) if self._error else ()),
            first_seq=getattr(self.ledger, "first_seq", 0),
        )

    # -- the loop ------------------------------------------------------------------------------
    async def _main(self) -> None:
        keeper = asyncio.create_task(self._housekeeping(), name="kestrel-sync-status")
        try:
            while True:
                if self._resend_from is not None:
                    await self._settle()
                    self._next, self._cp_sent = min(self._next, self._resend_from), 0
                    self._resend_from = None
                first = getattr(self.ledger, "first_seq", 0)
                if self._next < first:  # pruned before they were sent (retention drop-oldest)
                    log.warning("sync: records %d..%d were pruned before being synced", self._next, first - 1)
                    self._next = first
                    self._base_due = True
                if not self.bridge.connected:
                    await self._settle()
                    await self.bridge.wait_connected(timeout=max(self.config.poll_s, 1.0))
                    continue
                if self._base_due:  # the collector verifies on from the signed base (docs/sync-protocol.md)
                    self._base_due = False
                    base = getattr(self.ledger, "base", None)
                    if base is not None and base.size == self._next:
                        batch = SyncBatch(base.size, (), None, base.payload)
                        task = asyncio.create_task(self.bridge.publish(self.topic, encode_batch(batch), qos=1))
                        self._inflight.append((batch, 0, task))
                        continue
                try:
                    got = await asyncio.to_thread(self._reader.read, self._next, self._cp_sent)
                except KestrelError as exc:  # a damaged or unreadable ledger: report, retry later
                    if self._next < getattr(self.ledger, "first_seq", 0):
                        continue  # its segment was pruned while being read (drop-oldest): go on from the base
                    self._error = f"cannot read the ledger: {exc.message}"
                    log.error("sync: %s", self._error)
                    await asyncio.sleep(max(self.config.retry_s, 5.0))
                    continue
                if self._reader.skipped:
                    await self._report_skipped()
                if got is None:
                    await self._settle()
                    await asyncio.sleep(self.config.poll_s)
                    continue
                batch, cp_size = got
                if not batch.records and batch.checkpoint is None:  # only skipped records: nothing to send
                    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    done.set_result(None)
                    self._inflight.append((batch, 0, done))  # type: ignore[arg-type]
                    self._next = batch.end
                    continue
                payload = encode_batch(batch)
                if self._bucket is not None:
                    delay = self._bucket.reserve(len(payload), now=time.monotonic())
                    if delay:
                        await asyncio.sleep(delay)
                task = asyncio.create_task(self.bridge.publish(self.topic, payload, qos=1))
                self._inflight.append((batch, cp_size, task))
                self._next, self._cp_sent = batch.end, max(self._cp_sent, cp_size)
                while self._inflight and (
                    len(self._inflight) >= self.config.max_inflight or self._inflight[0][2].done()
                ):
                    await self._complete_first()
        finally:
            await cancel_task(keeper)

    async def _settle(self) -> None:
        while self._inflight:
            await self._complete_first()

    async def _complete_first(self) -> None:
        batch, cp_size, task = self._inflight[0]
        waited = 0.0
        while not task.done():  # a PUBACK that never comes while connected means the message was lost
            done, _ = await asyncio.wait({task}, timeout=1.0)
            waited = 0.0 if not self.bridge.connected else waited + 1.0
            if not done and waited >= self.config.ack_timeout_s:
                await self._rewind(f"no PUBACK within {self.config.ack_timeout_s:.0f}s")
                return
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            await self._rewind("publish cancelled")
            return
        except KestrelError as exc:
            await self._rewind(str(exc))
            return
        self._inflight.popleft()
        self._offset = Offset(
            self.did, max(batch.end, self._offset.acked), max(cp_size, self._offset.checkpoint_size), time.time()
        )
        self.published += 1
        self._error = None

    async def _rewind(self, why: str) -> None:
        """A publish failed: forget everything in flight and resend from the acknowledged offset."""
        log.warning("sync publish failed (%s); resending from record %d", why, self._offset.acked)
        self._error = f"publish failed: {why}"
        for *_, task in self._inflight:
            task.cancel()
        self._inflight.clear()
        self._next, self._cp_sent = self._offset.acked, self._offset.checkpoint_size
        await asyncio.sleep(self.config.retry_s)

    async def _report_skipped(self) -> None:
        """Records too large for one message: record each once in the ledger and in the status."""
        skipped, self._reader.skipped = self._reader.skipped, []
        for seq, size, digest in skipped:
            if seq in self._skipped_seen:  # met again after a rewind or a resend request
                continue
            self._skipped_seen.add(seq)
            why = (
                f"record {seq} ({size} bytes) is larger than a sync message may be "
                f"({self.config.batch_bytes} bytes): not sent; the collector will report a gap at {seq}"
            )
            log.warning("sync: %s", why)
            self._skip_warnings = (self._skip_warnings + (why,))[-_MAX_SKIP_WARNINGS:]
            await self.ledger.append_async(
                "sync.skipped", {"seq": seq, "bytes": size, "digest": digest, "limit_bytes": self.config.batch_bytes}
            )

    async def _resend_requests(self) -> None:
        """A collector that lost records (a new collector, a broker that dropped them) asks again."""
        async for msg in self._resend_sub:
            try:
                start = decode_resend(msg.payload)
            except SyncFormatError as exc:
                log.warning("ignoring a malformed resend request: %s", exc.message)
                continue
            now = time.monotonic()
            if start >= self._offset.acked or now - self._last_resend < self.config.resend_interval_s:
                continue  # nothing acknowledged to resend, or asked too often (requests are unauthenticated)
            self._last_resend = now
            self.resends += 1
            log.info("collector asked to resend from record %d", start)
            self._resend_from = start if self._resend_from is None else min(start, self._resend_from)

    # -- persistence and status ---------------------------------------------------------------------
    def _persist(self, force: bool = False) -> None:
        with self._persist_lock:  # the housekeeper's write may still run in its thread during stop()
            self._persist_locked(force)

    def _persist_locked(self, force: bool) -> None:
        if (
            force
            or self._offset.acked != self._saved.acked
            or self._offset.checkpoint_size != self._saved.checkpoint_size
        ):
            off = self._offset
            self._offsets.save(off)
            self._saved = off

    async def _housekeeping(self) -> None:
        last_status = last_retention = 0.0
        last_acked, last_t = self._offset.acked, time.monotonic()
        while True:
            await asyncio.sleep(self.config.offset_s or 0.05)
            await asyncio.to_thread(self._persist)
            now = time.monotonic()
            if now - last_retention >= self.config.status_s * 5 or last_retention == 0.0:
                last_retention = now
                await self._check_retention()
            if now - last_status >= self.config.status_s:
                inst = (self._offset.acked - last_acked) / max(now - last_t, 1e-6)
                self._rate = inst if self._rate == 0 else 0.5 * self._rate + 0.5 * inst
                last_acked, last_t, last_status = self._offset.acked, now, now
                await asyncio.to_thread(write_status, self.state_dir, self.status)

    async def _check_retention(self) -> None:
        policy = self.config.retention
        if policy.max_bytes is None:
            return
        used = await asyncio.to_thread(_dir_bytes, self.state_dir / "ledger")
        self._ledger_bytes = used
        first = getattr(self.ledger, "first_seq", 0)
        backlog = max(0, self.ledger.size - max(self._offset.acked, first))
        self._warnings = retention_warnings(policy, used_bytes=used, backlog=backlog)
        level = 0 if not self._warnings else (2 if used >= policy.max_bytes else 1)
        if level > self._warn_level:
            await self.ledger.append_async(
                "sync.retention",
                {
                    "level": "limit" if level == 2 else "warning",
                    "used_bytes": used,
                    "limit_bytes": policy.max_bytes,
                    "backlog": backlog,
                    "on_full": policy.on_full,
                },
            )
        self._warn_level = level
        if policy.on_full != "keep" and used >= policy.prune_at and hasattr(self.ledger, "prune"):
            await asyncio.to_thread(self._prune, used)
            self._ledger_bytes = await asyncio.to_thread(_dir_bytes, self.state_dir / "ledger")

    def _prune(self, used: int) -> None:
        """Free whole segments as the retention policy allows (a worker thread)."""
        policy, acked = self.config.retention, self._offset.acked
        usage = self.ledger.disk_usage()
        before = prune_point(
            policy, used_bytes=usage.total, segments=usage.segments, acked=acked, size=self.ledger.size
        )
        if before is None:
            if policy.on_full == "drop-synced" and acked < self.ledger.size:
                log.warning(
                    "sync: ledger over its retention threshold; %d unsynced records are kept", self.ledger.size - acked
                )
            return
        first = self.ledger.first_seq
        result = self.ledger.prune(
            before,
            reason=f"retention {policy.on_full}",
            details={
                "unsynced": max(0, before - max(acked, first)),
                "used_bytes": usage.total,
                "limit_bytes": policy.max_bytes,
                "on_full": policy.on_full,
            },
        )
        if result.records:
            self.pruned.append(result)


def _dir_bytes(path: Path) -> int:
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


async def run_sync(
    ledger: Ledger,
    bridge: Any,
    *,
    config: SyncConfig | Mapping[str, Any] | None = None,
    state_dir: str | os.PathLike[str],
) -> None:
    """Run the sync until cancelled (the daemon's alternative to start/stop).

    ``config`` is a SyncConfig, or the raw ``sync:`` mapping of the device config (parsed here).
    """
    if not isinstance(config, SyncConfig):
        config = parse_sync_config(config)
    sync = LedgerSync(ledger, bridge, config=config, state_dir=state_dir)
    await sync.start()
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(sync.stop())
