"""Read-only access to a ledger directory (I/O shell): no signer, no writes.

Used by ``kestrel audit`` and by :class:`Ledger` for iteration, export and proofs. Everything here
reads in bounded memory: segments are mapped and walked page by page, the persisted index
(index.py) locates a record or a Merkle subtree without reading what comes before it, and
verification keeps only a frontier of the tree. An unfinished write at the very end (a writer
running, or one that crashed) is skipped; damage anywhere else raises.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from ..identity.keys import PublicKey
from .base import LogBase, verify_base
from .checkpoint import CheckpointError, SignedCheckpoint, verify_checkpoint
from .errors import LedgerError, LedgerVerificationError, Reason, RecordError
from .export import encode_export, encode_proof, proof_file
from .frame import CHECKPOINT, RECORD, Frame, FrameDamage, iter_frames, read_frame
from .index import BLOCK, IndexReader, load_kinds
from .merkle import Frontier, ProofError, _split, node_hash, tree_root, verify_inclusion
from .record import Record, decode_record, leaf_hash
from .store import SEGMENT_MAGIC, map_segment, read_base, segment_files, segment_parts
from .verify import LogWalker, Part, VerifiedLog, is_torn_tail, walk_parts

_FRAME_HEAD = struct.Struct(">2sBBI")
_LEAF = hashlib.sha256(b"\x00")

__all__ = [
    "read_stream",
    "load_base",
    "walk_dir",
    "iter_records",
    "iter_frames_from",
    "verify_dir",
    "export_chunks",
    "prove",
    "rescan_root",
    "latest_record",
    "latest_checkpoint_unsafe",
    "RecordCursor",
]


def load_base(ledger_dir: Path, public_key: PublicKey) -> LogBase | None:
    """The verified base of a pruned log (None if never pruned); raises if it does not verify."""
    payload = read_base(Path(ledger_dir))
    return verify_base(payload, public_key) if payload is not None else None


def walk_dir(
    ledger_dir: Path, public_key: PublicKey, *, trusted: SignedCheckpoint | None = None, all_signatures: bool = True
) -> tuple[VerifiedLog, LogWalker]:
    """Verify the on-disk log from its base (if pruned), segment by segment in bounded memory;
    an unfinished final write is tolerated."""
    ledger_dir = Path(ledger_dir)
    base = load_base(ledger_dir, public_key)
    parts = segment_parts(ledger_dir)
    try:
        return walk_parts(
            parts,
            public_key,
            trusted=trusted,
            allow_torn_tail=True,
            all_signatures=all_signatures,
            base=base,
            keep_leaves=False,
            rescan=lambda n: rescan_root(ledger_dir, base, n),
        )
    finally:
        _close(parts)


def _close(parts: list[Part]) -> None:
    for part in parts:
        if part.close is not None:
            part.close()


def rescan_root(ledger_dir: Path, base: LogBase | None, size: int) -> bytes:
    """MTH of the first ``size`` records, read again from disk (a bounded second pass, for a verifier
    that meets a checkpoint older than the tree it already folded)."""
    frontier = base.frontier() if base is not None else Frontier()
    if size < frontier.size:
        raise ValueError(f"the tree of {size} records was pruned")
    batch: list[bytes] = []
    for raw in _raw_records(Path(ledger_dir), frontier.size, stop=size):
        batch.append(leaf_hash(raw))
        if len(batch) >= 4096:
            frontier.extend(batch)
            batch.clear()
    frontier.extend(batch)
    if frontier.size != size:
        raise ValueError(f"the log holds fewer than {size} records")
    return frontier.root()


def read_stream(ledger_dir: Path, *, from_seq: int = 0) -> bytes:
    """The whole frame stream of the segments that can hold records >= ``from_seq`` (in memory: for
    tests and tools that edit small logs; the readers here never load it)."""
    parts = segment_parts(Path(ledger_dir), from_seq=from_seq)
    try:
        return b"".join(bytes(p.data[p.start :]) for p in parts)
    finally:
        _close(parts)


def _start(ledger_dir: Path, since_seq: int) -> tuple[list[tuple[int, Path, int]], int, int, int]:
    """Where to start reading for ``since_seq``: (segments from there on, offset in the first one,
    seq of the first record at or after that offset, the base size)."""
    payload = read_base(ledger_dir)
    floor = 0
    if payload is not None:
        from .base import base_size_unsafe

        floor = base_size_unsafe(payload) or 0
    files = [f for f in segment_files(ledger_dir) if f[0] >= floor]
    since_seq = max(since_seq, floor)
    index = IndexReader.open(ledger_dir)
    if index is not None:
        try:
            found = index.position(since_seq)
        finally:
            index.close()
        if found is not None:
            block_seq, segment, offset = found
            for i, (start, _, size) in enumerate(files):
                if start == segment and start <= block_seq and len(SEGMENT_MAGIC) <= offset <= size:
                    return files[i:], offset, block_seq, floor
    first = 0
    for i, (start, _, _) in enumerate(files):
        if start <= since_seq:
            first = i
    files = files[first:]
    return files, len(SEGMENT_MAGIC), files[0][0] if files else since_seq, floor


def iter_frames_from(ledger_dir: Path, since_seq: int = 0) -> Iterator[tuple[int, Frame]]:
    """(seq of the next record, frame) for every frame from a block start at or before record
    ``since_seq`` (found with the index) to the end; segments are mapped one at a time and released as
    they are read. The last segment may end in an unfinished write (skipped); other damage raises."""
    ledger_dir = Path(ledger_dir)
    files, offset, seq, _ = _start(ledger_dir, since_seq)
    checked = False  # the first record read must be the one the index promised
    for n, (start, path, _) in enumerate(files):
        part = map_segment(path, start)
        try:
            if n and seq != start:
                raise LedgerVerificationError(
                    seq,
                    Reason.CORRUPT,
                    f"segment {path.name} is named for record {start}, but record {seq} "
                    "is the next in the log there; run `kestrel audit verify`",
                )
            data, off = part.data, (offset if n == 0 else part.start)
            view = memoryview(data)
            released = off
            try:
                head = _FRAME_HEAD.unpack_from
                while off < len(data):
                    if checked and seq < since_seq and len(data) - off >= 16:  # before the first wanted record:
                        magic, ftype, _, length = head(data, off)  # step over it by its header
                        if magic == b"KF" and ftype == RECORD and off + 16 + length <= len(data):
                            off += 16 + length
                            seq += 1
                            continue
                    item = read_frame(view, off)
                    if isinstance(item, FrameDamage) and not checked and (n, off) != (0, part.start):
                        yield from _from_segment_start(ledger_dir, since_seq)  # an index entry off a frame
                        return
                    if isinstance(item, FrameDamage):
                        if n == len(files) - 1 and is_torn_tail(data, item):
                            return
                        raise _damaged(seq, path, item)
                    if item.type == RECORD and not checked:
                        checked = True
                        try:
                            first = decode_record(item.payload).seq
                        except RecordError as exc:
                            raise LedgerVerificationError(seq, Reason.CORRUPT, exc.message) from None
                        if first != seq:  # a stale index (or a damaged one): read from the segment's start
                            yield from _from_segment_start(ledger_dir, since_seq)
                            return
                    yield seq, item
                    if item.type == RECORD:
                        seq += 1
                    off = item.end
                    if off - released >= 8 << 20 and part.release is not None:
                        part.release(off)
                        released = off
            finally:
                del view
        finally:
            part.close()  # type: ignore[misc]


def _from_segment_start(ledger_dir: Path, since_seq: int) -> Iterator[tuple[int, Frame]]:
    payload = read_base(ledger_dir)
    floor = 0
    if payload is not None:
        from .base import base_size_unsafe

        floor = base_size_unsafe(payload) or 0
    files = [f for f in segment_files(ledger_dir) if f[0] >= floor]
    first = max([i for i, f in enumerate(files) if f[0] <= since_seq], default=0)
    seq = files[first][0] if files else 0
    for n, (start, path, _) in enumerate(files[first:]):
        part = map_segment(path, start)
        try:
            for item in iter_frames(part.data, part.start):
                if isinstance(item, FrameDamage):
                    if n == len(files) - first - 1 and is_torn_tail(part.data, item):
                        return
                    raise _damaged(seq, path, item)
                yield seq, item
                if item.type == RECORD:
                    seq += 1
        finally:
            part.close()  # type: ignore[misc]


def _damaged(seq: int, path: Path, damage: FrameDamage) -> LedgerVerificationError:
    return LedgerVerificationError(
        seq, Reason.BIT_FLIP, f"damaged frame in {path.name}: {damage.detail}; run `kestrel audit verify`"
    )


def _raw_records(ledger_dir: Path, since_seq: int, *, stop: int | None = None) -> Iterator[bytes]:
    for seq, item in iter_frames_from(ledger_dir, since_seq):
        if item.type != RECORD or seq < since_seq:
            continue
        if stop is not None and seq >= stop:
            return
        yield item.payload


def iter_records(ledger_dir: Path, *, since_seq: int = 0, kind: str | None = None) -> Iterator[Record]:
    """Records with seq >= ``since_seq`` (and of ``kind``, a name or a ``prefix.*``), oldest first.

    Starts at the index's block for ``since_seq`` (time and memory do not grow with the ledger)."""
    prefix = kind[:-1] if kind and kind.endswith("*") else None
    for seq, item in iter_frames_from(Path(ledger_dir), since_seq):
        if item.type != RECORD or seq < since_seq:
            continue
        try:
            rec = decode_record(item.payload)
        except RecordError as exc:
            raise LedgerVerificationError(seq, Reason.CORRUPT, exc.message) from None
        if rec.seq != seq:
            raise LedgerVerificationError(
                seq,
                Reason.CORRUPT if rec.seq < seq else Reason.MISSING,
                f"record {rec.seq} found where record {seq} belongs; run `kestrel audit verify`",
            )
        if kind is None or rec.kind == kind or (prefix is not None and rec.kind.startswith(prefix)):
            yield rec


