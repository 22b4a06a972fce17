"""Read-only access to a ledger directory (I/O shell): no signer, no writes.

Used by ``kestrel audit`` and by :class:`Ledger` for iteration, export and
proofs. An unfinished write at the very end (a writer running, or one that
crashed) is skipped; damage anywhere else raises.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..identity.keys import PublicKey
from .base import LogBase, verify_base
from .checkpoint import SignedCheckpoint
from .errors import LedgerError, LedgerVerificationError, Reason, RecordError
from .export import encode_export, encode_proof
from .frame import RECORD, FrameDamage, iter_frames
from .record import Record, decode_record
from .store import load_segments, read_base, stream_of
from .verify import LogWalker, VerifiedLog, is_torn_tail, walk_stream

__all__ = ["read_stream", "load_base", "walk_dir", "iter_records", "verify_dir", "export_chunks", "prove"]


def load_base(ledger_dir: Path, public_key: PublicKey) -> LogBase | None:
    """The verified base of a pruned log (None if never pruned); raises if it does not verify."""
    payload = read_base(Path(ledger_dir))
    return verify_base(payload, public_key) if payload is not None else None


def walk_dir(
    ledger_dir: Path, public_key: PublicKey, *, trusted: SignedCheckpoint | None = None, all_signatures: bool = True
) -> tuple[VerifiedLog, LogWalker]:
    """Verify the on-disk log from its base (if pruned); an unfinished final write is tolerated."""
    base = load_base(ledger_dir, public_key)
    return walk_stream(read_stream(ledger_dir), public_key, trusted=trusted, allow_torn_tail=True,
                       all_signatures=all_signatures, base=base)


def read_stream(ledger_dir: Path, *, from_seq: int = 0) -> bytes:
    """The frame stream of the segments that can hold records >= ``from_seq``."""
    segments = load_segments(Path(ledger_dir))
    first = 0
    for i, seg in enumerate(segments):
        if seg.first_seq <= from_seq:
            first = i
    return stream_of(segments[first:])


def iter_records(ledger_dir: Path, *, since_seq: int = 0, kind: str | None = None) -> Iterator[Record]:
    """Records with seq >= ``since_seq`` (and of ``kind``, a name or a ``prefix.*``), oldest first."""
    buf = read_stream(ledger_dir, from_seq=since_seq)
    prefix = kind[:-1] if kind and kind.endswith("*") else None
    next_seq = since_seq  # for error messages: the record after the last one read
    for item in iter_frames(buf):
        if isinstance(item, FrameDamage):
            if is_torn_tail(buf, item):
                return
            raise LedgerVerificationError(
                next_seq, Reason.BIT_FLIP, f"damaged frame: {item.detail}; run `kestrel audit verify`"
            )
        if item.type != RECORD:
            continue
        try:
            rec = decode_record(item.payload)
        except RecordError as exc:
            raise LedgerVerificationError(next_seq, Reason.CORRUPT, exc.message) from None
        next_seq = rec.seq + 1
        if rec.seq < since_seq:
            continue
        if kind is None or rec.kind == kind or (prefix is not None and rec.kind.startswith(prefix)):
            yield rec


def verify_dir(ledger_dir: Path, public_key: PublicKey, *, trusted: SignedCheckpoint | None = None) -> VerifiedLog:
    """Verify the whole on-disk log (an unfinished final write is tolerated and counted)."""
    return walk_dir(ledger_dir, public_key, trusted=trusted)[0]


def export_chunks(ledger_dir: Path, public_key: PublicKey) -> tuple[VerifiedLog, Iterator[bytes]]:
    """Verify, then the export of every record covered by the latest signed checkpoint."""
    verified, walker = walk_dir(ledger_dir, public_key)
    if verified.checkpoint is None:
        raise LedgerError("the ledger has no signed checkpoint yet", hint="start the agent once so that it signs its log")
    cp = verified.checkpoint
    raws = (r.raw for r in iter_records(ledger_dir, since_seq=walker.offset) if r.seq < cp.size)
    return verified, encode_export(cp, raws, base=walker.base)


def prove(ledger_dir: Path, public_key: PublicKey, seq: int) -> bytes:
    """An inclusion-proof file for record ``seq`` against the latest signed checkpoint."""
    verified, walker = walk_dir(ledger_dir, public_key)
    cp = verified.checkpoint
    if seq < walker.offset:
        raise LedgerError(
            f"record {seq} was pruned: the ledger keeps records from {walker.offset} on",
            hint="prove it from an export made before the prune",
        )
    if cp is None or not 0 <= seq < cp.size:
        signed = cp.size if cp else 0
        if 0 <= seq < verified.size:
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
    raw = next(r.raw for r in iter_records(ledger_dir, since_seq=seq))
    return encode_proof(seq, walker.leaves[: cp.size - walker.offset], raw, cp, base=walker.base_frontier())
