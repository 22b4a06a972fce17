"""Owner approvals as one BLS aggregate signature (pure; docs/bundle-format.md §1a).

Ed25519 (or P-256) owner signatures stay the default. Optionally a trust root lists, for some of
its owners, a BLS12-381 public key with its proof of possession (``bls`` in the root payload);
those owners may then approve a bundle together with one 96-byte aggregate signature entry
``{"bls": [owner did, ...], "sig": base64}`` over the same DSSE PAE as their individual
signatures. Each owner adds itself to the entry (``kestrel bundle sign --bls``): the aggregate
grows by one G2 addition, the entry stays 96 bytes.

An owner's BLS key is derived from its owner key (IETF KeyGen over
HKDF-SHA256(owner secret, info "kestrel/owner-bls/v1")): nothing new to store or back up.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from ..identity.bls import BLSSecretKey, BLSUnavailableError, aggregate, load_backend, verify_aggregate
from ..identity.keys import KeyFormatError, SignatureError, SoftwareSigner
from .signing import pae

__all__ = ["owner_bls_key", "owner_bls_entry", "add_bls_approval", "bls_signers", "OWNER_BLS_INFO"]

OWNER_BLS_INFO = b"kestrel/owner-bls/v1"


def owner_bls_key(owner: SoftwareSigner) -> BLSSecretKey:
    """The owner's BLS key, derived deterministically from its owner key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from ..identity.envelope import private_bytes

    ikm = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=OWNER_BLS_INFO).derive(private_bytes(owner))
    return BLSSecretKey(bytes(load_backend().PopSchemeMPL.key_gen(ikm)))


def owner_bls_entry(owner: SoftwareSigner) -> dict[str, str]:
    """``{"pk", "pop"}`` (hex) for the owner's entry in a trust root's ``bls`` map."""
    key = owner_bls_key(owner)
    return {"pk": key.public_key.raw.hex(), "pop": key.prove_possession().hex()}


def add_bls_approval(
    entries: list[dict[str, Any]], owner: SoftwareSigner, payload_type: str, payload: bytes
) -> list[dict[str, Any]]:
    """Signature-list entries with ``owner``'s BLS signature added to the aggregate entry (made if
    there is none; unchanged if the owner is in it already)."""
    did = owner.public_key.did
    mine = owner_bls_key(owner).sign(pae(payload_type, payload))
    out = [e for e in entries if "bls" not in e]
    found = [e for e in entries if "bls" in e]
    if found:
        entry = found[0]
        if did in entry["bls"]:
            return entries
        sig = aggregate([base64.b64decode(entry["sig"]), mine])
        out.append({"bls": [*entry["bls"], did], "sig": base64.b64encode(sig).decode("ascii")})
    else:
        out.append({"bls": [did], "sig": base64.b64encode(mine).decode("ascii")})
    return out


def bls_signers(
    entries: Sequence[tuple[tuple[str, ...], bytes]], root: Any, payload_type: str, payload: bytes
) -> tuple[str, ...]:
    """The owners an aggregate entry proves approved ``payload``: all of its signers must be owners
    with a BLS key in ``root`` (whose proof of possession verifies) and the aggregate must verify.
    An entry that fails adds nothing (like a bad individual signature); so does a missing library."""
    from ..identity.bls import BLSPublicKey

    approved: list[str] = []
    for signers, sig in entries:
        if not signers or any(d not in root.owners or d not in root.bls for d in signers):
            continue
        try:
            keys = [BLSPublicKey(root.bls[d][0]).proven(root.bls[d][1]) for d in signers]
            verify_aggregate(keys, pae(payload_type, payload), sig)
        except (SignatureError, KeyFormatError, BLSUnavailableError):
            continue
        approved.extend(d for d in signers if d not in approved)
    return tuple(approved)