def latest_record(ledger_dir: Path, kind: str) -> Record | None:
    """The newest record of ``kind``: from the writer's saved map (index.kinds), reading only the records
    written since it was saved (at most a few thousand), or the whole log when there is no map."""
    size, latest = load_kinds(Path(ledger_dir))
    found = None
    start = latest.get(kind, size)
    for rec in iter_records(ledger_dir, since_seq=start, kind=kind):
        found = rec
    if found is None and kind in latest:  # the map is stale (a cut tail, a restored directory): scan all
        for rec in iter_records(ledger_dir, kind=kind):
            found = rec
    return found


def verify_dir(ledger_dir: Path, public_key: PublicKey, *, trusted: SignedCheckpoint | None = None) -> VerifiedLog:
    """Verify the whole on-disk log (an unfinished final write is tolerated and counted)."""
    return walk_dir(ledger_dir, public_key, trusted=trusted)[0]


def export_chunks(ledger_dir: Path, public_key: PublicKey) -> tuple[VerifiedLog, Iterator[bytes]]:
    """Verify, then the export of every record covered by the latest signed checkpoint (a generator:
    write it out chunk by chunk)."""
    verified, walker = walk_dir(ledger_dir, public_key)
    if verified.checkpoint is None:
        raise LedgerError(
            "the ledger has no signed checkpoint yet", hint="start the agent once so that it signs its log"
        )
    cp = verified.checkpoint
    raws = _raw_records(Path(ledger_dir), walker.offset, stop=cp.size)
    return verified, iter(encode_export(cp, raws, base=walker.base))


