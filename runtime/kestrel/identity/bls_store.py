"""Shell: the agent's BLS key on disk, sealed like the identity key, and its rotation.

Layout (``STATE/bls``, 0700; every file 0600; docs/quorum.md "Keys on disk")::

    bls/key-<serial>.enc    file identity: the 32-byte BLS secret, AES-256-GCM under a key derived
                            from the identity keystore's own secret (passphrase or machine-bound)
    bls/key-<serial>.tpm    TPM identity: the secret as a TPM sealed data object (keyedhash) under
                            the owner SRK; unsealed into memory only, never written in plaintext
    bls/cert-<serial>.bin   the certificate, signed by the identity key (kestrel.identity.bls)

The current key is the highest serial that has both files. Rotation writes the next serial, then
records ``bls.key`` in the ledger (when one is given), then deletes the previous secret: a crash
leaves either the old key current or the new one, never none. The AgentID never changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._internal.fsutil import atomic_write, ensure_private_dir, fsync_dir
from .._internal.recorder import Recorder
from ..errors import TransportError
from .bls import BLSSecretKey, VerifiedCertificate, issue_certificate, verify_certificate
from .envelope import Kdf, KdfParams, parse_envelope
from .errors import KeystoreCorruptError, MachineBindingError, TPMKeyError, WrongPassphraseError
from .keys import Signer
from .record import Identity
from .secrets import as_bytes, read_private_file, resolve_passphrase
from .store import KEY_FILE, _machine_secret, identity_dir, load_identity

__all__ = ["BLSKey", "bls_dir", "create_bls_key", "open_bls_key", "current_serial", "RECORD_KIND"]

RECORD_KIND = "bls.key"
MAGIC = b"KSTRLBLS"
TPM_MAGIC = b"KSTRLBTP"
_HEAD = struct.Struct(">8sBBIII16s12s")  # magic, version, kdf, p1, p2, p3, salt, nonce
_NAME = re.compile(r"(key|cert)-([0-9]{1,9})\.(enc|tpm|bin)")
_INFO = b"kestrel bls keystore v1"


@dataclass(frozen=True)
class BLSKey:
    """The agent's current BLS key, unlocked: the secret in memory and its verified certificate."""

    secret: BLSSecretKey
    certificate: VerifiedCertificate

    @property
    def serial(self) -> int:
        return self.certificate.serial

    @property
    def agent(self) -> str:
        return self.certificate.agent


def bls_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / "bls"


