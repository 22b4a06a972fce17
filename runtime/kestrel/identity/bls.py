"""BLS12-381 keys, signatures, proofs of possession and key certificates (pure: no I/O).

Ciphersuite: ``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_`` of the IETF BLS signature draft
(draft-irtf-cfrg-bls-signature-05), the "minimal-pubkey-size" variant with proofs of possession:
public keys are 48-byte compressed G1 points, signatures 96-byte compressed G2 points (the
Ethereum consensus suite; docs/decisions.md says why). The library (blspy) is imported on first
use only, so an agent that never takes part in a group decision never maps it.

Aggregation is safe only over keys whose owners proved possession of the secret (rogue-key
attack). This module makes that structural: :func:`verify_aggregate` takes :class:`ProvenKey`
values, and a :class:`ProvenKey` is only made by :meth:`BLSPublicKey.proven` (which verifies a
proof of possession) or by :func:`verify_certificate` (whose certificate carries one).

A BLS key is bound to an agent by a *certificate* signed with the agent's identity key (the
AgentID never changes; the BLS key rotates, each rotation a new certificate with a higher
``serial``). Format (docs/quorum.md, "BLS key certificate")::

    cert  = msgpack [1, body, signature]            (body, signature: bin)
    body  = msgpack map {v: 1, agent: did, serial: int >= 1, pk: bin(48), pop: bin(96), ts: int ms}
    signature = identity signature over "kestrel/bls-cert/v1" 0x00 || body
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..errors import DataError, UsageError
from .keys import KeyFormatError, PublicKey, SignatureError, Signer

__all__ = [
    "SUITE",
    "POP_SUITE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "SECRET_SIZE",
    "CERT_DOMAIN",
    "MAX_CERTIFICATE",
    "BLSUnavailableError",
    "BLSCertificateError",
    "BLSPublicKey",
    "ProvenKey",
    "BLSSecretKey",
    "VerifiedCertificate",
    "aggregate",
    "verify_aggregate",
    "issue_certificate",
    "verify_certificate",
    "load_backend",
]

SUITE = "BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
POP_SUITE = "BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
PUBLIC_KEY_SIZE = 48
SIGNATURE_SIZE = 96
SECRET_SIZE = 32
CERT_DOMAIN = b"kestrel/bls-cert/v1\x00"
MAX_CERTIFICATE = 1024
_G1_INFINITY = b"\xc0" + bytes(47)
_R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001  # the group order


class BLSUnavailableError(UsageError):
    """The BLS library is not installed."""


class BLSCertificateError(DataError):
    """A BLS key certificate is malformed, forged, or its proof of possession fails.

    ``reason`` is one of: malformed, wrong-agent, forged, bad-key, no-possession.
    """

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"BLS key certificate refused ({reason}): {message}", hint=hint)
        self.reason = reason


_backend: Any = None


def load_backend() -> Any:
    """The blspy module (imported once, on first use), or BLSUnavailableError with an install hint."""
    global _backend
    if _backend is None:
        try:
            import blspy
        except ImportError as exc:
            raise BLSUnavailableError(
                f"BLS12-381 support is not installed ({exc})",
                hint="install it with: pip install 'kestrel-sovereign[bls]'",
            ) from None
        _backend = blspy
    return _backend


@dataclass(frozen=True)
class BLSPublicKey:
    """A validated BLS public key (48-byte compressed G1 point, not the identity, in the subgroup)."""

    raw: bytes
    _g1: Any = field(init=False, repr=False, compare=False)  # the decoded point, checked once

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_SIZE:
            raise KeyFormatError(
                f"a BLS public key is {PUBLIC_KEY_SIZE} bytes, got "
                f"{len(self.raw) if isinstance(self.raw, bytes) else type(self.raw).__name__}"
            )
        if self.raw == _G1_INFINITY:
            raise KeyFormatError("the BLS public key is the point at infinity (KeyValidate fails)")
        b = load_backend()
        try:
            point = b.G1Element.from_bytes(self.raw)  # checks the encoding, the curve and the subgroup
        except (ValueError, RuntimeError) as exc:
            raise KeyFormatError(f"invalid BLS public key: {exc}") from None
        object.__setattr__(self, "_g1", point)

    def _point(self) -> Any:
        return self._g1

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return if ``signature`` is this key's signature over ``message``; raise SignatureError."""
        b = load_backend()
        if not b.PopSchemeMPL.verify(self._point(), bytes(message), _signature_point(signature)):
            raise SignatureError(
                "BLS signature does not verify", hint="the message was altered, or it was signed by a different key"
            )

    def proven(self, proof: bytes) -> ProvenKey:
        """Verify a proof of possession (IETF PopVerify); return the key as aggregatable."""
        b = load_backend()
        try:
            ok = b.PopSchemeMPL.pop_verify(self._point(), _signature_point(proof))
        except SignatureError:
            ok = False
        if not ok:
            raise SignatureError(
                "the BLS proof of possession does not verify",
                hint="the key's owner did not prove it holds the secret key (rogue key?)",
            )
        return ProvenKey(self)


