"""Log verification (pure): bytes and a public key in, a VerifiedLog out, or an error.

The verifier walks the frame stream once, hashing each record's stored bytes
(never re-encoding), checking sequence numbers, the ``prev`` hash chain and
every checkpoint's signature and root. The first problem raises
:class:`LedgerVerificationError` naming the record and a :class:`Reason`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..identity.keys import PublicKey
from .base import LogBase
from .checkpoint import CheckpointError, SignedCheckpoint, parse_checkpoint_unsafe, verify_checkpoint
from .errors import LedgerVerificationError, Reason, RecordError
from .frame import BASE, PAD, RECORD, TAIL_SEAL, Frame, FrameDamage, find_next_frame, iter_frames, pad_valid, read_frame
from .merkle import Frontier, tree_root
from .record import ZERO_HASH, Record, decode_record
from .scan import scan_records
from .tailmac import seal_size, seal_valid

__all__ = [
    "VerifiedLog",
    "verify_stream",
    "walk_stream",
    "walk_parts",
    "Part",
    "LogWalker",
    "check_trusted",
    "is_torn_tail",
    "damage_error",
]

_WINDOW = 8 << 20  # bytes scanned between two releases of a part's pages (bounded RSS over mmap)
_KEEP = 16384  # bounded walkers keep at most about this many recent leaf hashes (checkpoints lag commits)


@dataclass(frozen=True)
class VerifiedLog:
    """A log that verified: ``size`` records, the first ``signed_size`` covered by ``checkpoint``."""

    did: str
    size: int
    root: bytes
    signed_size: int
    checkpoint: SignedCheckpoint | None
    torn_bytes: int = 0  # bytes of an unfinished write ignored at the end (on-disk logs only)
    first_seq: int = 0  # a pruned log's base size: records before it are gone (see LogBase)

    @property
    def unsigned(self) -> int:
        """Records after the latest checkpoint (a running writer's, or one that crashed)."""
        return self.size - self.signed_size


def is_torn_tail(buf: Any, damage: FrameDamage) -> bool:
    """An unfinished write: the last frame runs past the end, or the rest is zeros, and nothing intact follows."""
    if damage.kind != "torn" and bytes(buf[damage.offset :]).strip(b"\x00"):
        return False
    return find_next_frame(buf, damage.offset + 1) is None


@dataclass
class Part:
    """One piece of a frame stream: ``data[start:]`` holds frames (a segment file mapped, or a buffer).

    ``first_seq`` is the seq the piece must start at (a segment's name), None if unnamed; ``name``
    is for messages; ``release(upto)`` may drop pages already walked (mmap), ``close()`` unmap."""

    data: Any  # bytes | mmap.mmap: supports len, slicing, find and memoryview
    start: int = 0
    first_seq: int | None = None
    name: str = ""
    release: Callable[[int], None] | None = None
    close: Callable[[], None] | None = None

    size: int = -1  # len(data), kept after close()

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.data)

    @property
    def length(self) -> int:
        return self.size - self.start