# -- proofs ---------------------------------------------------------------------------------------


def latest_checkpoint_unsafe(ledger_dir: Path, public_key: PublicKey) -> tuple[SignedCheckpoint, int] | None:
    """The newest checkpoint frame of the log (signature verified, the log itself not) and the number
    of records in the log, found by reading forward from the last indexed blocks only (the writer
    stores checkpoints in increasing size, so the last one in the stream is the newest)."""
    ledger_dir = Path(ledger_dir)
    index = IndexReader.open(ledger_dir)
    try:
        blocks = index.blocks if index is not None else 0
        step = 1
        while True:
            start = max(0, (blocks - step) * BLOCK)
            note, size = None, start
            try:
                for seq, ftype, payload in _fast_frames(ledger_dir, index, start):
                    if ftype == RECORD:
                        size = seq + 1
                    elif ftype == CHECKPOINT:
                        note = payload
            except ValueError:
                if index is None:
                    raise LedgerVerificationError(
                        start, Reason.BIT_FLIP, "a damaged frame; run `kestrel audit verify`"
                    ) from None
                index.close()
                index, blocks, step = None, 0, 1  # the index is off: read the log from its start
                continue
            if note is not None:
                try:
                    return verify_checkpoint(bytes(note), public_key), size
                except CheckpointError as exc:
                    raise LedgerVerificationError(max(size - 1, 0), exc.reason, exc.message) from None
            if start == 0:
                return None
            step *= 4
    finally:
        if index is not None:
            index.close()


