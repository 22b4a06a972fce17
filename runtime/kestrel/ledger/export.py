"""Export and inclusion-proof files (pure): verifiable with nothing but the AgentID.

Export: ``b"KLEXPRT\\x01"``, one checkpoint frame (the signed tree head for N
records), then the N record frames, seq 0..N-1, exactly as stored.

Proof: ``b"KLPROOF\\x01"`` then one msgpack map ``{"index", "size", "record",
"path", "checkpoint"}``: the record's exact bytes, its RFC 6962 inclusion path
and the signed checkpoint note it leads to. See docs/ledger-format.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgpack

from ..identity.keys import PublicKey
from .base import LogBase, verify_base
from .checkpoint import CheckpointError, SignedCheckpoint, verify_checkpoint
from .codec import loads_strict
from .errors import LedgerError, LedgerVerificationError, Reason, RecordError
from .frame import BASE, CHECKPOINT, RECORD, Frame, FrameDamage, encode_frame, iter_frames, read_frame
from .merkle import Frontier, ProofError, inclusion_proof, verify_inclusion
from .record import Record, decode_record, leaf_hash
from .verify import LogWalker, VerifiedLog, check_trusted, damage_error

__all__ = [
    "EXPORT_MAGIC",
    "PROOF_MAGIC",
    "encode_export",
    "verify_export",
    "encode_proof",
    "proof_file",
    "verify_proof",
    "VerifiedProof",
    "ProofFileError",
]

EXPORT_MAGIC = b"KLEXPRT\x01"
PROOF_MAGIC = b"KLPROOF\x01"
MAX_PROOF_SIZE = 4 << 20


class ProofFileError(LedgerError):
    """An inclusion-proof file is malformed or does not verify."""


def encode_export(
    checkpoint: SignedCheckpoint, records: Iterable[bytes], *, base: LogBase | None = None
) -> Iterable[bytes]:
    """Chunks of an export file: header, checkpoint frame, base frame (a pruned log), record frames."""
    yield EXPORT_MAGIC
    yield encode_frame(CHECKPOINT, checkpoint.note)
    if base is not None:
        yield encode_frame(BASE, base.payload)
    for raw in records:
        yield encode_frame(RECORD, raw)


def verify_export(data: bytes, public_key: PublicKey, *, trusted: SignedCheckpoint | None = None) -> VerifiedLog:
    """Verify a whole exported log against the agent's public key."""
    if not data.startswith(EXPORT_MAGIC):
        raise LedgerVerificationError(0, Reason.CORRUPT, "not a Kestrel ledger export (bad magic bytes)")
    frames = iter_frames(data, len(EXPORT_MAGIC))
    first = next(frames, None)
    if not isinstance(first, Frame) or first.type != CHECKPOINT:
        raise LedgerVerificationError(0, Reason.CORRUPT, "the export does not start with a checkpoint frame")
    try:
        cp = verify_checkpoint(first.payload, public_key)
    except CheckpointError as exc:
        raise LedgerVerificationError(0, exc.reason, f"export checkpoint: {exc.message}") from None
    base = None
    second = next(frames, None)
    off = first.end  # where the records start
    if isinstance(second, Frame) and second.type == BASE:  # a pruned log: records start at base.size
        base = verify_base(second.payload, public_key)
        if base.size > cp.size:
            raise LedgerVerificationError(cp.size, Reason.CORRUPT, "the export's base is newer than its checkpoint")
        off = second.end
    walker = LogWalker(data, base)
    view = memoryview(data)
    while True:
        off = walker.scan(view, off, limit=cp.size)
        if off >= len(data):
            break
        item = read_frame(view, off)
        if isinstance(item, FrameDamage):
            raise damage_error(walker, item)
        if item.type != RECORD:
            raise LedgerVerificationError(walker.size, Reason.INSERTED, "an extra checkpoint frame inside the export")
        if walker.size >= cp.size:
            raise LedgerVerificationError(
                walker.size, Reason.INSERTED, f"the signed checkpoint covers only {cp.size} records"
            )
        walker.add(item)
        off = item.end
    if walker.size < cp.size:
        raise LedgerVerificationError(
            walker.size,
            Reason.TRUNCATED,
            f"the signed checkpoint covers {cp.size} records, the export holds {walker.size}",
        )
    root = walker.root_at(cp.size)
    if root != cp.root:
        raise LedgerVerificationError(
            max(cp.size - 1, 0), Reason.CORRUPT, "the records do not hash to the signed checkpoint's root"
        )
    if trusted is not None:
        check_trusted(walker, trusted)
    return VerifiedLog(public_key.did, walker.size, root, cp.size, cp, first_seq=walker.offset)