class LogWalker:
    """Checks records one by one: sequence, hash chain; keeps the leaf hashes for roots.

    With ``keep_leaves=False`` (the on-disk verifiers) only about the last ``_KEEP`` leaves are kept:
    older ones are folded into the frontier, and the root of an older tree size comes from the
    roots remembered at checkpoints, or from ``rescan(size)`` (a second, bounded pass)."""

    def __init__(
        self,
        buf: Any = None,
        base: LogBase | None = None,
        *,
        keep_leaves: bool = True,
        rescan: Callable[[int], bytes] | None = None,
    ) -> None:
        self._buf = buf
        self.base = base
        self.offset = base.size if base is not None else 0  # seq of the first record of the log
        self._lbase = self.offset  # seq of leaves[0]
        self.leaves: list[bytes] = []
        self.prev = base.prev if base is not None else ZERO_HASH
        self._frontier = base.frontier() if base is not None else Frontier()  # offset <= size <= self.size
        self._keep = keep_leaves
        self._rescan = rescan
        self._roots: dict[int, bytes] = {}  # bounded mode: roots at the sizes asked for, newest last
        # records known to be the writer's own: covered by a checkpoint, or by a tail seal whose MAC
        # verified (a writer walking with its key); safe_offset: the stream offset just past the last
        # frame at which every record before it was (the rest is cut on open, see Ledger.open)
        self.authenticated = self.offset
        self.safe_offset = 0
        self.kinds: dict[str, int] | None = None  # latest seq per kind (walk_parts fills it when asked)
        self.index: Any = None
        if base is not None and not keep_leaves:  # a checkpoint for exactly the base may come after leaves fold
            self._roots[self.offset] = self._frontier.root()

    @property
    def size(self) -> int:
        return self._lbase + len(self.leaves)

    def base_frontier(self) -> Frontier | None:
        return self.base.frontier() if self.base is not None else None

    def add(
        self, frame: Frame, later: Callable[[], Iterator[Frame | FrameDamage]] | None = None, at: int | None = None
    ) -> Record:
        """Take the record ``frame``; ``later()`` iterates the frames after it (default: the walker's buffer)."""
        expected = self.size
        pos = frame.offset if at is None else at
        try:
            rec = decode_record(frame.payload)
        except RecordError as exc:
            raise LedgerVerificationError(expected, Reason.CORRUPT, f"at byte {pos}: {exc.message}") from None
        if rec.seq != expected:
            if rec.seq < expected:
                raise LedgerVerificationError(
                    rec.seq, Reason.INSERTED, f"a second record claims seq {rec.seq} (at byte {pos})"
                )
            frames = later() if later is not None else iter_frames(self._buf, frame.end)
            if _appears_later(frames, expected):
                raise LedgerVerificationError(
                    expected, Reason.REORDERED, f"record {expected} comes after record {rec.seq}"
                )
            raise LedgerVerificationError(expected, Reason.MISSING, f"the next record present is {rec.seq}")
        if rec.prev != self.prev:
            raise LedgerVerificationError(
                expected, Reason.CORRUPT, f"record {expected} does not chain to record {expected - 1}'s hash"
            )
        self.prev = rec.digest
        self.leaves.append(rec.digest)
        if self.kinds is not None:
            self.kinds[rec.kind] = rec.seq
        return rec

    def scan(self, view: memoryview, off: int, *, limit: int | None = None) -> int:
        """Take the run of well-formed next records at ``off`` (the fast path, see scan.py);
        return the offset of the first frame left for :meth:`add`. Stops at ``limit`` records."""
        off, self.prev = scan_records(
            view, off, seq=self.size, prev=self.prev, leaves=self.leaves, limit=limit, kinds=self.kinds
        )
        if not self._keep and len(self.leaves) > 2 * _KEEP:
            self._fold(self.size - _KEEP)
        return off

    def _fold(self, size: int) -> None:
        """Hash leaves up to ``size`` into the frontier and forget them (bounded mode)."""
        if size > self._frontier.size:
            self._frontier.extend(self.leaves[self._frontier.size - self._lbase : size - self._lbase])
        keep = self._frontier.size if self.index is None else min(self._frontier.size, self.index.fed)
        drop = keep - self._lbase  # never a leaf the index builder has not been fed yet
        if drop > 0:
            del self.leaves[:drop]
            self._lbase = keep

    def peek_frontier(self) -> Frontier:
        """The compact range of every leaf walked so far, leaving the walker's own as it is (folding it
        early would make a checkpoint met later for an older size need a rescan)."""
        frontier = self._frontier.copy()
        frontier.extend(self.leaves[frontier.size - self._lbase :])
        return frontier

    def frontier(self) -> Frontier:
        """The compact range of every leaf walked so far (a copy)."""
        self.root_at(self.size)
        return self._frontier.copy()

    def root_at(self, size: int) -> bytes:
        """Root of the first ``size`` leaves (cheap for increasing sizes)."""
        if size < self.offset:
            raise ValueError(f"the tree of {size} records was pruned (the log starts at {self.offset})")
        if size > self.size:
            raise ValueError(f"the tree of {size} records is larger than the {self.size} walked")
        if size < self._frontier.size:
            if size in self._roots:
                return self._roots[size]
            if size >= self._lbase and self._keep:
                if self.base is None:
                    return tree_root(self.leaves[:size])
                f = self.base.frontier()
                f.extend(self.leaves[: size - self.offset])
                return f.root()
            if self._rescan is None:
                raise ValueError(f"the root of {size} records is no longer known")
            return self._remember(size, self._rescan(size))
        self._frontier.extend(self.leaves[self._frontier.size - self._lbase : size - self._lbase])
        if not self._keep:
            self._fold(size)
        return self._remember(size, self._frontier.root())

    def _remember(self, size: int, root: bytes) -> bytes:
        if not self._keep:
            self._roots[size] = root
            if len(self._roots) > 256:
                del self._roots[next(iter(self._roots))]
        return root


