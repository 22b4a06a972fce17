"""Pure key primitives: algorithms, public keys, did:key, signing and verification.

No I/O happens here. A :class:`PublicKey` is what anyone holding an AgentID can
rebuild (``PublicKey.from_did``) and verify with; a :class:`Signer` is anything
that can sign with the matching private key (a software key, or a key that
never leaves a TPM).

Signature encodings (fixed width, so records never need re-encoding):

* Ed25519: the 64-byte RFC 8032 signature over the message.
* P-256: ECDSA with SHA-256 over the message, encoded as 64 bytes ``r || s``
  (each big-endian, left-padded to 32 bytes). Verifiers accept any valid
  ``s`` (high or low).

did:key encoding (W3C did:key method): ``did:key:z`` + base58btc(multicodec
varint + public key), with multicodec ``0xed`` (ed25519-pub, 32-byte raw key)
and ``0x1200`` (p256-pub, 33-byte SEC1 compressed point).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ..errors import DataError

__all__ = [
    "Algorithm",
    "PublicKey",
    "Signer",
    "SoftwareSigner",
    "SignatureError",
    "KeyFormatError",
    "b58encode",
    "b58decode",
    "p256_der_to_raw",
]


LEDGER_SECRET_INFO = b"kestrel ledger tail seal key v2"


class SignatureError(DataError):
    """A signature does not verify against the public key it claims."""


class KeyFormatError(DataError):
    """A public key or did:key string is malformed or of an unknown kind."""


class Algorithm(str, enum.Enum):
    ED25519 = "ed25519"
    P256 = "p256"

    @property
    def signature_size(self) -> int:
        return 64


_MULTICODEC = {Algorithm.ED25519: b"\xed\x01", Algorithm.P256: b"\x80\x24"}
_KEY_SIZE = {Algorithm.ED25519: 32, Algorithm.P256: 33}

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (multibase ``z``), leading zero bytes kept as '1'."""
    zeros = len(data) - len(data.lstrip(b"\x00"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        try:
            n = n * 58 + _B58_INDEX[ch]
        except KeyError:
            raise KeyFormatError(
                f"invalid base58 character {ch!r}",
                hint="check that the identifier was copied completely and exactly",
            ) from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * zeros + body


def p256_der_to_raw(der: bytes) -> bytes:
    """Convert a DER ECDSA signature to the fixed 64-byte ``r || s`` form."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True)
class PublicKey:
    """A public key, enough to verify an agent's or an owner's signatures."""

    algorithm: Algorithm
    raw: bytes  # ed25519: 32 raw bytes; p256: 33-byte SEC1 compressed point

    def __post_init__(self) -> None:
        if len(self.raw) != _KEY_SIZE[self.algorithm]:
            raise KeyFormatError(
                f"{self.algorithm.value} public key must be {_KEY_SIZE[self.algorithm]} bytes, got {len(self.raw)}"
            )
        # Reject points that are not on the curve now rather than at verify time.
        self._crypto_key()

    # -- conversions -------------------------------------------------------
    @property
    def did(self) -> str:
        return "did:key:z" + b58encode(_MULTICODEC[self.algorithm] + self.raw)

    @classmethod
    def from_did(cls, did: str) -> PublicKey:
        prefix = "did:key:z"
        if not isinstance(did, str) or not did.startswith(prefix):
            raise KeyFormatError(
                f"not a did:key identifier: {did!r}",
                hint="an AgentID looks like did:key:z6Mk... (Ed25519) or did:key:zDn... (P-256); "
                "`kestrel identity show` prints it",
            )
        data = b58decode(did[len(prefix) :])
        for alg, codec in _MULTICODEC.items():
            if data.startswith(codec):
                return cls(alg, data[len(codec) :])
        raise KeyFormatError(
            f"did:key uses an unsupported key type (multicodec prefix {data[:2].hex()})",
            hint="Kestrel identities are Ed25519 or P-256",
        )

    @classmethod
    def from_crypto(cls, key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> PublicKey:
        if isinstance(key, ed25519.Ed25519PublicKey):
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return cls(Algorithm.ED25519, raw)
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
            return cls(Algorithm.P256, raw)
        raise KeyFormatError(f"unsupported key type {type(key).__name__}")

    @classmethod
    def from_p256_point(cls, x: int, y: int) -> PublicKey:
        return cls.from_crypto(ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key())

    def _crypto_key(self) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey:
        try:
            if self.algorithm is Algorithm.ED25519:
                return ed25519.Ed25519PublicKey.from_public_bytes(self.raw)
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.raw)
        except ValueError as exc:
            raise KeyFormatError(f"invalid {self.algorithm.value} public key: {exc}") from None

    # -- verification ------------------------------------------------------
    def verify(self, signature: bytes, message: bytes) -> None:
        """Return if ``signature`` is valid for ``message``; raise SignatureError otherwise."""
        key = self._crypto_key()
        if len(signature) != 64:
            raise SignatureError(f"{self.algorithm.value} signature must be 64 bytes, got {len(signature)}")
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
            else:
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
                key.verify(der, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SignatureError(
                f"signature does not verify for {self.did}",
                hint="the data was altered, or it was signed by a different key",
            ) from None


@runtime_checkable
class Signer(Protocol):
    """Anything that signs with an identity's private key (software or TPM)."""

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, message: bytes) -> bytes:
        """Return a 64-byte signature over ``message`` (see module docstring)."""
        ...


class SoftwareSigner:
    """A private key held in process memory (Ed25519 or P-256)."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
        self._key = private_key
        self._public = PublicKey.from_crypto(private_key.public_key())

    @classmethod
    def generate(cls, algorithm: Algorithm = Algorithm.ED25519) -> SoftwareSigner:
        if algorithm is Algorithm.ED25519:
            return cls(ed25519.Ed25519PrivateKey.generate())
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def private_key(self) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
        return self._key

    def sign(self, message: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(message)
        return p256_der_to_raw(self._key.sign(message, ec.ECDSA(hashes.SHA256())))

    def ledger_secret(self) -> bytes:
        """The device secret that seals the ledger's unsigned tail (docs/ledger-format.md, 3.1): HKDF-SHA256
        of the private key, so it lives exactly where the key does (the file keystore decrypts it into
        memory) and is never stored on its own."""
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            ikm = self._key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
        else:
            ikm = self._key.private_numbers().private_value.to_bytes(32, "big")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=self._public.raw, info=LEDGER_SECRET_INFO).derive(ikm)
