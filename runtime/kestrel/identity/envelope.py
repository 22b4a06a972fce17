"""Pure core of the file keystore: the encrypted key envelope (see docs/identity.md).

An envelope holds one private key (Ed25519 seed or P-256 scalar, 32 bytes),
encrypted with AES-256-GCM under a key-encryption key derived from a secret
(a passphrase through Argon2id or scrypt, or a machine-bound secret through
HKDF-SHA256). Everything before the ciphertext is authenticated as AEAD
associated data; a SHA-256 checksum over the whole file comes last so that a
damaged file (:class:`KeystoreCorruptError`) is told apart from a wrong secret
(:class:`WrongPassphraseError`). Bytes and parameters in, typed values out; no I/O.
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import KeystoreCorruptError, MachineBindingError, WrongPassphraseError
from .keys import Algorithm, KeyFormatError, PublicKey, SoftwareSigner

__all__ = [
    "KEYSTORE_MAGIC",
    "BACKUP_MAGIC",
    "Kdf",
    "KdfParams",
    "Envelope",
    "seal",
    "parse_envelope",
    "open_envelope",
    "private_bytes",
    "signer_from_private",
]

KEYSTORE_MAGIC = b"KSTRLKEY"
BACKUP_MAGIC = b"KSTRLBAK"
VERSION = 1
AEAD_AES256GCM = 1
_ALG_CODE = {Algorithm.ED25519: 1, Algorithm.P256: 2}
_CODE_ALG = {v: k for k, v in _ALG_CODE.items()}
# magic, version, algorithm, kdf, aead, reserved(4), kdf p1..p3, salt, nonce
_FIXED = struct.Struct(">8sBBBB4xIII16s12s")
_MACHINE_INFO = b"kestrel keystore v1 machine-bound"
_MAX_META = 64 * 1024
_MAX_ARGON2_KIB = 1024 * 1024  # 1 GiB
_MAX_ITERATIONS = 64
_MAX_LANES = 64
_MAX_SCRYPT_LOG2N = 22


class Kdf(enum.IntEnum):
    ARGON2ID = 1  # p1 = memory KiB, p2 = iterations, p3 = lanes
    SCRYPT = 2  # p1 = log2(N), p2 = r, p3 = p
    MACHINE = 3  # HKDF-SHA256 over a 256-bit random secret and the machine id; params 0


@dataclass(frozen=True)
class KdfParams:
    """Which KDF and its cost parameters (meaning of p1..p3 depends on ``kdf``)."""

    kdf: Kdf = Kdf.ARGON2ID
    p1: int = 64 * 1024
    p2: int = 3
    p3: int = 4

    @classmethod
    def argon2id(cls, *, memory_kib: int = 64 * 1024, iterations: int = 3, lanes: int = 4) -> KdfParams:
        """RFC 9106's second recommended option by default (64 MiB, t=3, p=4)."""
        return cls(Kdf.ARGON2ID, memory_kib, iterations, lanes)

    @classmethod
    def scrypt(cls, *, log2_n: int = 17, r: int = 8, p: int = 1) -> KdfParams:
        return cls(Kdf.SCRYPT, log2_n, r, p)

    @classmethod
    def machine(cls) -> KdfParams:
        return cls(Kdf.MACHINE, 0, 0, 0)

    def check(self) -> None:
        """Raise KeystoreCorruptError for parameters no writer produces (a DoS guard)."""
        k, p1, p2, p3 = self.kdf, self.p1, self.p2, self.p3
        ok = (
            (
                k is Kdf.ARGON2ID
                and 8 * p3 <= p1 <= _MAX_ARGON2_KIB
                and 1 <= p2 <= _MAX_ITERATIONS
                and 1 <= p3 <= _MAX_LANES
            )
            or (k is Kdf.SCRYPT and 10 <= p1 <= _MAX_SCRYPT_LOG2N and 1 <= p2 <= 32 and 1 <= p3 <= 16)
            or (k is Kdf.MACHINE and p1 == p2 == p3 == 0)
        )
        if not ok:
            raise KeystoreCorruptError(f"implausible key-derivation parameters {self}")

    def derive(self, secret: bytes, salt: bytes) -> bytes:
        """The 32-byte key-encryption key for ``secret`` (passphrase or machine secret)."""
        if self.kdf is Kdf.ARGON2ID:
            return Argon2id(salt=salt, length=32, iterations=self.p2, lanes=self.p3, memory_cost=self.p1).derive(secret)
        if self.kdf is Kdf.SCRYPT:
            return Scrypt(salt=salt, length=32, n=1 << self.p1, r=self.p2, p=self.p3).derive(secret)
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_MACHINE_INFO).derive(secret)


@dataclass(frozen=True)
class Envelope:
    """A parsed, checksum-verified envelope; its ciphertext is still sealed."""

    magic: bytes
    public_key: PublicKey
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    meta: bytes  # public, authenticated metadata (UTF-8 JSON in backups; empty in keystores)
    aad: bytes
    ciphertext: bytes

    @property
    def algorithm(self) -> Algorithm:
        return self.public_key.algorithm


def private_bytes(signer: SoftwareSigner) -> bytes:
    """The 32-byte private key: Ed25519 seed or big-endian P-256 scalar."""
    key = signer.private_key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    return key.private_numbers().private_value.to_bytes(32, "big")


