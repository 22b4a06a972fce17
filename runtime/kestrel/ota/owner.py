"""Owner signing keys (shell): created on the owner's machine, encrypted at rest.

The file is a PKCS#8 PEM private key encrypted with the owner's passphrase
(``BestAvailableEncryption``), mode 0600 in a 0700 directory; the public key
string is its ``did:key``. Owner keys are never agent keys.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .._internal.fsutil import atomic_write, check_private, ensure_private_dir, read_bytes
from ..errors import DataError, UsageError
from ..identity.keys import SoftwareSigner

__all__ = ["default_owner_key", "create_owner_key", "load_owner_signer", "owner_passphrase"]

PASSPHRASE_ENV = "KESTREL_OWNER_PASSPHRASE"


def default_owner_key() -> Path:
    env = os.environ.get("KESTREL_OWNER_KEY")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "kestrel" / "owner" / "owner.key"


def owner_passphrase(passphrase_file: str | None, *, confirm: bool = False) -> bytes:
    """--passphrase-file, then $KESTREL_OWNER_PASSPHRASE, then an interactive prompt."""
    from ..identity.secrets import read_passphrase_file, resolve_passphrase

    explicit = read_passphrase_file(passphrase_file) if passphrase_file else None
    return resolve_passphrase(explicit, what="owner key", confirm=confirm, env=PASSPHRASE_ENV)


def create_owner_key(path: str | os.PathLike[str], passphrase: bytes) -> SoftwareSigner:
    path = Path(path)
    if path.exists():
        raise UsageError(f"an owner key already exists at {path}", hint="use --key to choose another file")
    ensure_private_dir(path.parent)
    signer = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
    pem = signer.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    atomic_write(path, pem, mode=0o600)
    atomic_write(path.with_name(path.name + ".pub"), (signer.public_key.did + "\n").encode(), mode=0o644)
    return signer


def load_owner_signer(path: str | os.PathLike[str], passphrase: bytes) -> SoftwareSigner:
    path = Path(path)
    data = read_bytes(path, what="owner key", max_size=16 * 1024)
    check_private(path)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError):
        raise DataError(f"cannot unlock the owner key {path}",
                        hint="wrong passphrase, or the file is not a Kestrel owner key") from None
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise DataError(f"{path} holds an unsupported key type")
    return SoftwareSigner(key)
