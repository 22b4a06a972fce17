"""Key agreement for peer-message encryption (pure: no I/O).

Kestrel identities sign with Ed25519 or P-256. To encrypt to a recipient we derive a
Diffie-Hellman key from the recipient's *identity* key, so no extra key has to be published:

* Ed25519 -> X25519: the public key's Edwards ``y`` maps to Montgomery ``u = (1 + y) / (1 - y)``
  (RFC 7748 section 4.1); the private scalar is the clamped first half of SHA-512(seed),
  exactly the scalar Ed25519 signs with (the libsodium ``crypto_sign_ed25519_*_to_curve25519`` maps).
* P-256: ECDH directly on the identity key.

The sender uses a fresh ephemeral key per message (ECIES), so only the recipient's static key
is involved; see docs/peer-messages.md for the exact derivation.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ...errors import DataError, UsageError
from ...identity.keys import Algorithm, PublicKey

__all__ = [
    "KeyAgreement",
    "SoftwareKeyAgreement",
    "ed25519_public_to_x25519",
    "ephemeral_exchange",
    "derive_key",
    "HKDF_INFO",
]

_P = 2**255 - 19
HKDF_INFO = b"kestrel/peer-message/v1"


def ed25519_public_to_x25519(raw: bytes) -> bytes:
    """Map a 32-byte Ed25519 public key to its 32-byte X25519 (Montgomery u) form."""
    if len(raw) != 32:
        raise DataError(f"ed25519 public key must be 32 bytes, got {len(raw)}")
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _P or (1 - y) % _P == 0:
        raise DataError("ed25519 public key has no X25519 equivalent (low-order point)")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def _ed25519_private_to_x25519(key: ed25519.Ed25519PrivateKey) -> x25519.X25519PrivateKey:
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    # X25519PrivateKey clamps the scalar itself (RFC 7748 decodeScalar25519).
    return x25519.X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


@runtime_checkable
class KeyAgreement(Protocol):
    """The recipient side: a DH with the identity's private key (software, or a TPM's ECDH_ZGen)."""

    @property
    def public_key(self) -> PublicKey: ...

    def exchange(self, ephemeral_public: bytes) -> bytes:
        """Return the raw DH shared secret with the sender's ephemeral public key."""
        ...


class SoftwareKeyAgreement:
    """Key agreement with an in-memory identity key (``SoftwareSigner.private_key``)."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
        self._public = PublicKey.from_crypto(private_key.public_key())
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            self._x: x25519.X25519PrivateKey | None = _ed25519_private_to_x25519(private_key)
            self._ec: ec.EllipticCurvePrivateKey | None = None
        else:
            self._x, self._ec = None, private_key

    @classmethod
    def from_signer(cls, signer: object) -> SoftwareKeyAgreement:
        key = getattr(signer, "private_key", None)
        if key is None:
            raise UsageError(
                "this identity's key cannot do key agreement in software (it lives in a TPM)",
                hint="send unencrypted (signed only) messages, or use a file-keystore identity",
            )
        return cls(key)

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def exchange(self, ephemeral_public: bytes) -> bytes:
        try:
            if self._x is not None:
                return self._x.exchange(x25519.X25519PublicKey.from_public_bytes(ephemeral_public))
            assert self._ec is not None
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ephemeral_public)
            return self._ec.exchange(ec.ECDH(), peer)
        except ValueError as exc:
            raise DataError(f"invalid ephemeral key in message: {exc}") from None


def ephemeral_exchange(recipient: PublicKey) -> tuple[bytes, bytes]:
    """Sender side: return ``(ephemeral_public_bytes, shared_secret)`` for ``recipient``."""
    if recipient.algorithm is Algorithm.ED25519:
        eph = x25519.X25519PrivateKey.generate()
        peer = x25519.X25519PublicKey.from_public_bytes(ed25519_public_to_x25519(recipient.raw))
        shared = eph.exchange(peer)
        epk = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return epk, shared
    eph_ec = ec.generate_private_key(ec.SECP256R1())
    peer_ec = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), recipient.raw)
    shared = eph_ec.exchange(ec.ECDH(), peer_ec)
    epk = eph_ec.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    return epk, shared


def derive_key(shared: bytes, *, ephemeral_public: bytes, recipient: PublicKey) -> bytes:
    """HKDF-SHA256(shared, salt = epk || recipient raw key, info = HKDF_INFO) -> 32-byte key."""
    if shared == b"\x00" * len(shared):
        raise DataError("key agreement produced the all-zero secret (low-order ephemeral key)")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral_public + recipient.raw, info=HKDF_INFO).derive(
        shared
    )
