"""The device trust root (pure): k of n owner public keys, versioned; TUF-style rotation.

On disk and on the wire a root is a DSSE envelope (docs/bundle-format.md,
"Trust root"). Version 1 is installed at provisioning and may carry no
signatures; version N+1 is accepted only when signed by a threshold of the
keys of version N *and* a threshold of its own keys.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..identity.keys import KeyFormatError, PublicKey, Signer
from .errors import TrustRootError
from .signing import ROOT_TYPE, parse_signatures, sign_entry, strict_json, threshold_signers

__all__ = ["TrustRoot", "root_payload", "root_envelope", "parse_root", "verify_rotation", "sign_root"]

MAX_OWNERS = 32
MAX_ROOT_BYTES = 64 * 1024


@dataclass(frozen=True)
class TrustRoot:
    version: int
    threshold: int
    owners: tuple[str, ...]  # did:key strings
    payload: bytes  # exact signed bytes
    envelope: bytes  # exact stored bytes
    signed_by: tuple[str, ...] = ()
    # owner did -> (BLS public key 48 bytes, proof of possession 96 bytes): owners who may approve
    # bundles with one aggregate BLS signature (kestrel.ota.bls_approval; docs/bundle-format.md)
    bls: Mapping[str, tuple[bytes, bytes]] = field(default_factory=dict)


def _fail(msg: str) -> TrustRootError:
    return TrustRootError(f"trust root: {msg}", code="root-malformed")


def root_payload(
    owners: Sequence[str], threshold: int, version: int, bls: Mapping[str, Mapping[str, str]] | None = None
) -> bytes:
    """Canonical payload bytes for a root (validated). ``bls``: owner did -> {"pk", "pop"} (hex)."""
    owners = list(dict.fromkeys(owners))
    doc: dict[str, Any] = {"_type": "kestrel.root", "version": version, "threshold": threshold, "owners": owners}
    if bls:
        doc["bls"] = {d: dict(v) for d, v in bls.items()}
    payload = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("ascii")
    _parse_payload(payload)
    return payload


def _parse_payload(payload: bytes) -> tuple[int, int, tuple[str, ...]]:
    version, threshold, owners, _ = _parse_payload_bls(payload)
    return version, threshold, owners


def _parse_payload_bls(payload: bytes) -> tuple[int, int, tuple[str, ...], dict[str, tuple[bytes, bytes]]]:
    obj = strict_json(payload, _fail)
    keys = {"_type", "version", "threshold", "owners"}
    if not isinstance(obj, dict) or set(obj) - {"bls"} != keys:
        raise _fail("payload must have exactly _type, version, threshold, owners (and optionally bls)")
    if obj["_type"] != "kestrel.root":
        raise _fail(f"_type is {obj['_type']!r}, expected 'kestrel.root'")
    version, threshold, owners = obj["version"], obj["threshold"], obj["owners"]
    if type(version) is not int or not 1 <= version < 2**31:
        raise _fail("version must be a positive integer")
    if not isinstance(owners, list) or not 1 <= len(owners) <= MAX_OWNERS:
        raise _fail(f"owners must list 1 to {MAX_OWNERS} owner keys")
    for o in owners:
        try:
            PublicKey.from_did(o)
        except KeyFormatError as exc:
            raise _fail(f"owner {o!r} is not a did:key public key ({exc.message})") from None
    if len(set(owners)) != len(owners):
        raise _fail("owners lists a key twice")
    if type(threshold) is not int or not 1 <= threshold <= len(owners):
        raise _fail(f"threshold must be between 1 and the number of owners ({len(owners)})")
    return version, threshold, tuple(owners), _bls_keys(obj.get("bls", {}), owners)


def _bls_keys(bls: object, owners: list[str]) -> dict[str, tuple[bytes, bytes]]:
    """Shape only (48-byte key, 96-byte proof, hex); the proof is verified where it is used."""
    if not isinstance(bls, dict):
        raise _fail('bls must map owner keys to {"pk": hex, "pop": hex}')
    out = {}
    for did, entry in bls.items():
        if did not in owners:
            raise _fail(f"bls names {did!r}, which is not an owner of this root")
        if (
            not isinstance(entry, dict)
            or set(entry) != {"pk", "pop"}
            or not all(isinstance(v, str) for v in entry.values())
        ):
            raise _fail(f'bls entry of {did} must be {{"pk": hex, "pop": hex}}')
        try:
            pk, pop = bytes.fromhex(entry["pk"]), bytes.fromhex(entry["pop"])
        except ValueError:
            raise _fail(f"bls entry of {did} is not hex") from None
        if len(pk) != 48 or len(pop) != 96:
            raise _fail(f"bls entry of {did}: a key is 48 bytes and its proof of possession 96")
        out[did] = (pk, pop)
    return out


def root_envelope(payload: bytes, signatures: Sequence[dict[str, str]] = ()) -> bytes:
    return json.dumps(
        {
            "payloadType": ROOT_TYPE,
            "payload": base64.b64encode(payload).decode("ascii"),
            "signatures": list(signatures),
        },
        separators=(",", ":"),
    ).encode("ascii")


def sign_root(envelope: bytes, signer: Signer) -> bytes:
    """Add ``signer``'s signature to a root envelope (no verification)."""
    env = _envelope(envelope)
    sigs = [s for s in env["signatures"] if s.get("keyid") != signer.public_key.did]
    payload = base64.b64decode(env["payload"])
    sigs.append(sign_entry(signer, ROOT_TYPE, payload))
    return root_envelope(payload, sigs)


