"""Checkpoints (pure): C2SP tlog-checkpoint bodies in C2SP signed-note envelopes.

::

    kestrel/<did:key of the agent>\\n     origin line
    <tree size, decimal>\\n
    <base64 of the 32-byte RFC 6962 root>\\n
    \\n
    — kestrel/<did> <base64(key id (4 bytes) || signature (64 bytes))>\\n

The signature covers the three body lines including the last newline. Key id =
SHA-256(key name || 0x0A || sigtype || raw public key)[:4] with sigtype 0x01
for Ed25519 (as in C2SP) and 0x02 for P-256, whose signature is the 64-byte
``r || s`` of :mod:`kestrel.identity.keys` (a Kestrel profile; see
docs/ledger-format.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from ..identity.keys import Algorithm, PublicKey, SignatureError, Signer
from .errors import LedgerError, Reason

__all__ = [
    "SignedCheckpoint",
    "CheckpointError",
    "origin_for",
    "key_id",
    "sign_checkpoint",
    "verify_checkpoint",
    "parse_checkpoint_unsafe",
]

MAX_NOTE_SIZE = 8192
_SIGTYPE = {Algorithm.ED25519: 0x01, Algorithm.P256: 0x02}
_DASH = "\u2014 "
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,19})$")


class CheckpointError(LedgerError):
    """A checkpoint note is malformed (reason CORRUPT) or its signature fails (BAD_SIGNATURE)."""

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SignedCheckpoint:
    """A verified checkpoint: the exact note bytes plus what they say."""

    note: bytes
    origin: str
    size: int
    root: bytes

    @property
    def root_hex(self) -> str:
        return self.root.hex()


def origin_for(public_key: PublicKey) -> str:
    """The origin line (and signature key name) of an agent's checkpoints."""
    return f"kestrel/{public_key.did}"


def key_id(public_key: PublicKey) -> bytes:
    name = origin_for(public_key).encode()
    return hashlib.sha256(name + b"\n" + bytes([_SIGTYPE[public_key.algorithm]]) + public_key.raw).digest()[:4]


def _body(origin: str, size: int, root: bytes) -> bytes:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n".encode()


def sign_checkpoint(signer: Signer, *, size: int, root: bytes) -> SignedCheckpoint:
    """Sign the tree head (size, root) with the agent's key; one signature per call."""
    pk = signer.public_key
    origin = origin_for(pk)
    body = _body(origin, size, root)
    sig = signer.sign(body)
    line = f"{_DASH}{origin} {base64.b64encode(key_id(pk) + sig).decode()}\n".encode()
    return SignedCheckpoint(body + b"\n" + line, origin, size, root)


def verify_checkpoint(note: bytes, public_key: PublicKey) -> SignedCheckpoint:
    """Parse ``note`` strictly and verify the agent's signature on it."""
    return _parse(note, public_key, verify=True)


def parse_checkpoint_unsafe(note: bytes, public_key: PublicKey) -> SignedCheckpoint:
    """Parse ``note`` strictly (origin, key id present) WITHOUT checking the signature.

    Only for a verifier that checks the signature later (see verify.walk_stream).
    """
    return _parse(note, public_key, verify=False)


def _parse(note: bytes, public_key: PublicKey, *, verify: bool) -> SignedCheckpoint:
    corrupt = Reason.CORRUPT
    if len(note) > MAX_NOTE_SIZE:
        raise CheckpointError("checkpoint note is too large", reason=corrupt)
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("checkpoint note is not UTF-8", reason=corrupt) from None
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise CheckpointError("checkpoint note contains control characters", reason=corrupt)
    split = text.rfind("\n\n")
    if split < 0 or not text.endswith("\n"):
        raise CheckpointError("checkpoint note has no signature block", reason=corrupt)
    body, sigs = text[: split + 1], text[split + 2 :]
    lines = body.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointError("checkpoint body needs origin, size and root lines", reason=corrupt)
    if len(lines) > 3:  # tlog-checkpoint extension lines: Kestrel defines none (docs/ledger-format.md, section 5)
        raise CheckpointError("checkpoint body has extension lines after the root", reason=corrupt)
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    expected_origin = origin_for(public_key)
    if not _SIZE.match(size_text):
        raise CheckpointError(f"checkpoint size {size_text!r} is not a decimal number", reason=corrupt)
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError("checkpoint root is not base64", reason=corrupt) from None
    if len(root) != 32 or base64.b64encode(root).decode() != root_text:
        raise CheckpointError("checkpoint root is not a canonical base64 32-byte hash", reason=corrupt)
    if origin != expected_origin:
        raise CheckpointError(
            f"checkpoint origin {origin!r} is not this agent's ({expected_origin!r})",
            reason=Reason.BAD_SIGNATURE,
        )
    want_id = key_id(public_key)
    found = False
    for line in sigs.split("\n")[:-1]:
        if not line.startswith(_DASH):
            raise CheckpointError("malformed checkpoint signature line", reason=corrupt)
        parts = line[len(_DASH) :].split(" ")
        if len(parts) != 2:
            raise CheckpointError("malformed checkpoint signature line", reason=corrupt)
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("checkpoint signature is not base64", reason=corrupt) from None
        if parts[0] != expected_origin or blob[:4] != want_id:
            continue  # a signature by some other key (e.g. a witness): ignored
        try:
            if verify:
                public_key.verify(blob[4:], body.encode())
        except SignatureError:
            raise CheckpointError(
                f"checkpoint signature does not verify for {public_key.did}", reason=Reason.BAD_SIGNATURE
            ) from None
        found = True
        break
    if not found:
        raise CheckpointError(f"checkpoint is not signed by {public_key.did}", reason=Reason.BAD_SIGNATURE)
    return SignedCheckpoint(bytes(note), origin, int(size_text), root)