def signer_from_private(algorithm: Algorithm, raw: bytes) -> SoftwareSigner:
    if len(raw) != 32:
        raise KeystoreCorruptError(f"private key must be 32 bytes, got {len(raw)}")
    try:
        if algorithm is Algorithm.ED25519:
            return SoftwareSigner(ed25519.Ed25519PrivateKey.from_private_bytes(raw))
        return SoftwareSigner(ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1()))
    except ValueError as exc:
        raise KeystoreCorruptError(f"invalid {algorithm.value} private key: {exc}") from None


def seal(
    signer: SoftwareSigner,
    secret: bytes,
    *,
    magic: bytes = KEYSTORE_MAGIC,
    kdf: KdfParams | None = None,
    meta: bytes = b"",
    salt: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt ``signer``'s private key under ``secret``; return the envelope bytes."""
    kdf = kdf or KdfParams.argon2id()
    kdf.check()
    salt = os.urandom(16) if salt is None else salt
    nonce = os.urandom(12) if nonce is None else nonce
    if len(salt) != 16 or len(nonce) != 12 or len(meta) > _MAX_META:
        raise ValueError("salt must be 16 bytes, nonce 12 bytes, meta at most 64 KiB")
    pub = signer.public_key
    head = _FIXED.pack(
        magic, VERSION, _ALG_CODE[pub.algorithm], kdf.kdf, AEAD_AES256GCM, kdf.p1, kdf.p2, kdf.p3, salt, nonce
    )
    head += bytes([len(pub.raw)]) + pub.raw + struct.pack(">I", len(meta)) + meta
    aad = head + struct.pack(">H", 32 + 16)
    kek = kdf.derive(secret, salt)
    ct = AESGCM(kek).encrypt(nonce, private_bytes(signer), aad)
    body = aad + ct
    return body + hashlib.sha256(body).digest()


def parse_envelope(data: bytes, *, magic: bytes = KEYSTORE_MAGIC, what: str = "keystore") -> Envelope:
    """Check structure and checksum; raise KeystoreCorruptError naming the first problem."""

    def corrupt(reason: str) -> KeystoreCorruptError:
        restore = (
            "restore the identity from a backup (`kestrel identity restore FILE`)"
            if magic == KEYSTORE_MAGIC
            else "use another copy of the file"
        )
        return KeystoreCorruptError(f"{what} is damaged: {reason}", hint=f"{restore}; the damaged file was not changed")

    if len(data) < _FIXED.size + 32:
        raise corrupt(f"only {len(data)} bytes (truncated)")
    if data[:8] != magic:
        if data[:8] in (KEYSTORE_MAGIC, BACKUP_MAGIC):
            raise corrupt(f"this is a {'backup' if data[:8] == BACKUP_MAGIC else 'keystore'} file, not a {what}")
        raise corrupt("wrong magic bytes (not a Kestrel key file)")
    body, checksum = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != checksum:
        raise corrupt("SHA-256 checksum mismatch (bit flip or truncation)")
    _, version, alg_code, kdf_code, aead, p1, p2, p3, salt, nonce = _FIXED.unpack_from(body)
    if version != VERSION:
        raise corrupt(f"unsupported format version {version}")
    if alg_code not in _CODE_ALG or aead != AEAD_AES256GCM:
        raise corrupt(f"unknown algorithm {alg_code} or cipher {aead}")
    try:
        kdf = KdfParams(Kdf(kdf_code), p1, p2, p3)
    except ValueError:
        raise corrupt(f"unknown key-derivation function {kdf_code}") from None
    kdf.check()
    off = _FIXED.size
    try:
        n = body[off]
        pub_raw = body[off + 1 : off + 1 + n]
        off += 1 + n
        (m,) = struct.unpack_from(">I", body, off)
        meta = body[off + 4 : off + 4 + m]
        off += 4 + m
        (c,) = struct.unpack_from(">H", body, off)
        off += 2
    except (IndexError, struct.error):
        raise corrupt("truncated header") from None
    if len(pub_raw) != n or len(meta) != m or m > _MAX_META or c != 48 or len(body) - off != c:
        raise corrupt("inconsistent field lengths")
    try:
        public_key = PublicKey(_CODE_ALG[alg_code], pub_raw)
    except KeyFormatError as exc:
        raise corrupt(f"bad public key: {exc.message}") from None
    return Envelope(magic, public_key, kdf, salt, nonce, meta, body[:off], body[off:])


def open_envelope(
    env: Envelope,
    secret: bytes,
    *,
    what: str = "keystore",
    hint: str = "check --passphrase-file / KESTREL_PASSPHRASE; the file itself is intact",
) -> SoftwareSigner:
    """Decrypt; raise WrongPassphraseError (or MachineBindingError) if ``secret`` is wrong."""
    kek = env.kdf.derive(secret, env.salt)
    try:
        raw = AESGCM(kek).decrypt(env.nonce, env.ciphertext, env.aad)
    except InvalidTag:
        if env.kdf.kdf is Kdf.MACHINE:
            raise MachineBindingError(
                f"the machine-bound {what} does not open on this machine",
                hint="it was created on another machine (different /etc/machine-id) or its "
                "machine.key changed; move identities between machines with "
                "`kestrel identity backup` / `kestrel identity restore`",
            ) from None
        raise WrongPassphraseError(f"wrong passphrase for the {what}", hint=hint) from None
    signer = signer_from_private(env.algorithm, raw)
    if signer.public_key != env.public_key:
        raise KeystoreCorruptError(f"{what} private key does not match its public key")
    return signer