def _envelope(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_ROOT_BYTES:
        raise _fail(f"larger than {MAX_ROOT_BYTES} bytes")
    env = strict_json(data, _fail)
    if not isinstance(env, dict) or set(env) != {"payloadType", "payload", "signatures"}:
        raise _fail("must be a DSSE envelope with payloadType, payload, signatures")
    if env["payloadType"] != ROOT_TYPE:
        raise _fail(f"payloadType must be {ROOT_TYPE}")
    if not isinstance(env["payload"], str):
        raise _fail("payload must be base64 text")
    return env


def parse_root(data: bytes, *, require_self_signed: bool | None = None) -> TrustRoot:
    """Parse a root envelope. Versions above 1 must be signed by a threshold of their own keys."""
    env = _envelope(data)
    try:
        payload = base64.b64decode(env["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise _fail("payload is not valid base64") from None
    version, threshold, owners, bls = _parse_payload_bls(payload)
    sigs = parse_signatures(env["signatures"], _fail)
    signed = threshold_signers(sigs, owners, ROOT_TYPE, payload)
    must = version > 1 if require_self_signed is None else require_self_signed
    if must and len(signed) < threshold:
        raise TrustRootError(
            f"trust root version {version} is signed by {len(signed)} of its keys, needs {threshold}",
            code="root-threshold",
        )
    return TrustRoot(version, threshold, owners, payload, bytes(data), signed, bls)


def verify_rotation(current: TrustRoot, new_envelope: bytes) -> TrustRoot:
    """Accept ``new_envelope`` as the successor of ``current`` or raise TrustRootError."""
    new = parse_root(new_envelope, require_self_signed=True)
    if new.version != current.version + 1:
        raise TrustRootError(
            f"new trust root has version {new.version}, expected {current.version + 1}",
            code="root-version",
            hint="rotate one version at a time, in order",
        )
    sigs = parse_signatures(_envelope(new_envelope)["signatures"], _fail)
    old_signed = threshold_signers(sigs, current.owners, ROOT_TYPE, new.payload)
    if len(old_signed) < current.threshold:
        raise TrustRootError(
            f"new trust root is signed by {len(old_signed)} keys of the current root, needs {current.threshold}",
            code="root-threshold",
            hint="a rotation needs signatures from a threshold of the old keys and of the new keys",
        )
    return new