@dataclass(frozen=True)
class ProvenKey:
    """A BLS public key whose proof of possession verified: the only kind that may be aggregated."""

    key: BLSPublicKey


def _signature_point(signature: bytes) -> Any:
    b = load_backend()
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_SIZE:
        raise SignatureError(f"a BLS signature is {SIGNATURE_SIZE} bytes")
    try:
        return b.G2Element.from_bytes(bytes(signature))
    except (ValueError, RuntimeError) as exc:
        raise SignatureError(f"malformed BLS signature: {exc}") from None


class BLSSecretKey:
    """A BLS secret key held in memory (32-byte big-endian scalar, 0 < sk < r)."""

    __slots__ = ("_sk", "_public")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != SECRET_SIZE:
            raise KeyFormatError(f"a BLS secret key is {SECRET_SIZE} bytes")
        if not 0 < int.from_bytes(raw, "big") < _R:
            raise KeyFormatError("a BLS secret key must be a scalar between 1 and the group order")
        b = load_backend()
        self._sk = b.PrivateKey.from_bytes(bytes(raw))
        self._public = BLSPublicKey(bytes(self._sk.get_g1()))

    @classmethod
    def generate(cls) -> BLSSecretKey:
        """IETF KeyGen over 32 fresh random bytes."""
        b = load_backend()
        return cls(bytes(b.PopSchemeMPL.key_gen(os.urandom(32))))

    @property
    def public_key(self) -> BLSPublicKey:
        return self._public

    def secret_bytes(self) -> bytes:
        """The 32 secret bytes, for sealing only (keystore envelope or TPM sealed object)."""
        return bytes(self._sk)

    def sign(self, message: bytes) -> bytes:
        return bytes(load_backend().PopSchemeMPL.sign(self._sk, bytes(message)))

    def prove_possession(self) -> bytes:
        """IETF PopProve: a signature over the public key under the POP domain tag."""
        return bytes(load_backend().PopSchemeMPL.pop_prove(self._sk))

    def __repr__(self) -> str:
        return f"BLSSecretKey(public={self._public.fingerprint})"


def aggregate(signatures: Sequence[bytes]) -> bytes:
    """IETF Aggregate: the 96-byte sum of ``signatures`` (each checked to be a G2 point)."""
    if not signatures:
        raise DataError("nothing to aggregate: no signatures")
    b = load_backend()
    return bytes(b.PopSchemeMPL.aggregate([_signature_point(s) for s in signatures]))


