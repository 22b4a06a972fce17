"""Agent identity: the AgentID (a did:key) and the keystores that hold its private key.

Contract in docs/architecture.md ("Identity"); file formats in docs/identity.md::

    from kestrel.identity import create_identity, load_identity, open_signer
    ident = create_identity(state_dir, name="porch-bot", passphrase=b"...")
    signer = open_signer(state_dir, passphrase=b"...")
    ident.public_key.verify(signer.sign(b"msg"), b"msg")

The TPM backend (``kestrel.identity.tpm``) imports tpm2_pytss only when used.
"""

from __future__ import annotations

from .._internal.lazy import lazy_exports
from .errors import (
    IdentityCorruptError,
    IdentityExistsError,
    IdentityNotFoundError,
    KeystoreCorruptError,
    MachineBindingError,
    NotExportableError,
    PassphraseRequiredError,
    TPMKeyError,
    TPMUnavailableError,
    WrongPassphraseError,
)
from .keys import Algorithm, KeyFormatError, PublicKey, SignatureError, Signer, SoftwareSigner
from .record import Identity
from .store import create_identity, create_identity_with_signer, load_identity, open_signer

__all__ = [
    "Algorithm",
    "Identity",
    "IdentityCorruptError",
    "IdentityExistsError",
    "IdentityNotFoundError",
    "Kdf",
    "KdfParams",
    "KeyFormatError",
    "KeystoreCorruptError",
    "MachineBindingError",
    "NotExportableError",
    "PassphraseRequiredError",
    "PublicKey",
    "SignatureError",
    "Signer",
    "SoftwareSigner",
    "TPMKeyError",
    "TPMUnavailableError",
    "WrongPassphraseError",
    "backup_identity",
    "create_identity",
    "create_identity_with_signer",
    "decode_backup",
    "encode_backup",
    "load_identity",
    "open_signer",
    "restore_identity",
]


_LAZY = {  # imported on first use: the daemon opens a keystore but never backs one up
    "backup_identity": "backup",
    "decode_backup": "backup",
    "encode_backup": "backup",
    "restore_identity": "backup",
    "Kdf": "envelope",
    "KdfParams": "envelope",
    "TPMSigner": "tpm",  # without importing tpm2_pytss up front
}


__getattr__ = lazy_exports(__name__, globals(), _LAZY)