def prove(ledger_dir: Path, public_key: PublicKey, seq: int) -> bytes:
    """An inclusion-proof file for record ``seq`` against the latest signed checkpoint.

    Built from the index (a few hashes and at most two blocks of records): it does not verify the
    whole log (`kestrel audit verify` does). Without a usable index, the whole log is walked."""
    ledger_dir = Path(ledger_dir)
    found = latest_checkpoint_unsafe(ledger_dir, public_key)
    payload = read_base(ledger_dir)
    base = verify_base(payload, public_key) if payload is not None else None
    first = base.size if base is not None else 0
    cp, size = found if found is not None else (None, 0)
    if base is not None and (cp is None or cp.size < base.size):
        cp = base.checkpoint
    if seq < first:
        raise LedgerError(
            f"record {seq} was pruned: the ledger keeps records from {first} on",
            hint="prove it from an export made before the prune",
        )
    if cp is None or not 0 <= seq < cp.size:
        signed = cp.size if cp else 0
        if 0 <= seq < max(size, signed):
            covered = f"the latest covers records 0..{signed - 1}" if signed else "there is none yet"
            raise LedgerError(
                f"record {seq} is not yet covered by a signed checkpoint ({covered})",
                hint="a running agent signs new records within a second: retry in a moment; with no agent "
                "running, its next start (`kestrel run`) signs them",
            )
        raise LedgerError(
            f"no signed record {seq}: the latest checkpoint covers records 0..{signed - 1}",
            hint="`kestrel audit log` lists the records",
        )
    proof = _indexed_proof(ledger_dir, seq, cp)
    if proof is not None:
        return proof
    verified, walker = _walk_keeping_leaves(ledger_dir, public_key)  # the slow path: no (usable) index
    cp = verified.checkpoint
    if cp is None or not seq < cp.size:  # the log changed since the checkpoint was read
        raise LedgerError(f"record {seq} is not covered by a signed checkpoint", hint="retry in a moment")
    raw = next(_raw_records(ledger_dir, seq))
    return encode_proof(seq, walker.leaves[: cp.size - walker.offset], raw, cp, base=walker.base_frontier())


def _walk_keeping_leaves(ledger_dir: Path, public_key: PublicKey) -> tuple[VerifiedLog, LogWalker]:
    base = load_base(ledger_dir, public_key)
    parts = segment_parts(ledger_dir)
    try:
        return walk_parts(parts, public_key, allow_torn_tail=True, base=base)
    finally:
        _close(parts)