def _appears_later(frames: Iterator[Frame | FrameDamage], seq: int) -> bool:
    for item in frames:
        if isinstance(item, FrameDamage):
            return False
        if item.type == RECORD:
            try:
                if decode_record(item.payload).seq == seq:
                    return True
            except RecordError:
                continue
    return False


def _checkpoint(note: bytes, seq: int, public_key: PublicKey, *, verify: bool = True) -> SignedCheckpoint:
    try:
        return (verify_checkpoint if verify else parse_checkpoint_unsafe)(note, public_key)
    except CheckpointError as exc:
        raise LedgerVerificationError(seq, exc.reason, f"checkpoint for record {seq}: {exc.message}") from None


def damage_error(walker: LogWalker, damage: FrameDamage, at: int | None = None) -> LedgerVerificationError:
    """The error for a damaged frame: cut short (``truncated``) or altered (``bit_flip``)."""
    pos = damage.offset if at is None else at
    if damage.kind == "torn":
        return LedgerVerificationError(walker.size, Reason.TRUNCATED, f"the log ends inside a frame at byte {pos}")
    return LedgerVerificationError(walker.size, Reason.BIT_FLIP, f"frame at byte {pos}: {damage.detail}")


def verify_stream(
    buf: bytes,
    public_key: PublicKey,
    *,
    start: int = 0,
    trusted: SignedCheckpoint | None = None,
    allow_torn_tail: bool = False,
) -> VerifiedLog:
    """Verify an on-disk frame stream (records with checkpoints after them).

    Records after the last checkpoint are allowed (``VerifiedLog.unsigned``);
    an unfinished last frame is tolerated only with ``allow_torn_tail``.
    """
    return walk_stream(buf, public_key, start=start, trusted=trusted, allow_torn_tail=allow_torn_tail)[0]


def walk_stream(
    buf: bytes,
    public_key: PublicKey,
    *,
    start: int = 0,
    trusted: SignedCheckpoint | None = None,
    allow_torn_tail: bool = False,
    all_signatures: bool = True,
    base: LogBase | None = None,
    tail_key: bytes | None = None,
) -> tuple[VerifiedLog, LogWalker]:
    """:func:`walk_parts` over one buffer (every leaf kept: the walker serves proofs and exports)."""
    return walk_parts(
        [Part(buf, start)],
        public_key,
        trusted=trusted,
        allow_torn_tail=allow_torn_tail,
        all_signatures=all_signatures,
        base=base,
        tail_key=tail_key,
    )


def walk_parts(
    parts: Sequence[Part],
    public_key: PublicKey,
    *,
    trusted: SignedCheckpoint | None = None,
    allow_torn_tail: bool = False,
    all_signatures: bool = True,
    base: LogBase | None = None,
    tail_key: bytes | None = None,
    keep_leaves: bool = True,
    rescan: Callable[[int], bytes] | None = None,
    index: Any = None,
    kinds: dict[str, int] | None = None,
    on_segment: Callable[[LogWalker, SignedCheckpoint | None], None] | None = None,
) -> tuple[VerifiedLog, LogWalker]:
    """Verify a frame stream given as consecutive parts (segments); return the result and the walker.

    With ``all_signatures=False`` (a writer reopening its own log) only the latest checkpoint's
    signature, and those of checkpoints that disagree with the records, are checked; every
    checkpoint's root still is. A full audit checks every signature.

    With ``base`` (a pruned log, already verified) the records start at ``base.size``;
    checkpoints older than the base are checked for their signature only.

    With ``tail_key`` (the writer's ledger secret) tail seals are checked too: ``walker.authenticated``
    is how many records are the writer's own, ``walker.safe_offset`` where the others start (an
    offset in the concatenated parts).

    Each checkpoint's root is checked when it is met, so memory stays bounded with
    ``keep_leaves=False`` (see :class:`LogWalker`); a part named for a seq (a segment) must
    start at that record.

    ``index`` (an :class:`~.index.IndexBuilder`) is fed every block start and leaf as they are
    walked; ``kinds`` gets the seq of the latest record of each kind. ``on_segment(walker, latest)``
    is called before each part after the first that is named for a seq, when every record before it
    is authenticated (``latest``: the newest checkpoint so far; the index has been fed every leaf).
    """
    walker = LogWalker(parts[0].data if len(parts) == 1 else None, base, keep_leaves=keep_leaves, rescan=rescan)
    walker.kinds = kinds
    walker.index = index
    state = _Roots(walker, public_key, base)
    torn = 0
    pos = 0  # offset of the current part in the concatenated stream
    for i, part in enumerate(parts):
        if on_segment is not None and i and part.first_seq is not None and walker.authenticated >= walker.size:
            on_segment(walker, state.latest)
        try:
            torn = _walk_part(
                parts,
                i,
                pos,
                walker,
                state,
                public_key,
                trusted=trusted,
                allow_torn_tail=allow_torn_tail,
                all_signatures=all_signatures,
                tail_key=tail_key,
            )
        finally:
            if part.close is not None:
                part.close()
        pos += part.length
        if torn:
            break
    latest = state.finish(all_signatures)
    if walker.authenticated >= walker.size:
        walker.safe_offset = pos - torn
    if trusted is not None:
        check_trusted(walker, trusted)
    verified = VerifiedLog(
        did=public_key.did,
        size=walker.size,
        root=walker.root_at(walker.size),
        signed_size=latest.size if latest else 0,
        checkpoint=latest,
        torn_bytes=torn,
        first_seq=walker.offset,
    )
    return verified, walker


