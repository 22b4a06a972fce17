"""Ledger errors: every failure names the record (seq) and what is wrong with it."""

from __future__ import annotations

import enum

from ..errors import DataError, TransportError

__all__ = ["Reason", "LedgerError", "LedgerVerificationError", "RecordError", "LedgerIOError", "LedgerBusyError"]


class Reason(str, enum.Enum):
    """Why a log failed verification (the ``reason`` of :class:`LedgerVerificationError`)."""

    BIT_FLIP = "bit_flip"  # a frame's checksum fails: stored bytes changed
    CORRUPT = "corrupt"  # bytes intact per checksum but not a valid record/checkpoint, or altered consistently
    MISSING = "missing"  # a sequence number is absent
    REORDERED = "reordered"  # records are out of order
    INSERTED = "inserted"  # a record that the signed log does not contain
    TRUNCATED = "truncated"  # records cut from the end of a signed log
    FORK = "fork"  # two signed checkpoints that cannot both be true
    BAD_SIGNATURE = "bad_signature"  # a checkpoint signature does not verify
    UNSIGNED = "unsigned"  # records no signed checkpoint covers (only with --require-signed)


_HINTS = {
    Reason.BIT_FLIP: "the stored bytes were altered (storage fault or tampering); keep the file for inspection",
    Reason.CORRUPT: "the log content does not match what the agent signed; keep the file for inspection",
    Reason.MISSING: "a record was removed from the log",
    Reason.REORDERED: "records were moved within the log",
    Reason.INSERTED: "the log holds a record that the agent never signed",
    Reason.TRUNCATED: "records were removed from the end of the log",
    Reason.FORK: "the agent's key signed two different histories: the key may be compromised",
    Reason.BAD_SIGNATURE: "check that you verify with the right AgentID (did:key)",
    Reason.UNSIGNED: "start the agent (it signs or cuts its own unsigned tail on open), then verify again; "
    "records nobody signed may have been appended by someone else",
}


class LedgerError(DataError):
    """Base of ledger data errors."""


class LedgerVerificationError(LedgerError):
    """The log is not intact. ``seq`` is the first bad record, ``reason`` a :class:`Reason`."""

    def __init__(self, seq: int, reason: Reason, detail: str) -> None:
        super().__init__(f"record {seq}: {reason.value}: {detail}", hint=_HINTS[reason])
        self.seq = seq
        self.reason = reason
        self.detail = detail


class RecordError(LedgerError):
    """A record cannot be encoded (bad kind, unsupported body type, too large)."""


class LedgerIOError(TransportError):
    """The ledger directory or a segment file cannot be read or written."""


class LedgerBusyError(LedgerIOError):
    """Another process holds the ledger's single-writer lock. ``holder`` is its pid, as it wrote it."""

    def __init__(self, message: str, *, holder: str, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.holder = holder
