"""TPM 2.0 keystore shell (tpm2-pytss): a P-256 signing key that never leaves the TPM.

The key is created under the owner hierarchy's ECC P-256 storage root key
(the TCG "SRK" template, recreated deterministically by ``CreatePrimary`` on
every connection, so nothing is made persistent in TPM NV memory). Only the
TPM-wrapped blob is stored, as a ``TSS2 PRIVATE KEY`` PEM (the format of
tpm2-tss-engine / tpm2-openssl). See docs/identity.md for the templates.

:class:`TPMSigner` keeps one ESYS context with the key loaded, serialises
every command with a lock, and reconnects once if the connection drops.
tpm2_pytss is imported only here, inside functions.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

from .errors import TPMKeyError, TPMUnavailableError
from .keys import PublicKey

__all__ = ["DEFAULT_TCTI", "create_tpm_key", "TPMSigner", "resolve_tcti", "load_tss", "connect"]

DEFAULT_TCTI = "device:/dev/tpmrm0"


def resolve_tcti(tcti: str | None) -> str:
    """Explicit TCTI, else ``KESTREL_TCTI``, else the kernel resource manager device."""
    return tcti or os.environ.get("KESTREL_TCTI") or DEFAULT_TCTI


def load_tss() -> Any:
    """Import tpm2_pytss (quietly), or raise TPMUnavailableError with an install hint."""
    os.environ.setdefault("TSS2_LOG", "all+NONE")  # tpm2-tss logs to stderr otherwise
    try:
        import tpm2_pytss
    except ImportError as exc:
        raise TPMUnavailableError(
            f"TPM support is not installed ({exc})",
            hint="install it with: pip install 'kestrel-sovereign[tpm]' (needs libtss2-dev)",
        ) from None
    return tpm2_pytss


def _is_tpm_layer(rc: int) -> bool:
    return rc & (0xFF << 16) == 0


def _classify(exc: Exception, tcti: str, refused: str, hint: str) -> Exception:
    """A TPM response code means the TPM refused (TPMKeyError); anything else is transport."""
    if _is_tpm_layer(int(getattr(exc, "rc", 0xFFFFFFFF))):
        return TPMKeyError(f"{refused}: {exc}", hint=hint)
    return _unavailable(tcti, exc)


def _unavailable(tcti: str, exc: Exception) -> TPMUnavailableError:
    return TPMUnavailableError(
        f"cannot reach the TPM through TCTI {tcti!r}: {exc}",
        hint="check that the TPM is present (/dev/tpmrm0) and accessible (group 'tss'), or pass "
        "--tcti (e.g. swtpm:host=127.0.0.1,port=2321); boards without a TPM use the file keystore (drop --tpm). "
        "To try --tpm on a machine without one, start a software TPM: README.md, 'Coming from the announcement'",
    )


def _templates(t: Any) -> tuple[Any, Any]:
    """(primary SRK template, signing-key template), as in docs/identity.md."""
    T, C = t.types, t.constants
    common = (
        C.TPMA_OBJECT.FIXEDTPM
        | C.TPMA_OBJECT.FIXEDPARENT
        | C.TPMA_OBJECT.SENSITIVEDATAORIGIN
        | C.TPMA_OBJECT.USERWITHAUTH
        | C.TPMA_OBJECT.NODA
    )
    primary = T.TPMT_PUBLIC(
        type=C.TPM2_ALG.ECC,
        nameAlg=C.TPM2_ALG.SHA256,
        objectAttributes=common | C.TPMA_OBJECT.RESTRICTED | C.TPMA_OBJECT.DECRYPT,
        authPolicy=b"",
        parameters=T.TPMU_PUBLIC_PARMS(
            eccDetail=T.TPMS_ECC_PARMS(
                symmetric=T.TPMT_SYM_DEF_OBJECT(
                    algorithm=C.TPM2_ALG.AES,
                    keyBits=T.TPMU_SYM_KEY_BITS(aes=128),
                    mode=T.TPMU_SYM_MODE(aes=C.TPM2_ALG.CFB),
                ),
                scheme=T.TPMT_ECC_SCHEME(scheme=C.TPM2_ALG.NULL),
                curveID=C.TPM2_ECC.NIST_P256,
                kdf=T.TPMT_KDF_SCHEME(scheme=C.TPM2_ALG.NULL),
            )
        ),
    )
    signing = T.TPMT_PUBLIC(
        type=C.TPM2_ALG.ECC,
        nameAlg=C.TPM2_ALG.SHA256,
        objectAttributes=common | C.TPMA_OBJECT.SIGN_ENCRYPT,
        authPolicy=b"",
        parameters=T.TPMU_PUBLIC_PARMS(
            eccDetail=T.TPMS_ECC_PARMS(
                symmetric=T.TPMT_SYM_DEF_OBJECT(algorithm=C.TPM2_ALG.NULL),
                scheme=T.TPMT_ECC_SCHEME(
                    scheme=C.TPM2_ALG.ECDSA,
                    details=T.TPMU_ASYM_SCHEME(ecdsa=T.TPMS_SCHEME_HASH(hashAlg=C.TPM2_ALG.SHA256)),
                ),
                curveID=C.TPM2_ECC.NIST_P256,
                kdf=T.TPMT_KDF_SCHEME(scheme=C.TPM2_ALG.NULL),
            )
        ),
    )
    return primary, signing


def _public_key_of(tpm2b_public: Any) -> PublicKey:
    ecc = tpm2b_public.publicArea.unique.ecc
    return PublicKey.from_p256_point(int.from_bytes(bytes(ecc.x), "big"), int.from_bytes(bytes(ecc.y), "big"))


def connect(t: Any, tcti: str) -> Any:
    """An ESAPI context for ``tcti``, or TPMUnavailableError."""
    try:
        return t.ESAPI(tcti)
    except (t.TSS2_Exception, RuntimeError) as exc:
        raise _unavailable(tcti, exc) from None


def _primary(t: Any, ectx: Any, tcti: str) -> Any:
    primary, _ = _templates(t)
    try:
        handle, *_ = ectx.create_primary(
            t.types.TPM2B_SENSITIVE_CREATE(),
            t.types.TPM2B_PUBLIC(publicArea=primary),
            primary_handle=t.constants.ESYS_TR.RH_OWNER,
        )
    except t.TSS2_Exception as exc:
        raise _classify(
            exc,
            tcti,
            "the TPM refused to create the storage root key",
            "the owner hierarchy may have a password or be disabled; Kestrel needs an empty owner authorization",
        ) from None
    return handle


def create_tpm_key(tcti: str) -> tuple[bytes, PublicKey]:
    """Create a P-256 signing key in the TPM; return (TSS2 PEM blob, public key)."""
    t = load_tss()
    from tpm2_pytss.tsskey import TSSPrivKey

    _, signing = _templates(t)
    ectx = connect(t, tcti)
    try:
        parent = _primary(t, ectx, tcti)
        try:
            private, public, *_ = ectx.create(
                parent, t.types.TPM2B_SENSITIVE_CREATE(), t.types.TPM2B_PUBLIC(publicArea=signing)
            )
        except t.TSS2_Exception as exc:
            raise _unavailable(tcti, exc) from None
        finally:
            ectx.flush_context(parent)
    finally:
        ectx.close()
    pem = TSSPrivKey(private, public, True, t.constants.TPM2_RH.OWNER).to_pem()
    return pem, _public_key_of(public)


class TPMSigner:
    """Signs with a TPM-resident P-256 key: SHA-256 digest, TPM2_Sign, raw ``r || s``.

    Thread-safe. Keeps the connection and the loaded key between calls.
    """

    def __init__(self, pem: bytes, *, tcti: str, expected: PublicKey | None = None) -> None:
        t = load_tss()
        from tpm2_pytss.tsskey import TSSPrivKey

        try:
            self._key = TSSPrivKey.from_pem(pem)
            public = _public_key_of(self._key.public)
        except Exception as exc:  # ASN.1 / base64 / unmarshal errors of many types
            raise TPMKeyError(
                f"the TPM key blob is damaged: {exc}",
                hint="a TPM key cannot be restored from a backup; a new identity is needed",
            ) from None
        if expected is not None and public != expected:
            raise TPMKeyError("the TPM key blob does not belong to this identity (public key differs)")
        self._t = t
        self._tcti = tcti
        self._public = public
        self._lock = threading.Lock()
        self._ectx: Any = None
        self._handle: Any = None
        self._ledger_secret: bytes | None = None
        with self._lock:
            self._open()

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def tcti(self) -> str:
        return self._tcti

    def _open(self) -> None:
        t = self._t
        ectx = connect(t, self._tcti)
        try:
            parent = _primary(t, ectx, self._tcti)
            try:
                handle = ectx.load(parent, self._key.private, self._key.public)
            finally:
                ectx.flush_context(parent)
        except t.TSS2_Exception as exc:
            ectx.close()
            raise _classify(
                exc,
                self._tcti,
                "the TPM refused this identity's key",
                "this is a different TPM, or the TPM was cleared since the identity was "
                "created; a TPM identity cannot move to another TPM",
            ) from None
        except BaseException:
            ectx.close()
            raise
        self._ectx, self._handle = ectx, handle

    def _drop(self) -> None:
        ectx, handle = self._ectx, self._handle
        self._ectx = self._handle = None
        if ectx is None:
            return
        try:
            ectx.flush_context(handle)
        except Exception:
            pass  # the connection is gone; the resource manager or a TPM restart frees it
        try:
            ectx.close()
        except Exception:
            pass

    def sign(self, message: bytes) -> bytes:
        t = self._t
        T, C = t.types, t.constants
        digest = hashlib.sha256(message).digest()
        scheme = T.TPMT_SIG_SCHEME(
            scheme=C.TPM2_ALG.ECDSA, details=T.TPMU_SIG_SCHEME(ecdsa=T.TPMS_SCHEME_HASH(hashAlg=C.TPM2_ALG.SHA256))
        )
        with self._lock:
            for attempt in (0, 1):
                if self._ectx is None:
                    self._open()
                try:
                    sig = self._ectx.sign(self._handle, digest, scheme)
                    break
                except t.TSS2_Exception as exc:
                    self._drop()  # a dropped link or a restarted TPM: reconnect and reload once
                    if attempt:
                        raise _unavailable(self._tcti, exc) from None
        r = int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big")
        s = int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big")
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def ledger_secret(self) -> bytes:
        """The device secret that seals the ledger's unsigned tail (docs/ledger-format.md, 3.1), computed by
        the TPM: HMAC-SHA256 under a keyed-hash primary key of the owner hierarchy whose template is bound to
        this identity's public key. A primary key is re-derived from the TPM's seed whenever it is
        created, so nothing is stored; only this TPM can compute the secret. Kept in memory once computed."""
        if self._ledger_secret is not None:
            return self._ledger_secret
        t = self._t
        T, C = t.types, t.constants
        template = T.TPMT_PUBLIC(
            type=C.TPM2_ALG.KEYEDHASH,
            nameAlg=C.TPM2_ALG.SHA256,
            objectAttributes=(
                C.TPMA_OBJECT.FIXEDTPM
                | C.TPMA_OBJECT.FIXEDPARENT
                | C.TPMA_OBJECT.SENSITIVEDATAORIGIN
                | C.TPMA_OBJECT.USERWITHAUTH
                | C.TPMA_OBJECT.NODA
                | C.TPMA_OBJECT.SIGN_ENCRYPT
            ),
            authPolicy=b"",
            parameters=T.TPMU_PUBLIC_PARMS(
                keyedHashDetail=T.TPMS_KEYEDHASH_PARMS(
                    scheme=T.TPMT_KEYEDHASH_SCHEME(
                        scheme=C.TPM2_ALG.HMAC,
                        details=T.TPMU_SCHEME_KEYEDHASH(hmac=T.TPMS_SCHEME_HASH(hashAlg=C.TPM2_ALG.SHA256)),
                    )
                )
            ),
            unique=T.TPMU_PUBLIC_ID(keyedHash=hashlib.sha256(self._public.raw).digest()),
        )
        from .keys import LEDGER_SECRET_INFO

        with self._lock:
            for attempt in (0, 1):
                if self._ectx is None:
                    self._open()
                try:
                    handle, *_ = self._ectx.create_primary(
                        T.TPM2B_SENSITIVE_CREATE(),
                        T.TPM2B_PUBLIC(publicArea=template),
                        primary_handle=C.ESYS_TR.RH_OWNER,
                    )
                    try:
                        mac = self._ectx.hmac(handle, LEDGER_SECRET_INFO + self._public.raw, C.TPM2_ALG.SHA256)
                    finally:
                        self._ectx.flush_context(handle)
                    break
                except t.TSS2_Exception as exc:
                    self._drop()
                    if attempt:
                        raise _unavailable(self._tcti, exc) from None
        self._ledger_secret = bytes(mac)
        return self._ledger_secret

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> TPMSigner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TPMSigner({self._public.did}, tcti={self._tcti!r})"