def _walk_part(
    parts: Sequence[Part],
    pi: int,
    pos: int,
    walker: LogWalker,
    state: _Roots,
    public_key: PublicKey,
    *,
    trusted: SignedCheckpoint | None,
    allow_torn_tail: bool,
    all_signatures: bool,
    tail_key: bytes | None,
) -> int:
    """Walk one part; return the bytes of a tolerated unfinished write at its end (0 if none)."""
    part = parts[pi]
    data, off = part.data, part.start
    view = memoryview(data)
    end = len(data)
    first = walker.size
    released = off

    def later(after: int) -> Callable[[], Iterator[Frame | FrameDamage]]:
        def frames() -> Iterator[Frame | FrameDamage]:
            yield from iter_frames(data, after)
            for nxt in parts[pi + 1 :]:
                yield from iter_frames(nxt.data, nxt.start)

        return frames

    def at(o: int) -> int:  # an offset in the concatenated stream, for messages
        return pos + o - part.start

    index = walker.index
    try:
        while off < end:
            trust = trusted.size if trusted is not None and walker.size < trusted.size else None
            stop = trust
            if index is not None:
                _feed(index, walker)
                if walker.size == index.next_start and part.first_seq is not None:
                    index.start(walker.size, part.first_seq, off)
                stop = index.next_start if stop is None else min(stop, index.next_start)
            window = view[: min(end, off + _WINDOW)]
            off = walker.scan(window, off, limit=stop)
            if trust is not None and walker.size == trust:
                walker.root_at(trust)  # remembered for check_trusted
            if stop is not None and walker.size == stop and stop != trust:
                continue  # a block starts here: the loop's top records it before the record is taken
            if part.release is not None and off - released >= _WINDOW:
                part.release(off)
                released = off
            if off >= end:
                continue
            item = read_frame(view, off)
            if isinstance(item, FrameDamage):
                rest_empty = all(p.length == 0 for p in parts[pi + 1 :])
                if allow_torn_tail and rest_empty and is_torn_tail(data, item):
                    return end - item.offset
                raise damage_error(walker, item, at(item.offset))
            off = item.end
            if item.type == RECORD:
                walker.add(item, later(item.end), at(item.offset))
                continue
            if item.type == BASE:
                raise LedgerVerificationError(
                    walker.size, Reason.CORRUPT, f"a base frame inside the log at byte {at(item.offset)}"
                )
            if item.type == PAD:
                if not pad_valid(item.payload):
                    raise LedgerVerificationError(
                        walker.size, Reason.CORRUPT, f"a padding frame with non-zero bytes at byte {at(item.offset)}"
                    )
            elif item.type == TAIL_SEAL:
                _seal(walker, item, at(item.offset), tail_key, later(item.end))
            else:
                cp = _checkpoint(item.payload, max(walker.size - 1, 0), public_key, verify=all_signatures)
                if cp.size < walker.offset:
                    continue  # signed before the prune point: its tree is gone, the base covers it
                if cp.size > walker.size:
                    more = any(isinstance(f, Frame) and f.type == RECORD for f in later(item.end)())
                    reason = Reason.MISSING if more else Reason.TRUNCATED
                    raise LedgerVerificationError(
                        walker.size, reason, f"a checkpoint covers {cp.size} records but only {walker.size} precede it"
                    )
                state.add(cp)
                walker.authenticated = max(walker.authenticated, cp.size)
            if walker.authenticated >= walker.size:
                walker.safe_offset = at(item.end)
    finally:
        del view
    if index is not None:
        _feed(index, walker)
    if part.first_seq is not None and part.first_seq != first:
        raise LedgerVerificationError(
            first,
            Reason.CORRUPT,
            f"segment {part.name} is named for record {part.first_seq}, "
            f"but record {first} is the next in the log there",
        )
    return 0