def _serials(d: Path) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return found
    except OSError as exc:
        raise TransportError(f"cannot list {d}: {exc.strerror or exc}") from None
    for name in names:
        m = _NAME.fullmatch(name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(m.group(1) + "." + m.group(3))
    return found


def current_serial(state_dir: str | os.PathLike[str]) -> int:
    """The serial of the current BLS key, 0 if the agent has none."""
    complete = [
        s for s, kinds in _serials(bls_dir(state_dir)).items() if "cert.bin" in kinds and kinds & {"key.enc", "key.tpm"}
    ]
    return max(complete, default=0)


# -- sealing -------------------------------------------------------------------------------------


def _file_secret(
    state_dir: Path, identity: Identity, passphrase: bytes | str | None, machine_id_path: str | os.PathLike[str] | None
) -> tuple[bytes, KdfParams]:
    """The identity keystore's secret and KDF kind (the BLS key is protected like the identity key)."""
    env = parse_envelope(read_private_file(identity_dir(state_dir) / KEY_FILE, what="keystore"))
    if env.kdf.kdf is Kdf.MACHINE:
        return _machine_secret(identity_dir(state_dir), machine_id_path=machine_id_path), env.kdf
    return resolve_passphrase(as_bytes(passphrase), what=f"keystore of {identity.name}"), env.kdf


def _seal_file(secret: BLSSecretKey, key_secret: bytes, kdf: KdfParams) -> bytes:
    salt, nonce = os.urandom(16), os.urandom(12)
    head = _HEAD.pack(MAGIC, 1, kdf.kdf, kdf.p1, kdf.p2, kdf.p3, salt, nonce) + secret.public_key.raw
    ct = AESGCM(_kek(kdf, key_secret, salt)).encrypt(nonce, secret.secret_bytes(), head)
    body = head + ct
    return body + hashlib.sha256(body).digest()


def _kek(kdf: KdfParams, key_secret: bytes, salt: bytes) -> bytes:
    return kdf.derive(key_secret + _INFO if kdf.kdf is Kdf.MACHINE else key_secret, salt)


def _open_file(data: bytes, key_secret: bytes, *, path: Path) -> BLSSecretKey:
    def corrupt(why: str) -> KeystoreCorruptError:
        return KeystoreCorruptError(
            f"BLS keystore {path} is damaged: {why}", hint="rotate to a new BLS key: kestrel identity bls --rotate"
        )

    size = _HEAD.size + 48 + 48 + 32
    if len(data) != size:
        raise corrupt(f"{len(data)} bytes, expected {size}")
    body, checksum = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != checksum:
        raise corrupt("SHA-256 checksum mismatch")
    magic, version, kdf_code, p1, p2, p3, salt, nonce = _HEAD.unpack_from(body)
    if magic != MAGIC or version != 1:
        raise corrupt("wrong magic or version")
    try:
        kdf = KdfParams(Kdf(kdf_code), p1, p2, p3)
    except ValueError:
        raise corrupt(f"unknown key-derivation function {kdf_code}") from None
    kdf.check()
    head, ct = body[: _HEAD.size + 48], body[_HEAD.size + 48 :]
    try:
        raw = AESGCM(_kek(kdf, key_secret, salt)).decrypt(nonce, ct, head)
    except InvalidTag:
        if kdf.kdf is Kdf.MACHINE:
            raise MachineBindingError(f"the machine-bound BLS keystore {path} does not open on this machine") from None
        raise WrongPassphraseError(
            f"wrong passphrase for the BLS keystore {path}", hint="it opens with the identity keystore's passphrase"
        ) from None
    secret = BLSSecretKey(raw)
    if secret.public_key.raw != head[_HEAD.size :]:
        raise corrupt("the secret does not match its public key")
    return secret


def _sealed_template(t: Any) -> Any:
    T, C = t.types, t.constants
    return T.TPMT_PUBLIC(
        type=C.TPM2_ALG.KEYEDHASH,
        nameAlg=C.TPM2_ALG.SHA256,
        objectAttributes=(
            C.TPMA_OBJECT.FIXEDTPM | C.TPMA_OBJECT.FIXEDPARENT | C.TPMA_OBJECT.USERWITHAUTH | C.TPMA_OBJECT.NODA
        ),
        authPolicy=b"",
        parameters=T.TPMU_PUBLIC_PARMS(
            keyedHashDetail=T.TPMS_KEYEDHASH_PARMS(scheme=T.TPMT_KEYEDHASH_SCHEME(scheme=C.TPM2_ALG.NULL))
        ),
    )


def _seal_tpm(secret: BLSSecretKey, tcti: str) -> bytes:
    from .tpm import _primary, connect, load_tss

    t = load_tss()
    T = t.types
    ectx = connect(t, tcti)
    try:
        parent = _primary(t, ectx, tcti)
        try:
            sensitive = T.TPM2B_SENSITIVE_CREATE(
                sensitive=T.TPMS_SENSITIVE_CREATE(data=T.TPM2B_SENSITIVE_DATA(secret.secret_bytes()))
            )
            private, public, *_ = ectx.create(parent, sensitive, T.TPM2B_PUBLIC(publicArea=_sealed_template(t)))
        except t.TSS2_Exception as exc:
            raise TPMKeyError(f"the TPM refused to seal the BLS key: {exc}") from None
        finally:
            ectx.flush_context(parent)
    finally:
        ectx.close()
    priv, pub = private.marshal(), public.marshal()
    body = TPM_MAGIC + struct.pack(">H", len(priv)) + priv + struct.pack(">H", len(pub)) + pub + secret.public_key.raw
    return body + hashlib.sha256(body).digest()


def _unseal_tpm(data: bytes, tcti: str, *, path: Path) -> BLSSecretKey:
    from .tpm import _classify, _primary, connect, load_tss

    def corrupt(why: str) -> KeystoreCorruptError:
        return KeystoreCorruptError(
            f"sealed BLS key {path} is damaged: {why}", hint="rotate to a new BLS key: kestrel identity bls --rotate"
        )

    body, checksum = data[:-32], data[-32:]
    if len(data) < 8 + 4 + 48 + 32 or hashlib.sha256(body).digest() != checksum or body[:8] != TPM_MAGIC:
        raise corrupt("bad magic, length or checksum")
    try:
        (n,) = struct.unpack_from(">H", body, 8)
        priv = body[10 : 10 + n]
        (m,) = struct.unpack_from(">H", body, 10 + n)
        pub = body[12 + n : 12 + n + m]
        pk = body[12 + n + m :]
    except struct.error:
        raise corrupt("truncated") from None
    if len(priv) != n or len(pub) != m or len(pk) != 48:
        raise corrupt("inconsistent lengths")
    t = load_tss()
    T = t.types
    try:
        private, _ = T.TPM2B_PRIVATE.unmarshal(priv)
        public, _ = T.TPM2B_PUBLIC.unmarshal(pub)
    except Exception as exc:  # unmarshal errors of several types
        raise corrupt(f"cannot unmarshal the TPM blob: {exc}") from None
    ectx = connect(t, tcti)
    try:
        parent = _primary(t, ectx, tcti)
        try:
            handle = ectx.load(parent, private, public)
        except t.TSS2_Exception as exc:
            raise _classify(
                exc,
                tcti,
                "the TPM refused the sealed BLS key",
                "this is a different TPM, or it was cleared: rotate to a new BLS key",
            ) from None
        finally:
            ectx.flush_context(parent)
        try:
            raw = bytes(ectx.unseal(handle))
        finally:
            ectx.flush_context(handle)
    finally:
        ectx.close()
    secret = BLSSecretKey(raw)
    if secret.public_key.raw != pk:
        raise corrupt("the unsealed secret does not match its public key")
    return secret


# -- create / rotate / open ----------------------------------------------------------------------


def create_bls_key(
    state_dir: str | os.PathLike[str],
    signer: Signer,
    *,
    ledger: Recorder | None = None,
    passphrase: bytes | str | None = None,
    tcti: str | None = None,
    machine_id_path: str | os.PathLike[str] | None = None,
    now: float | None = None,
) -> BLSKey:
    """Create the agent's first BLS key, or rotate to a new one (serial + 1).

    ``signer`` is the unlocked identity key (it signs the certificate). With ``ledger`` the
    certificate is recorded as ``bls.key`` before the previous secret is deleted.
    """
    state = Path(state_dir)
    identity = load_identity(state)
    if signer.public_key != identity.public_key:
        raise KeystoreCorruptError("the signer is not this state directory's identity key")
    d = ensure_private_dir(bls_dir(state))
    previous = current_serial(state)
    serial = max([previous, *_serials(d)]) + 1  # never reuse a serial, even of a half-written key
    secret = BLSSecretKey.generate()
    if identity.backend == "tpm":
        blob, name = _seal_tpm(secret, _tcti(identity, tcti)), f"key-{serial}.tpm"
    else:
        key_secret, kdf = _file_secret(state, identity, passphrase, machine_id_path)
        blob, name = _seal_file(secret, key_secret, kdf), f"key-{serial}.enc"
    cert_bytes = issue_certificate(signer, secret, serial=serial, now=time.time() if now is None else now)
    cert = verify_certificate(cert_bytes, agent=identity.did)
    atomic_write(d / name, blob)
    atomic_write(d / f"cert-{serial}.bin", cert_bytes)
    if ledger is not None:
        ledger.append(
            RECORD_KIND,
            {
                "serial": serial,
                "pk": secret.public_key.raw.hex(),
                "cert": cert_bytes,
                "digest": cert.digest,
                "replaces": previous or None,
            },
        )
    for old, kinds in _serials(d).items():
        if old < serial:
            for kind in kinds & {"key.enc", "key.tpm"}:  # the rotated-away secret; its certificate stays
                stem, ext = kind.split(".")
                (d / f"{stem}-{old}.{ext}").unlink(missing_ok=True)
    fsync_dir(d)
    return BLSKey(secret, cert)


def _tcti(identity: Identity, tcti: str | None) -> str:
    from .tpm import resolve_tcti

    return resolve_tcti(tcti or os.environ.get("KESTREL_TCTI") or identity.tcti)


def open_bls_key(
    state_dir: str | os.PathLike[str],
    *,
    passphrase: bytes | str | None = None,
    tcti: str | None = None,
    machine_id_path: str | os.PathLike[str] | None = None,
) -> BLSKey | None:
    """Unlock the current BLS key (None if the agent has none)."""
    state = Path(state_dir)
    serial = current_serial(state)
    if serial == 0:
        return None
    identity = load_identity(state)
    d = bls_dir(state)
    cert = verify_certificate(read_private_file(d / f"cert-{serial}.bin", what="BLS certificate"), agent=identity.did)
    if cert.serial != serial:
        raise KeystoreCorruptError(f"{d}/cert-{serial}.bin holds serial {cert.serial}")
    if identity.backend == "tpm":
        path = d / f"key-{serial}.tpm"
        secret = _unseal_tpm(read_private_file(path, what="sealed BLS key"), _tcti(identity, tcti), path=path)
    else:
        path = d / f"key-{serial}.enc"
        key_secret, _ = _file_secret(state, identity, passphrase, machine_id_path)
        secret = _open_file(read_private_file(path, what="BLS keystore"), key_secret, path=path)
    if secret.public_key != cert.public_key:
        raise KeystoreCorruptError(f"the BLS key in {path} is not the one its certificate names")
    return BLSKey(secret, cert)