def verify_aggregate(keys: Sequence[ProvenKey], message: bytes, signature: bytes) -> None:
    """IETF FastAggregateVerify over proven keys (all signed the same ``message``); raise SignatureError."""
    if not keys:
        raise SignatureError("an aggregate signature needs at least one signer")
    if any(not isinstance(k, ProvenKey) for k in keys):
        raise TypeError("verify_aggregate takes ProvenKey values (keys with a verified proof of possession)")
    if len({k.key.raw for k in keys}) != len(keys):
        raise SignatureError("the same BLS key appears twice among the signers")
    b = load_backend()
    points = [k.key._point() for k in keys]
    if not b.PopSchemeMPL.fast_aggregate_verify(points, bytes(message), _signature_point(signature)):
        raise SignatureError(
            "the aggregate BLS signature does not verify for these signers",
            hint="a signer signed a different message, or a signature was altered",
        )


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedCertificate:
    agent: str  # the AgentID (did:key) that certified the key
    serial: int
    key: ProvenKey
    time_ms: int
    digest: str  # sha256 hex of the exact certificate bytes
    data: bytes  # the exact certificate bytes

    @property
    def public_key(self) -> BLSPublicKey:
        return self.key.key


def issue_certificate(signer: Signer, secret: BLSSecretKey, *, serial: int, now: float) -> bytes:
    """Certify ``secret``'s public key for the agent whose identity key is ``signer``."""
    if not isinstance(serial, int) or serial < 1:
        raise ValueError("certificate serials start at 1")
    body = msgpack.packb(
        {
            "v": 1,
            "agent": signer.public_key.did,
            "serial": serial,
            "pk": secret.public_key.raw,
            "pop": secret.prove_possession(),
            "ts": int(now * 1000),
        },
        use_bin_type=True,
    )
    signature = signer.sign(CERT_DOMAIN + body)
    return msgpack.packb([1, body, signature], use_bin_type=True)


def verify_certificate(data: bytes, *, agent: str | None = None) -> VerifiedCertificate:
    """Check a certificate's structure, identity signature and proof of possession.

    ``agent``: the AgentID the certificate must belong to (the verifier knows who it talks to).
    """
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_CERTIFICATE:
        raise BLSCertificateError("malformed", f"not bytes, or larger than {MAX_CERTIFICATE} bytes")
    data = bytes(data)
    try:
        version, body_bytes, signature = msgpack.unpackb(data, raw=False)
        body = msgpack.unpackb(body_bytes, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BLSCertificateError("malformed", f"cannot decode: {exc}") from None
    if (
        version != 1
        or not isinstance(body_bytes, bytes)
        or not isinstance(signature, bytes)
        or not isinstance(body, dict)
    ):
        raise BLSCertificateError("malformed", "unknown version or field types")
    if set(body) != {"v", "agent", "serial", "pk", "pop", "ts"} or body["v"] != 1:
        raise BLSCertificateError("malformed", f"unexpected fields {sorted(map(str, body))}")
    did, serial, ts = body["agent"], body["serial"], body["ts"]
    if not isinstance(did, str) or type(serial) is not int or serial < 1 or type(ts) is not int:
        raise BLSCertificateError("malformed", "agent, serial or ts has the wrong type")
    if agent is not None and did != agent:
        raise BLSCertificateError("wrong-agent", f"certificate is for {did}, expected {agent}")
    try:
        PublicKey.from_did(did).verify(signature, CERT_DOMAIN + body_bytes)
    except (KeyFormatError, SignatureError) as exc:
        raise BLSCertificateError("forged", f"identity signature does not verify for {did}: {exc.message}") from None
    try:
        key = BLSPublicKey(body["pk"] if isinstance(body["pk"], bytes) else b"")
    except KeyFormatError as exc:
        raise BLSCertificateError("bad-key", exc.message) from None
    try:
        proven = key.proven(body["pop"] if isinstance(body["pop"], bytes) else b"")
    except SignatureError as exc:
        raise BLSCertificateError(
            "no-possession", exc.message, hint="a key without a valid proof of possession is never aggregated"
        ) from None
    return VerifiedCertificate(
        agent=did, serial=serial, key=proven, time_ms=ts, digest=hashlib.sha256(data).hexdigest(), data=data
    )