class _Subtrees:
    """Subtree roots from the index (whole groups of blocks) and from the records (inside a block)."""

    def __init__(self, ledger_dir: Path, index: IndexReader, size: int) -> None:
        self.dir, self.index, self.size = ledger_dir, index, size
        self.full = min(size // BLOCK, index.blocks)  # blocks whose root the index may hold
        self._blocks: dict[int, list[bytes]] = {}

    def leaves(self, block: int) -> list[bytes]:
        if block not in self._blocks:
            lo = block * BLOCK
            hi = min(lo + BLOCK, self.size)
            leaf = _LEAF.copy
            hashes = []
            for raw in self.raws(lo, hi):
                h = leaf()
                h.update(raw)
                hashes.append(h.digest())
            self._blocks[block] = hashes
        return self._blocks[block]

    def raws(self, lo: int, hi: int) -> list[bytes]:
        """The stored bytes of records ``lo .. hi - 1`` (within one block)."""
        out = []
        for seq, ftype, payload in _fast_frames(self.dir, self.index, lo):
            if ftype == RECORD and seq >= lo:
                if seq >= hi:
                    break
                out.append(payload)
        if len(out) != hi - lo:
            raise ValueError(f"records {lo}..{hi - 1} are not all there")
        return out

    def root(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n >= BLOCK and n & (n - 1) == 0 and lo % n == 0 and hi <= self.full * BLOCK:
            level = (n // BLOCK).bit_length() - 1
            h = self.index.node(level, lo // n)
            if h is None:
                raise ValueError("the index does not hold that subtree yet")
            return h
        if lo // BLOCK == (hi - 1) // BLOCK:
            block = lo // BLOCK
            leaves = self.leaves(block)
            return tree_root(leaves[lo - block * BLOCK : hi - block * BLOCK])
        k = _split(n)
        return node_hash(self.root(lo, lo + k), self.root(lo + k, hi))


def _segment_names(ledger_dir: Path) -> list[int]:
    """First seqs of the log's segments, oldest first (no stat: the proof path lists them often)."""
    try:
        names = sorted(
            int(n[:20]) for n in os.listdir(ledger_dir) if len(n) == 24 and n.endswith(".seg") and n[:20].isdigit()
        )
    except OSError:
        return []
    payload = read_base(ledger_dir)
    if payload is not None:  # segments a prune left behind are not part of the log
        from .base import base_size_unsafe

        floor = base_size_unsafe(payload) or 0
        names = [n for n in names if n >= floor]
    return names


def _fast_frames(ledger_dir: Path, index: IndexReader | None, seq: int) -> Iterator[tuple[int, int, bytes]]:
    """(seq of the next record, frame type, payload) from the indexed block of ``seq`` to the end of the log,
    reading frame headers only (no CRC, no decoding: for proofs, which are checked against the signed
    root before they are used). Stops at an unfinished frame; ValueError where the index or a frame
    header is not what it should be (the caller then takes the careful path)."""
    found = index.position(seq) if index is not None else None
    names = _segment_names(Path(ledger_dir))
    if found is None or found[1] not in names:  # no entry, or one for a pruned segment
        if not names:
            return
        first = max([n for n in names if n <= seq], default=names[0])
        found = (first, first, len(SEGMENT_MAGIC))
    next_seq, segment, offset = found
    head = _FRAME_HEAD.unpack_from
    for first in names[names.index(segment) :]:
        if first != segment and first != next_seq:
            raise ValueError("a segment does not start where the previous one ends")
        part = map_segment(Path(ledger_dir) / f"{first:020d}.seg", first)
        try:
            data, off = part.data, (offset if first == segment else part.start)
            n = len(data)
            while n - off >= 16:
                magic, ftype, _, length = head(data, off)
                if magic != b"KF":
                    raise ValueError(f"no frame at byte {off} of segment {first}")
                end = off + 16 + length
                if end > n:
                    break
                yield next_seq, ftype, data[off + 16 : end]
                if ftype == RECORD:
                    next_seq += 1
                off = end
        finally:
            part.close()  # type: ignore[misc]


def _indexed_proof(ledger_dir: Path, seq: int, cp: SignedCheckpoint) -> bytes | None:
    index = IndexReader.open(ledger_dir)
    if index is None:
        return None
    try:
        src = _Subtrees(ledger_dir, index, cp.size)
        path: list[bytes] = []
        lo, hi, m = 0, cp.size, seq
        while hi - lo > 1:  # RFC 6962 PATH, iteratively: the sibling at each level, leaf side first
            k = _split(hi - lo)
            if m - lo < k:
                path.append(src.root(lo + k, hi))
                hi = lo + k
            else:
                path.append(src.root(lo, lo + k))
                lo = lo + k
        path.reverse()
        raw = src.raws(seq, seq + 1)[0]
        verify_inclusion(leaf_hash(raw), seq, cp.size, path, cp.root)
        if decode_record(raw).seq != seq:
            return None
    except (ValueError, ProofError, StopIteration, LedgerError, RecordError, OSError):
        return None  # a stale or damaged index, or a pruned block: the caller takes the slow path
    finally:
        index.close()
    return proof_file(seq, path, raw, cp)


# -- following a growing log ---------------------------------------------------------------------


class RecordCursor:
    """Records appended after a position, read incrementally: each :meth:`poll` reads only the bytes
    written since the previous one (``kestrel audit log --follow``)."""

    def __init__(self, ledger_dir: Path, since_seq: int = 0) -> None:
        self.dir = Path(ledger_dir)
        files, offset, seq, _ = _start(self.dir, since_seq)
        self._segment = files[0][0] if files else None
        self._offset = offset
        self.next_seq = seq  # seq of the next record frame at the cursor
        self._since = since_seq
        self._checked = False

    def poll(self, *, max_bytes: int = 4 << 20) -> list[Record]:
        """The complete records written since the last poll (reads at most about ``max_bytes``)."""
        out: list[Record] = []
        budget = max_bytes
        while budget > 0:
            if self._segment is None:
                files = segment_files(self.dir)
                if not files:
                    return out
                self._segment, self._offset, self.next_seq = files[0][0], len(SEGMENT_MAGIC), files[0][0]
            path = self.dir / f"{self._segment:020d}.seg"
            try:
                with open(path, "rb") as fh:
                    fh.seek(self._offset)
                    data = fh.read(min(budget, 1 << 20))
            except FileNotFoundError:
                data = b""
            budget -= len(data)
            try:
                off = self._take(data, path, out)
            except _Restart:
                out.clear()
                continue
            self._offset += off
            if off:
                continue  # progress: there may be more
            later = [f[0] for f in segment_files(self.dir) if f[0] > self._segment]
            if not later or not _at_end(path, self._offset + len(data)):
                return out  # caught up (or a write in progress)
            if later[0] != self.next_seq:
                raise LedgerVerificationError(
                    self.next_seq,
                    Reason.CORRUPT,
                    f"segment {later[0]:020d}.seg is named for record {later[0]}, but record "
                    f"{self.next_seq} is the next; run `kestrel audit verify`",
                )
            self._segment, self._offset = later[0], len(SEGMENT_MAGIC)  # a torn remainder was never acknowledged
        return out

    def _take(self, data: bytes, path: Path, out: list[Record]) -> int:
        """Decode the whole frames at the start of ``data`` into ``out``; return the bytes consumed."""
        off = 0
        for item in iter_frames(data):
            if isinstance(item, FrameDamage):
                if not self._checked and self._offset != len(SEGMENT_MAGIC):  # an index entry off a frame
                    self._offset, self.next_seq, self._checked = len(SEGMENT_MAGIC), self._segment or 0, True
                    raise _Restart
                if item.kind == "torn":
                    break  # a write in progress: the rest comes with a later poll
                raise _damaged(self.next_seq, path, item)
            off = item.end
            if item.type != RECORD:
                continue
            try:
                rec = decode_record(item.payload)
            except RecordError as exc:
                raise LedgerVerificationError(self.next_seq, Reason.CORRUPT, exc.message) from None
            if rec.seq != self.next_seq:
                if not self._checked:  # a stale index entry: start again at the segment's first record
                    self._offset, self.next_seq, self._checked = len(SEGMENT_MAGIC), self._segment or 0, True
                    raise _Restart
                raise LedgerVerificationError(
                    self.next_seq, Reason.MISSING, f"record {rec.seq} found where record {self.next_seq} belongs"
                )
            self._checked = True
            self.next_seq += 1
            if rec.seq >= self._since:
                out.append(rec)
        return off


class _Restart(Exception):
    pass


def _at_end(path: Path, offset: int) -> bool:
    try:
        return os.stat(path).st_size <= offset
    except FileNotFoundError:
        return True
