"""What the collector hands out about an agent, re-verified with the ledger's own verifiers.

An agent's stored log is one or more *runs*: records ``0 .. end`` and, after each signed base
accepted (the agent pruned records before they were synced), records ``base .. end``. Each run
is covered by a checkpoint the agent signed. ``verify_runs`` re-checks every run from scratch as
an export (``kestrel.ledger.export.verify_export``); ``proof_file`` builds an inclusion proof for
one record and checks it with ``verify_proof`` before handing it out.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import DataError
from ...identity.keys import PublicKey
from ...ledger.base import LogBase, verify_base
from ...ledger.checkpoint import SignedCheckpoint, verify_checkpoint
from ...ledger.export import encode_export, encode_proof, verify_export, verify_proof
from ...ledger.verify import VerifiedLog
from .store import CollectorStore

__all__ = ["Run", "runs", "export_run", "verify_runs", "proof_file"]


@dataclass(frozen=True)
class Run:
    """Records ``start .. end-1`` stored, verified against ``checkpoint`` (of size ``end``)."""

    start: int
    end: int
    base: LogBase | None
    checkpoint: SignedCheckpoint


def runs(store: CollectorStore, did: str) -> list[Run]:
    """The agent's verified runs, oldest first (empty if nothing is verified)."""
    pk = PublicKey.from_did(did)
    state = store.agent_state(did)
    if state.checkpoint is None or not state.size:
        return []
    starts: list[tuple[int, LogBase | None]] = [(0, None)]
    starts += [(size, verify_base(payload, pk)) for size, payload in store.bases(did)]
    out = []
    for i, (start, base) in enumerate(starts):
        if i + 1 < len(starts):
            limit = starts[i + 1][0]
            end = start + len(store.verified_leaves(did, start, limit))
            notes = [n for s, _, n in store.checkpoints(did, min_size=end) if s == end]
            if end == start or not notes:
                continue  # nothing kept from this run, or no checkpoint of its size (it is in the next base)
            note = notes[0]
        else:
            end, note = state.size, state.checkpoint
        out.append(Run(start, end, base, verify_checkpoint(note, pk)))
    return out


def export_run(store: CollectorStore, did: str, run: Run) -> tuple[bytes, VerifiedLog]:
    """The run as an export file (``kestrel audit verify --export``), verified before it is returned."""
    records = (raw for seq, raw in store.verified_records(did, run.start) if seq < run.end)
    data = b"".join(encode_export(run.checkpoint, records, base=run.base))
    return data, verify_export(data, PublicKey.from_did(did))


def verify_runs(store: CollectorStore, did: str) -> list[VerifiedLog]:
    """Re-verify everything stored for ``did``; raise LedgerVerificationError on any damage."""
    got = runs(store, did)
    if not got:
        raise DataError(
            f"the collector holds no verified records of {did}",
            hint="`kestrel collector status` lists the agents it has",
        )
    return [export_run(store, did, r)[1] for r in got]


def proof_file(store: CollectorStore, did: str, seq: int) -> bytes:
    """An inclusion proof of stored record ``seq`` against its run's signed checkpoint (verified)."""
    pk = PublicKey.from_did(did)
    for run in runs(store, did):
        if run.start <= seq < run.end:
            raw = store.record(did, seq)
            leaves = store.verified_leaves(did, run.start, run.end)
            if raw is None or len(leaves) != run.end - run.start:
                break
            data = encode_proof(
                seq, leaves, raw, run.checkpoint, base=run.base.frontier() if run.base is not None else None
            )
            verify_proof(data, pk)
            return data
    raise DataError(f"record {seq} of {did} is not stored as verified", hint="see the agent's log for what is")
