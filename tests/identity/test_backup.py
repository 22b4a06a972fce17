"""Encrypted backups of file keystores: restore on new hardware keeps the AgentID."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kestrel.errors import TransportError
from kestrel.identity import (
    Algorithm,
    IdentityExistsError,
    KeystoreCorruptError,
    PublicKey,
    WrongPassphraseError,
    backup_identity,
    load_identity,
    open_signer,
    restore_identity,
)

from .conftest import FAST_KDF, PASS

BACKUP_PASS = b"backup passphrase"


@pytest.mark.parametrize("alg", list(Algorithm))
@pytest.mark.parametrize("source_machine_bound", [False, True])
def test_backup_restore_keeps_the_agent_id(
    state_dir: Path, make_identity, tmp_path: Path, alg, source_machine_bound: bool
) -> None:
    ident = make_identity(algorithm=alg, machine_bound=source_machine_bound)
    dest = tmp_path / "agent.kbak"
    backup_identity(state_dir, dest, backup_passphrase=BACKUP_PASS, passphrase=PASS, kdf=FAST_KDF)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert dest.read_bytes()[:8] == b"KSTRLBAK"

    new_board = tmp_path / "new-board"  # "new hardware": a different machine id, new passphrase
    mid = tmp_path / "new-machine-id"
    mid.write_text("99999999999999999999999999999999\n")
    restored = restore_identity(new_board, dest, backup_passphrase=BACKUP_PASS, machine_bound=True, machine_id_path=mid)
    assert restored.did == ident.did and restored.name == ident.name
    assert restored.created_at == ident.created_at and restored.protection == "machine-bound"
    signer = open_signer(new_board, machine_id_path=mid)
    PublicKey.from_did(ident.did).verify(signer.sign(b"after restore"), b"after restore")


def test_restore_under_a_new_passphrase(state_dir: Path, make_identity, tmp_path: Path) -> None:
    ident = make_identity()
    dest = tmp_path / "b"
    backup_identity(state_dir, dest, backup_passphrase=BACKUP_PASS, passphrase=PASS, kdf=FAST_KDF)
    restored = restore_identity(tmp_path / "r", dest, backup_passphrase=BACKUP_PASS, passphrase=b"new", kdf=FAST_KDF)
    assert restored.did == ident.did and restored.protection == "passphrase"
    with pytest.raises(WrongPassphraseError):
        open_signer(tmp_path / "r", passphrase=PASS)
    assert open_signer(tmp_path / "r", passphrase=b"new").public_key == ident.public_key


def test_restore_refuses_to_overwrite(state_dir: Path, make_identity, tmp_path: Path) -> None:
    make_identity()
    existing = make_identity(state=tmp_path / "other")
    dest = tmp_path / "b"
    backup_identity(state_dir, dest, backup_passphrase=BACKUP_PASS, passphrase=PASS, kdf=FAST_KDF)
    with pytest.raises(IdentityExistsError):
        restore_identity(tmp_path / "other", dest, backup_passphrase=BACKUP_PASS, passphrase=b"p", kdf=FAST_KDF)
    assert load_identity(tmp_path / "other") == existing


def test_backup_never_overwrites_a_file(state_dir: Path, make_identity, tmp_path: Path) -> None:
    make_identity()
    dest = tmp_path / "b"
    dest.write_bytes(b"precious")
    with pytest.raises(TransportError, match="already exists"):
        backup_identity(state_dir, dest, backup_passphrase=BACKUP_PASS, passphrase=PASS, kdf=FAST_KDF)
    assert dest.read_bytes() == b"precious"


def test_wrong_backup_passphrase_and_corrupt_backup(state_dir: Path, make_identity, tmp_path: Path) -> None:
    make_identity()
    dest = tmp_path / "b"
    backup_identity(state_dir, dest, backup_passphrase=BACKUP_PASS, passphrase=PASS, kdf=FAST_KDF)
    with pytest.raises(WrongPassphraseError, match="backup") as info:
        restore_identity(tmp_path / "r1", dest, backup_passphrase=b"nope", passphrase=b"p")
    assert "BACKUP_PASSPHRASE" in info.value.hint
    data = bytearray(dest.read_bytes())
    data[100] ^= 4
    dest.write_bytes(bytes(data))
    with pytest.raises(KeystoreCorruptError, match="backup is damaged"):
        restore_identity(tmp_path / "r2", dest, backup_passphrase=BACKUP_PASS, passphrase=b"p")
    assert not (tmp_path / "r1" / "identity").exists() and not (tmp_path / "r2" / "identity").exists()


def test_a_keystore_is_not_a_backup(state_dir: Path, make_identity, tmp_path: Path) -> None:
    make_identity()
    with pytest.raises(KeystoreCorruptError, match="keystore file, not a backup"):
        restore_identity(tmp_path / "r", state_dir / "identity" / "key.enc", backup_passphrase=PASS, passphrase=b"p")


def test_backup_needs_the_keystore_passphrase(state_dir: Path, make_identity, tmp_path: Path) -> None:
    make_identity()
    with pytest.raises(WrongPassphraseError):
        backup_identity(state_dir, tmp_path / "b", backup_passphrase=BACKUP_PASS, passphrase=b"bad")
    assert not (tmp_path / "b").exists()


def test_a_machine_bound_backup_is_a_usage_error():
    """Public functions raise the project's errors (exit codes, hints), not bare ValueError."""
    from kestrel.errors import UsageError
    from kestrel.identity.backup import encode_backup
    from kestrel.identity.envelope import KdfParams
    from kestrel.identity.keys import SoftwareSigner

    signer = SoftwareSigner.generate()
    with pytest.raises(UsageError, match="passphrase-protected"):
        encode_backup(None, signer, b"pw", kdf=KdfParams.machine())  # type: ignore[arg-type]
