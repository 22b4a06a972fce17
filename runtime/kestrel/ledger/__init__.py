"""The signed, crash-safe, append-only ledger (see docs/ledger-format.md).

Pure core: :mod:`.record`, :mod:`.frame`, :mod:`.merkle`, :mod:`.checkpoint`,
:mod:`.verify`, :mod:`.export`, :mod:`.resume`. I/O shell: :mod:`.store`, :mod:`.reader`,
:mod:`.engine` (group commit and checkpoint signing), :mod:`.ledger` (open, recover, read, prune).
"""

from .checkpoint import SignedCheckpoint, sign_checkpoint, verify_checkpoint
from .errors import LedgerBusyError, LedgerError, LedgerIOError, LedgerVerificationError, Reason, RecordError
from .export import ProofFileError, VerifiedProof, verify_export, verify_proof
from .ledger import Durability, Ledger, Receipt
from .merkle import ProofError, verify_consistency, verify_inclusion
from .reader import iter_records, verify_dir
from .record import Record
from .verify import VerifiedLog, verify_stream

__all__ = [
    "Ledger",
    "Receipt",
    "Durability",
    "Record",
    "SignedCheckpoint",
    "VerifiedLog",
    "VerifiedProof",
    "LedgerError",
    "LedgerIOError",
    "LedgerBusyError",
    "LedgerVerificationError",
    "Reason",
    "RecordError",
    "ProofError",
    "ProofFileError",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_stream",
    "verify_export",
    "verify_proof",
    "verify_inclusion",
    "verify_consistency",
    "verify_dir",
    "iter_records",
]
