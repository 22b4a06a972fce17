"""Owner signatures (pure): DSSE pre-authentication encoding, signature lists, thresholds.

Every owner signature is over ``PAE(payload_type, payload)`` as in DSSE v1, so a
signature made for a bundle manifest can never be replayed as one over a trust
root (or the reverse). A signature list is a JSON array of
``{"keyid": "<did:key>", "sig": "<base64 of 64 bytes>"}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._internal.strictjson import StrictJsonError, loads_strict
from ..identity.keys import KeyFormatError, PublicKey, SignatureError, Signer

__all__ = [
    "BUNDLE_TYPE",
    "ROOT_TYPE",
    "pae",
    "sign_entry",
    "parse_signatures",
    "encode_signatures",
    "threshold_signers",
    "strict_json",
    "parse_bls_entries",
    "MAX_SIGNATURES",
]

BUNDLE_TYPE = "application/vnd.kestrel.bundle-manifest+json"
ROOT_TYPE = "application/vnd.kestrel.root+json"
MAX_SIGNATURES = 64


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign_entry(signer: Signer, payload_type: str, payload: bytes) -> dict[str, str]:
    sig = signer.sign(pae(payload_type, payload))
    return {"keyid": signer.public_key.did, "sig": base64.b64encode(sig).decode("ascii")}


def strict_json(data: bytes | str, fail: Callable[[str], Exception]) -> object:
    """Parse JSON strictly (:func:`kestrel._internal.strictjson.loads_strict`: no duplicate keys,
    finite numbers, 64-bit integers, UTF-8); ``fail(reason)`` makes the error raised."""
    try:
        return loads_strict(data)
    except StrictJsonError as exc:
        raise fail(f"not valid JSON ({exc})") from None


def parse_signatures(data: bytes | list[Any], fail: Callable[[str], Exception]) -> list[tuple[str, bytes]]:
    """Decode a signature list into (keyid, 64-byte signature) pairs (duplicates kept)."""
    items = strict_json(data, fail) if isinstance(data, (bytes, str)) else data
    if not isinstance(items, list) or len(items) > MAX_SIGNATURES:
        raise fail(f"signatures must be a JSON list of at most {MAX_SIGNATURES} entries")
    out = []
    for item in items:
        if isinstance(item, dict) and set(item) == {"bls", "sig"}:
            continue  # an aggregate of owners' BLS signatures: parse_bls_entries (kestrel.ota.bls_approval)
        if not isinstance(item, dict) or set(item) != {"keyid", "sig"}:
            raise fail('each signature must be {"keyid": ..., "sig": ...} or {"bls": [...], "sig": ...}')
        keyid, sig = item["keyid"], item["sig"]
        if not isinstance(keyid, str) or not isinstance(sig, str) or len(sig) > 200:
            raise fail("signature keyid and sig must be strings")
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise fail("signature is not valid base64") from None
        if len(raw) != 64:
            raise fail(f"signature must be 64 bytes, got {len(raw)}")
        out.append((keyid, raw))
    return out


def parse_bls_entries(data: bytes | list[Any], fail: Callable[[str], Exception]) -> list[tuple[tuple[str, ...], bytes]]:
    """The ``{"bls": [owner did, ...], "sig": "<base64 of 96 bytes>"}`` entries of a signature list:
    (signers, aggregate signature) pairs. Checked for shape only; kestrel.ota.bls_approval verifies."""
    items = strict_json(data, fail) if isinstance(data, (bytes, str)) else data
    if not isinstance(items, list) or len(items) > MAX_SIGNATURES:
        raise fail(f"signatures must be a JSON list of at most {MAX_SIGNATURES} entries")
    out = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"bls", "sig"}:
            continue
        signers, sig = item["bls"], item["sig"]
        if (
            not isinstance(signers, list)
            or not 0 < len(signers) <= MAX_SIGNATURES
            or not all(isinstance(d, str) for d in signers)
            or len(set(signers)) != len(signers)
        ):
            raise fail("a BLS entry's 'bls' must list 1 to 64 distinct owner keys")
        if not isinstance(sig, str) or len(sig) > 200:
            raise fail("a BLS entry's sig must be base64 text")
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise fail("a BLS entry's sig is not valid base64") from None
        if len(raw) != 96:
            raise fail(f"a BLS aggregate signature is 96 bytes, got {len(raw)}")
        out.append((tuple(signers), raw))
    return out


def encode_signatures(entries: Iterable[dict[str, Any]]) -> bytes:
    return json.dumps(list(entries), separators=(",", ":")).encode("ascii")


def threshold_signers(
    sigs: Sequence[tuple[str, bytes]], trusted: Sequence[str], payload_type: str, payload: bytes
) -> tuple[str, ...]:
    """Distinct trusted keys (did:key) whose signature verifies. Duplicates count once;
    unknown keys and bad signatures are ignored (they add nothing)."""
    message = pae(payload_type, payload)
    good: list[str] = []
    allowed = set(trusted)
    for keyid, sig in sigs:
        if keyid not in allowed or keyid in good:
            continue
        try:
            PublicKey.from_did(keyid).verify(sig, message)
        except (SignatureError, KeyFormatError):
            continue
        good.append(keyid)
    return tuple(good)
