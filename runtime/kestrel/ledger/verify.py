"""Log verification (pure): bytes and a public key in, a VerifiedLog out, or an error.

The verifier walks the frame stream once, hashing each record's stored bytes
(never re-encoding), checking sequence numbers, the ``prev`` hash chain and
every checkpoint's signature and root. The first problem raises
:class:`LedgerVerificationError` naming the record and a :class:`Reason`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..identity.keys import PublicKey
from .base import LogBase
from .checkpoint import CheckpointError, SignedCheckpoint, parse_checkpoint_unsafe, verify_checkpoint
from .errors import LedgerVerificationError, Reason, RecordError
from .frame import BASE, RECORD, TAIL_SEAL, Frame, FrameDamage, find_next_frame, iter_frames, read_frame
from .merkle import Frontier, tree_root
from .record import ZERO_HASH, Record, decode_record
from .scan import scan_records
from .tailmac import seal_size, seal_valid

__all__ = ["VerifiedLog", "verify_stream", "walk_stream", "LogWalker", "check_trusted", "is_torn_tail", "damage_error"]


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


def is_torn_tail(buf: bytes, damage: FrameDamage) -> bool:
    """An unfinished write: the last frame runs past the end, or the rest is zeros, and nothing intact follows."""
    if damage.kind != "torn" and buf[damage.offset :].strip(b"\x00"):
        return False
    return find_next_frame(buf, damage.offset + 1) is None


class LogWalker:
    """Checks records one by one: sequence, hash chain; keeps the leaf hashes for roots."""

    def __init__(self, buf: bytes, base: LogBase | None = None) -> None:
        self._buf = buf
        self.base = base
        self.offset = base.size if base is not None else 0  # seq of leaves[0]
        self.leaves: list[bytes] = []
        self.prev = base.prev if base is not None else ZERO_HASH
        self._frontier = base.frontier() if base is not None else Frontier()  # offset <= size <= self.size
        # records known to be the writer's own: covered by a checkpoint, or by a tail seal whose MAC
        # verified (a writer walking with its key); safe_offset: the stream offset just past the last
        # frame at which every record before it was (the rest is cut on open, see Ledger.open)
        self.authenticated = self.offset
        self.safe_offset = 0

    @property
    def size(self) -> int:
        return self.offset + len(self.leaves)

    def base_frontier(self) -> Frontier | None:
        return self.base.frontier() if self.base is not None else None

    def add(self, frame: Frame) -> Record:
        expected = self.size
        try:
            rec = decode_record(frame.payload)
        except RecordError as exc:
            raise LedgerVerificationError(expected, Reason.CORRUPT, f"at byte {frame.offset}: {exc.message}") from None
        if rec.seq != expected:
            if rec.seq < expected:
                raise LedgerVerificationError(
                    rec.seq, Reason.INSERTED, f"a second record claims seq {rec.seq} (at byte {frame.offset})"
                )
            if self._appears_later(frame.end, expected):
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
        return rec

    def scan(self, view: memoryview, off: int, *, limit: int | None = None) -> int:
        """Take the run of well-formed next records at ``off`` (the fast path, see scan.py);
        return the offset of the first frame left for :meth:`add`. Stops at ``limit`` records."""
        off, self.prev = scan_records(view, off, seq=self.size, prev=self.prev, leaves=self.leaves, limit=limit)
        return off

    def _appears_later(self, start: int, seq: int) -> bool:
        for item in iter_frames(self._buf, start):
            if isinstance(item, FrameDamage):
                return False
            if item.type == RECORD:
                try:
                    if decode_record(item.payload).seq == seq:
                        return True
                except RecordError:
                    continue
        return False

    def frontier(self) -> Frontier:
        """The compact range of every leaf walked so far (a copy)."""
        self.root_at(self.size)
        return self._frontier.copy()

    def root_at(self, size: int) -> bytes:
        """Root of the first ``size`` leaves (cheap for increasing sizes)."""
        if size < self.offset:
            raise ValueError(f"the tree of {size} records was pruned (the log starts at {self.offset})")
        if size < self._frontier.size:
            if self.base is None:
                return tree_root(self.leaves[:size])
            f = self.base.frontier()
            f.extend(self.leaves[: size - self.offset])
            return f.root()
        self._frontier.extend(self.leaves[self._frontier.size - self.offset : size - self.offset])
        return self._frontier.root()


def _checkpoint(note: bytes, seq: int, public_key: PublicKey, *, verify: bool = True) -> SignedCheckpoint:
    try:
        return (verify_checkpoint if verify else parse_checkpoint_unsafe)(note, public_key)
    except CheckpointError as exc:
        raise LedgerVerificationError(seq, exc.reason, f"checkpoint for record {seq}: {exc.message}") from None


def damage_error(walker: LogWalker, damage: FrameDamage) -> LedgerVerificationError:
    """The error for a damaged frame: cut short (``truncated``) or altered (``bit_flip``)."""
    if damage.kind == "torn":
        return LedgerVerificationError(walker.size, Reason.TRUNCATED, f"the log ends inside a frame at byte {damage.offset}")
    return LedgerVerificationError(walker.size, Reason.BIT_FLIP, f"frame at byte {damage.offset}: {damage.detail}")


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
    """:func:`verify_stream`, also returning the walker (leaf hashes, last hash) for a writer.

    With ``all_signatures=False`` (a writer reopening its own log) only the latest checkpoint's
    signature, and those of checkpoints that disagree with the records, are checked; every
    checkpoint's root still is. A full audit checks every signature.

    With ``base`` (a pruned log, already verified) the records start at ``base.size``;
    checkpoints older than the base are checked for their signature only.

    With ``tail_key`` (the writer's ledger secret) tail seals are checked too: ``walker.authenticated``
    is how many records are the writer's own, ``walker.safe_offset`` where the others start.
    """
    walker = LogWalker(buf, base)
    walker.safe_offset = start
    checkpoints: list[SignedCheckpoint] = [base.checkpoint] if base is not None else []
    torn = 0
    view, off = memoryview(buf), start
    while True:
        off = walker.scan(view, off)
        if off >= len(buf):
            break
        item = read_frame(view, off)
        if isinstance(item, FrameDamage):
            if allow_torn_tail and is_torn_tail(buf, item):
                torn = len(buf) - item.offset
                break
            raise damage_error(walker, item)
        off = item.end
        if item.type == RECORD:
            walker.add(item)
            continue
        if item.type == BASE:
            raise LedgerVerificationError(walker.size, Reason.CORRUPT, f"a base frame inside the log at byte {item.offset}")
        if item.type == TAIL_SEAL:
            sealed = seal_size(item.payload)
            if sealed is None:
                raise LedgerVerificationError(walker.size, Reason.CORRUPT, f"a malformed tail seal at byte {item.offset}")
            if sealed > walker.size:  # as for a checkpoint: records it covers are gone
                more = any(isinstance(f, Frame) and f.type == RECORD for f in iter_frames(buf, item.end))
                raise LedgerVerificationError(walker.size, Reason.MISSING if more else Reason.TRUNCATED,
                                              f"a tail seal covers {sealed} records but only {walker.size} precede it")
            if sealed < walker.size:
                raise LedgerVerificationError(sealed, Reason.INSERTED,
                                              f"records {sealed}..{walker.size - 1} precede a tail seal for {sealed}")
            if tail_key is not None and seal_valid(tail_key, item.payload, walker.size, walker.prev):
                walker.authenticated = walker.size
            if walker.authenticated >= walker.size:
                walker.safe_offset = item.end
            continue
        cp = _checkpoint(item.payload, max(walker.size - 1, 0), public_key, verify=all_signatures)
        if cp.size < walker.offset:
            continue  # signed before the prune point: its tree is gone, the base covers it
        if cp.size > walker.size:
            more = any(isinstance(f, Frame) and f.type == RECORD for f in iter_frames(buf, item.end))
            reason = Reason.MISSING if more else Reason.TRUNCATED
            raise LedgerVerificationError(
                walker.size, reason, f"a checkpoint covers {cp.size} records but only {walker.size} precede it"
            )
        checkpoints.append(cp)
        walker.authenticated = max(walker.authenticated, cp.size)
        if walker.authenticated >= walker.size:
            walker.safe_offset = item.end
    if walker.authenticated >= walker.size:
        walker.safe_offset = len(buf) - torn
    latest = max(checkpoints, key=lambda c: c.size, default=None)
    if latest is not None and not all_signatures:
        _checkpoint(latest.note, max(latest.size - 1, 0), public_key)
    _check_roots(walker, checkpoints, public_key)
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


def _check_roots(walker: LogWalker, checkpoints: Iterable[SignedCheckpoint], public_key: PublicKey) -> None:
    """Every signed checkpoint must match the records; tell altered records from a fork."""
    ordered = sorted(checkpoints, key=lambda c: c.size)
    good_size = 0
    for i, cp in enumerate(ordered):
        if walker.root_at(cp.size) == cp.root:
            good_size = cp.size
            continue
        _checkpoint(cp.note, max(cp.size - 1, 0), public_key)  # a forged note is bad_signature, not a fork
        later = [o for o in ordered[i + 1 :] if o.size >= cp.size and walker.root_at(o.size) == o.root]
        if any(_checkpoint(o.note, max(o.size - 1, 0), public_key) for o in later):
            raise LedgerVerificationError(
                max(cp.size - 1, 0),
                Reason.FORK,
                f"two signed checkpoints disagree about the first {cp.size} records",
            )
        raise LedgerVerificationError(
            good_size,
            Reason.CORRUPT,
            f"records {good_size}..{cp.size - 1} do not hash to the signed checkpoint for size {cp.size}",
        )


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