def _feed(index: Any, walker: LogWalker) -> None:
    """Hand the leaves walked since the last call to the index builder."""
    if index.fed < walker.size:
        index.leaves(walker.leaves[index.fed - walker._lbase :])
        index.fed = walker.size


def _seal(
    walker: LogWalker, item: Frame, pos: int, tail_key: bytes | None, later: Callable[[], Iterator[Frame | FrameDamage]]
) -> None:
    sealed = seal_size(item.payload)
    if sealed is None:
        raise LedgerVerificationError(walker.size, Reason.CORRUPT, f"a malformed tail seal at byte {pos}")
    if sealed > walker.size:  # as for a checkpoint: records it covers are gone
        more = any(isinstance(f, Frame) and f.type == RECORD for f in later())
        raise LedgerVerificationError(
            walker.size,
            Reason.MISSING if more else Reason.TRUNCATED,
            f"a tail seal covers {sealed} records but only {walker.size} precede it",
        )
    if sealed < walker.size:
        raise LedgerVerificationError(
            sealed, Reason.INSERTED, f"records {sealed}..{walker.size - 1} precede a tail seal for {sealed}"
        )
    if tail_key is not None and seal_valid(tail_key, item.payload, walker.size, walker.prev):
        walker.authenticated = walker.size


class _Roots:
    """Checks each checkpoint's root when it is met; tells altered records from a fork at the end."""

    def __init__(self, walker: LogWalker, public_key: PublicKey, base: LogBase | None) -> None:
        self.walker, self.pk = walker, public_key
        self.latest: SignedCheckpoint | None = base.checkpoint if base is not None else None
        self.latest_match: SignedCheckpoint | None = self.latest
        self.good_size = base.size if base is not None else 0
        self.mismatch: SignedCheckpoint | None = None

    def add(self, cp: SignedCheckpoint) -> None:
        if self.latest is None or cp.size >= self.latest.size:
            self.latest = cp
        if self.walker.root_at(cp.size) == cp.root:
            if self.latest_match is None or cp.size >= self.latest_match.size:
                self.latest_match = cp
            if self.mismatch is None:
                self.good_size = max(self.good_size, cp.size)
            return
        _checkpoint(cp.note, max(cp.size - 1, 0), self.pk)  # a forged note is bad_signature, not a fork
        if self.mismatch is None or cp.size < self.mismatch.size:
            self.mismatch = cp

    def finish(self, all_signatures: bool) -> SignedCheckpoint | None:
        latest = self.latest
        if latest is not None and not all_signatures:
            _checkpoint(latest.note, max(latest.size - 1, 0), self.pk)
        bad = self.mismatch
        if bad is not None:
            match = self.latest_match
            if (
                match is not None
                and match.size >= bad.size
                and _checkpoint(match.note, max(match.size - 1, 0), self.pk)
            ):
                raise LedgerVerificationError(
                    max(bad.size - 1, 0),
                    Reason.FORK,
                    f"two signed checkpoints disagree about the first {bad.size} records",
                )
            good = min(self.good_size, bad.size)
            raise LedgerVerificationError(
                good,
                Reason.CORRUPT,
                f"records {good}..{bad.size - 1} do not hash to the signed checkpoint for size {bad.size}",
            )
        return latest


def check_trusted(walker: LogWalker, trusted: SignedCheckpoint) -> None:
    """The log must extend a checkpoint the verifier already trusts."""
    if trusted.size < walker.offset:
        raise LedgerVerificationError(
            trusted.size,
            Reason.TRUNCATED,
            f"the log was pruned below record {walker.offset}: a trusted checkpoint for {trusted.size} records "
            "cannot be checked against it; check it against an export made before the prune",
        )
    if trusted.size > walker.size:
        raise LedgerVerificationError(
            walker.size,
            Reason.TRUNCATED,
            f"a trusted checkpoint covers {trusted.size} records but the log holds {walker.size}",
        )
    if walker.root_at(trusted.size) != trusted.root:
        raise LedgerVerificationError(
            max(trusted.size - 1, 0),
            Reason.FORK,
            f"the log's first {trusted.size} records differ from a trusted signed checkpoint",
        )