def encode_proof(
    index: int,
    records_leaves: Sequence[bytes],
    record: bytes,
    checkpoint: SignedCheckpoint,
    *,
    base: Frontier | None = None,
) -> bytes:
    """An inclusion-proof file for record ``index`` against ``checkpoint`` (leaves = the checkpoint's tree,
    after ``base`` for a pruned log)."""
    if (base.size if base is not None else 0) + len(records_leaves) != checkpoint.size:
        raise ValueError("leaves must be exactly the checkpoint's tree")
    return proof_file(index, inclusion_proof(index, records_leaves, base=base), record, checkpoint)


def proof_file(index: int, path: Sequence[bytes], record: bytes, checkpoint: SignedCheckpoint) -> bytes:
    """The inclusion-proof file for record ``index`` given its audit path against ``checkpoint``."""
    body = {
        "index": index,
        "size": checkpoint.size,
        "record": record,
        "path": list(path),
        "checkpoint": checkpoint.note,
    }
    return PROOF_MAGIC + msgpack.packb(body, use_bin_type=True)


@dataclass(frozen=True)
class VerifiedProof:
    """One disclosed record, proven to be in the agent's signed log."""

    record: Record
    checkpoint: SignedCheckpoint


def verify_proof(data: bytes, public_key: PublicKey) -> VerifiedProof:
    """Verify an inclusion-proof file; raise ProofFileError (or LedgerVerificationError for a bad checkpoint)."""
    if len(data) > MAX_PROOF_SIZE or not data.startswith(PROOF_MAGIC):
        raise ProofFileError(
            "not a Kestrel inclusion proof (bad magic bytes or too large)",
            hint="proof files are made by `kestrel audit prove SEQ > FILE`",
        )
    try:
        obj = loads_strict(data[len(PROOF_MAGIC) :], what="inclusion proof")
    except RecordError as exc:
        raise ProofFileError(exc.message) from None
    keys = {"index": int, "size": int, "record": bytes, "path": list, "checkpoint": bytes}
    if not isinstance(obj, dict) or set(obj) != set(keys) or any(type(obj[k]) is not t for k, t in keys.items()):
        raise ProofFileError("inclusion proof does not have the fields index, size, record, path, checkpoint")
    if not all(isinstance(p, bytes) and len(p) == 32 for p in obj["path"]):
        raise ProofFileError("inclusion proof path must be a list of 32-byte hashes")
    try:
        cp = verify_checkpoint(obj["checkpoint"], public_key)
    except CheckpointError as exc:
        raise LedgerVerificationError(obj["index"], exc.reason, f"proof checkpoint: {exc.message}") from None
    if cp.size != obj["size"]:
        raise ProofFileError(f"proof is for a tree of {obj['size']} records, its checkpoint says {cp.size}")
    try:
        verify_inclusion(leaf_hash(obj["record"]), obj["index"], cp.size, obj["path"], cp.root)
        record = decode_record(obj["record"])
    except (ProofError, RecordError) as exc:
        raise ProofFileError(f"record {obj['index']} is not proven: {exc.message}") from None
    if record.seq != obj["index"]:
        raise ProofFileError(f"the disclosed record says seq {record.seq}, the proof says {obj['index']}")
    return VerifiedProof(record, cp)
