"""The agent's BLS key at rest: sealed like the identity key (file keystore or TPM), certified by
the identity key, rotated with a ledger record, and the rotated-away secret gone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kestrel.identity import open_signer
from kestrel.identity.errors import KeystoreCorruptError, WrongPassphraseError
from kestrel.identity.keys import Algorithm
from kestrel.identity.store import create_identity

from .conftest import FAST_KDF, PASS

bls = pytest.importorskip("kestrel.identity.bls")
from kestrel.identity.bls_store import bls_dir, create_bls_key, current_serial, open_bls_key  # noqa: E402


class _Records:
    """A ledger stand-in that only collects appends (the ledger itself is tested elsewhere)."""

    def __init__(self) -> None:
        self.appended: list[tuple[str, dict]] = []

    def append(self, kind: str, body: dict) -> None:
        self.appended.append((kind, body))


def _no_plaintext(d: Path, secret: bytes) -> None:
    files = list(d.iterdir())
    assert files, d
    for p in files:
        assert secret not in p.read_bytes(), p
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_file_keystore_create_open_rotate(state_dir: Path) -> None:
    ident = create_identity(state_dir, name="a", passphrase=PASS, kdf=FAST_KDF)
    signer = open_signer(state_dir, passphrase=PASS)
    assert open_bls_key(state_dir, passphrase=PASS) is None and current_serial(state_dir) == 0
    log = _Records()
    first = create_bls_key(state_dir, signer, ledger=log, passphrase=PASS)
    assert (first.serial, first.agent) == (1, ident.did)
    _no_plaintext(bls_dir(state_dir), first.secret.secret_bytes())
    again = open_bls_key(state_dir, passphrase=PASS)
    assert again is not None and again.secret.public_key == first.secret.public_key
    assert again.certificate.data == first.certificate.data

    second = create_bls_key(state_dir, signer, ledger=log, passphrase=PASS)
    assert second.serial == 2 and second.secret.public_key != first.secret.public_key
    assert sorted(p.name for p in bls_dir(state_dir).iterdir()) == ["cert-1.bin", "cert-2.bin", "key-2.enc"]
    reopened = open_bls_key(state_dir, passphrase=PASS)
    assert reopened is not None and reopened.serial == 2
    kinds = [(k, b["serial"], b["replaces"]) for k, b in log.appended]
    assert kinds == [("bls.key", 1, None), ("bls.key", 2, 1)]
    cert = bls.verify_certificate(log.appended[1][1]["cert"], agent=ident.did)  # the record alone suffices
    assert cert.public_key == second.secret.public_key
    assert open_signer(state_dir, passphrase=PASS).public_key.did == ident.did  # the AgentID is unchanged


def test_wrong_passphrase_and_damage_are_clear_errors(state_dir: Path) -> None:
    create_identity(state_dir, name="a", passphrase=PASS, kdf=FAST_KDF)
    create_bls_key(state_dir, open_signer(state_dir, passphrase=PASS), passphrase=PASS)
    with pytest.raises(WrongPassphraseError):
        open_bls_key(state_dir, passphrase=b"nope")
    path = bls_dir(state_dir) / "key-1.enc"
    good = path.read_bytes()
    for bad in (good[:-1], good[:40] + bytes([good[40] ^ 1]) + good[41:], b""):
        path.write_bytes(bad)
        with pytest.raises(KeystoreCorruptError):
            open_bls_key(state_dir, passphrase=PASS)
    path.write_bytes(good)
    cert = bls_dir(state_dir) / "cert-1.bin"
    cert.write_bytes(cert.read_bytes()[:-3])
    with pytest.raises(bls.BLSCertificateError):
        open_bls_key(state_dir, passphrase=PASS)


def test_machine_bound_identity_needs_no_passphrase(state_dir: Path, tmp_path: Path) -> None:
    mid = tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    create_identity(state_dir, name="a", machine_bound=True, machine_id_path=mid)
    signer = open_signer(state_dir, machine_id_path=mid)
    made = create_bls_key(state_dir, signer, machine_id_path=mid)
    opened = open_bls_key(state_dir, machine_id_path=mid)
    assert opened is not None and opened.secret.public_key == made.secret.public_key
    mid.write_text("another machine\n")
    from kestrel.identity.errors import MachineBindingError

    with pytest.raises(MachineBindingError):
        open_bls_key(state_dir, machine_id_path=mid)


@pytest.mark.swtpm
def test_tpm_identity_seals_the_bls_secret_in_the_tpm(state_dir: Path, swtpm) -> None:
    ident = create_identity(state_dir, name="t", backend="tpm", algorithm=Algorithm.P256, tcti=swtpm.tcti)
    with open_signer(state_dir) as signer:
        made = create_bls_key(state_dir, signer)
        assert sorted(p.name for p in bls_dir(state_dir).iterdir()) == ["cert-1.bin", "key-1.tpm"]
        _no_plaintext(bls_dir(state_dir), made.secret.secret_bytes())
        opened = open_bls_key(state_dir)
        assert opened is not None and opened.secret.public_key == made.secret.public_key
        assert opened.agent == ident.did
        msg = b"quorum"
        opened.certificate.public_key.verify(opened.secret.sign(msg), msg)
        rotated = create_bls_key(state_dir, signer)
        assert rotated.serial == 2 and not (bls_dir(state_dir) / "key-1.tpm").exists()


@pytest.mark.swtpm
def test_sealed_bls_key_does_not_open_on_another_tpm(state_dir: Path, tmp_path: Path, swtpm) -> None:
    from tests.fixtures.swtpm import start_swtpm

    create_identity(state_dir, name="t", backend="tpm", algorithm=Algorithm.P256, tcti=swtpm.tcti)
    with open_signer(state_dir) as signer:
        create_bls_key(state_dir, signer)
    with start_swtpm(tmp_path / "other-tpm") as other:
        from kestrel.identity.errors import TPMKeyError

        with pytest.raises(TPMKeyError):
            open_bls_key(state_dir, tcti=other.tcti)
    assert os.path.exists(bls_dir(state_dir) / "key-1.tpm")  # nothing stored is lost
