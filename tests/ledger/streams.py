"""Build ledger frame streams in memory (pure), the way the writer lays them out."""

from __future__ import annotations

from kestrel.ledger.checkpoint import sign_checkpoint
from kestrel.ledger.export import encode_export
from kestrel.ledger.frame import CHECKPOINT, RECORD, encode_frame
from kestrel.ledger.merkle import Frontier
from kestrel.ledger.record import ZERO_HASH, encode_record, leaf_hash


def build(signer, n: int, *, cp_every: int = 5, lag: int = 0, kind: str = "test.event", start_time: float = 1000.0):
    """A stream of ``n`` records with a checkpoint every ``cp_every`` records, each written ``lag`` records late.

    Returns (stream bytes, list of record bytes, list of SignedCheckpoint).
    """
    out, raws, cps, pending = [], [], [], []
    frontier, prev = Frontier(), ZERO_HASH
    for seq in range(n):
        raw = encode_record(seq=seq, time=start_time + seq, kind=kind, body={"i": seq, "pad": "x" * 40}, prev=prev)
        prev = leaf_hash(raw)
        frontier.append(prev)
        raws.append(raw)
        out.append(encode_frame(RECORD, raw))
        if (seq + 1) % cp_every == 0 or seq == n - 1:
            pending.append(sign_checkpoint(signer, size=seq + 1, root=frontier.root()))
        while pending and pending[0].size + lag <= seq + 1 or (seq == n - 1 and pending):
            cp = pending.pop(0)
            cps.append(cp)
            out.append(encode_frame(CHECKPOINT, cp.note))
    return b"".join(out), raws, cps


def export_of(signer, n: int) -> bytes:
    _, raws, cps = build(signer, n)
    return b"".join(encode_export(cps[-1], raws))
