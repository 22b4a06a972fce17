"""Owner signing keys (shell): created on the owner's machine, encrypted at rest.

The file is the identity package's key envelope (docs/identity.md) with magic
``KSTRLOWN``: the private key sealed with AES-256-GCM under a key derived from
the owner's passphrase with Argon2id, mode 0600 in a 0700 directory. The owner
public key string is its ``did:key``. Owner keys are never agent keys.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._internal.fsutil import atomic_write, check_private, ensure_private_dir, read_bytes
from ..errors import DataError, UsageError
from ..identity.keys import Algorithm, SoftwareSigner

__all__ = ["default_owner_key", "create_owner_key", "load_owner_signer", "owner_passphrase"]

PASSPHRASE_ENV = "KESTREL_OWNER_PASSPHRASE"
OWNER_MAGIC = b"KSTRLOWN"


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
    """Generate an Ed25519 owner key, seal it under ``passphrase`` (Argon2id + AES-256-GCM)."""
    from ..identity.envelope import KdfParams, seal

    path = Path(path)
    if path.exists():
        raise UsageError(f"an owner key already exists at {path}", hint="use --key to choose another file")
    ensure_private_dir(path.parent)
    signer = SoftwareSigner.generate(Algorithm.ED25519)
    atomic_write(path, seal(signer, passphrase, magic=OWNER_MAGIC, kdf=KdfParams.argon2id()), mode=0o600)
    atomic_write(path.with_name(path.name + ".pub"), (signer.public_key.did + "\n").encode(), mode=0o644)
    return signer


def load_owner_signer(path: str | os.PathLike[str], passphrase: bytes) -> SoftwareSigner:
    from ..identity.envelope import open_envelope, parse_envelope
    from ..identity.errors import WrongPassphraseError

    path = Path(path)
    data = read_bytes(path, what="owner key", max_size=16 * 1024)
    check_private(path)
    env = parse_envelope(data, magic=OWNER_MAGIC, what=f"owner key {path}")
    try:
        return open_envelope(
            env, passphrase, what="owner key", hint="check --passphrase-file / KESTREL_OWNER_PASSPHRASE"
        )
    except WrongPassphraseError:
        raise DataError(
            f"cannot unlock the owner key {path}: wrong passphrase",
            hint="check --passphrase-file / KESTREL_OWNER_PASSPHRASE; the file is intact",
        ) from None
