"""Encrypted identity backups for file keystores (format in docs/identity.md).

A backup is an envelope with magic ``KSTRLBAK`` whose key is re-encrypted under
a separate backup passphrase (always Argon2id, never machine-bound, so it opens
on new hardware) and whose authenticated metadata is the identity.json
document. Restoring installs the same key, so the AgentID stays the same.
TPM identities cannot be backed up: their key never leaves the TPM.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import TransportError, UsageError
from . import envelope as env_mod
from .envelope import BACKUP_MAGIC, KdfParams
from .errors import KeystoreCorruptError, NotExportableError
from .keys import SoftwareSigner
from .record import Identity, encode_identity, parse_identity
from .secrets import create_private_file
from .store import create_identity_with_signer, load_identity, open_file_signer

__all__ = [
    "encode_backup",
    "decode_backup",
    "backup_identity",
    "restore_identity",
    "read_backup",
    "install_backup",
    "not_exportable_error",
]

_MAX_BACKUP = 128 * 1024


def encode_backup(
    identity: Identity, signer: SoftwareSigner, backup_passphrase: bytes, *, kdf: KdfParams | None = None
) -> bytes:
    """Pure: the backup file bytes."""
    kdf = kdf or KdfParams.argon2id()
    if kdf.kdf is env_mod.Kdf.MACHINE:
        raise UsageError(
            "a backup must be passphrase-protected, not machine-bound",
            hint="give a backup passphrase (KdfParams.argon2id())",
        )
    return env_mod.seal(signer, backup_passphrase, magic=BACKUP_MAGIC, kdf=kdf, meta=encode_identity(identity))


def decode_backup(data: bytes, backup_passphrase: bytes) -> tuple[Identity, SoftwareSigner]:
    """Pure: parse, check and decrypt a backup; raise KeystoreCorruptError / WrongPassphraseError."""
    envelope = env_mod.parse_envelope(data, magic=BACKUP_MAGIC, what="backup")
    identity = parse_identity(envelope.meta, source="backup metadata")
    if identity.public_key != envelope.public_key or identity.backend != "file":
        raise KeystoreCorruptError("backup metadata does not match the key it holds")
    return identity, env_mod.open_envelope(
        envelope,
        backup_passphrase,
        what="backup",
        hint="check --backup-passphrase-file / KESTREL_BACKUP_PASSPHRASE; the backup itself is intact",
    )


def not_exportable_error(identity: Identity) -> NotExportableError:
    return NotExportableError(
        f"{identity.did} lives in a TPM; its private key cannot be exported or backed up",
        hint="this is by design: a TPM identity is tied to its board. Back up the state directory "
        "for the ledger; a replacement board gets a new identity",
    )


def backup_identity(
    state_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    backup_passphrase: bytes | Callable[[], bytes],
    passphrase: bytes | str | None = None,
    kdf: KdfParams | None = None,
    machine_id_path: str | os.PathLike[str] | None = None,
) -> Identity:
    """Write an encrypted backup of a file identity to ``dest`` (0600; never overwrites).

    ``backup_passphrase`` may be a callable, asked only once the keystore is unlocked.
    """
    identity = load_identity(state_dir)
    if identity.backend == "tpm":
        raise not_exportable_error(identity)
    signer = open_file_signer(state_dir, identity, passphrase=passphrase, machine_id_path=machine_id_path)
    if callable(backup_passphrase):
        backup_passphrase = backup_passphrase()
    create_private_file(Path(dest), encode_backup(identity, signer, backup_passphrase, kdf=kdf))
    return identity


def restore_identity(
    state_dir: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    backup_passphrase: bytes,
    passphrase: bytes | str | None = None,
    machine_bound: bool = False,
    kdf: KdfParams | None = None,
    machine_id_path: str | os.PathLike[str] | None = None,
) -> Identity:
    """Install the identity held in a backup (same AgentID); refuse if one exists."""
    identity, signer = read_backup(source, backup_passphrase=backup_passphrase)
    return install_backup(
        state_dir,
        identity,
        signer,
        passphrase=passphrase,
        machine_bound=machine_bound,
        kdf=kdf,
        machine_id_path=machine_id_path,
    )


def read_backup(source: str | os.PathLike[str], *, backup_passphrase: bytes) -> tuple[Identity, SoftwareSigner]:
    """Read and decrypt a backup file."""
    path = Path(source)
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_BACKUP + 1)
    except OSError as exc:
        raise TransportError(f"cannot read backup {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_BACKUP:
        raise KeystoreCorruptError(f"backup {path} is larger than {_MAX_BACKUP} bytes; not a backup")
    return decode_backup(data, backup_passphrase)


def install_backup(
    state_dir: str | os.PathLike[str],
    identity: Identity,
    signer: SoftwareSigner,
    *,
    passphrase: bytes | str | None = None,
    machine_bound: bool = False,
    kdf: KdfParams | None = None,
    machine_id_path: str | os.PathLike[str] | None = None,
) -> Identity:
    """Install a decrypted backup under a new passphrase or machine binding."""
    restored, _ = create_identity_with_signer(
        state_dir,
        name=identity.name,
        algorithm=identity.algorithm,
        passphrase=passphrase,
        machine_bound=machine_bound,
        kdf=kdf,
        machine_id_path=machine_id_path,
        signer=signer,
        created_at=identity.created_at,
    )
    return restored
