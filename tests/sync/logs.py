"""Build real signed ledger records and checkpoints for collector tests (the ledger's own encoders)."""

from __future__ import annotations

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger.checkpoint import sign_checkpoint
from kestrel.ledger.merkle import tree_root
from kestrel.ledger.record import ZERO_HASH, encode_record, leaf_hash


class LogBuilder:
    """An agent's log built in memory: ``records`` (exact bytes) and ``checkpoint(size)``."""

    def __init__(self, signer: SoftwareSigner | None = None) -> None:
        self.signer = signer or SoftwareSigner.generate()
        self.records: list[bytes] = []
        self.leaves: list[bytes] = []

    @property
    def did(self) -> str:
        return self.signer.public_key.did

    def append(
        self,
        n: int = 1,
        *,
        kind: str = "action.result",
        body: dict | None = None,
        at: float | None = None,
        step: float = 1.0,
    ) -> None:
        """``n`` records of ``kind``; their times start at ``at`` (default 1_800_000_000 + seq), ``step`` s apart."""
        for i in range(n):
            seq = len(self.records)
            t = 1_800_000_000.0 + seq if at is None else at + i * step
            raw = encode_record(
                seq=seq,
                time=t,
                kind=kind,
                body=body if body is not None else {"i": seq},
                prev=self.leaves[-1] if self.leaves else ZERO_HASH,
            )
            self.records.append(raw)
            self.leaves.append(leaf_hash(raw))

    def checkpoint(self, size: int | None = None) -> bytes:
        size = len(self.records) if size is None else size
        return sign_checkpoint(self.signer, size=size, root=tree_root(self.leaves[:size])).note

    def fork(self, at: int) -> LogBuilder:
        """A second log with the same key and the first ``at`` records, then different ones."""
        other = LogBuilder(self.signer)
        other.records, other.leaves = self.records[:at], self.leaves[:at]
        return other
