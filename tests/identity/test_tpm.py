"""TPM keystore against a real TPM 2.0 simulator (swtpm)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrel.errors import UsageError
from kestrel.identity import (
    Algorithm,
    NotExportableError,
    PublicKey,
    TPMKeyError,
    TPMUnavailableError,
    backup_identity,
    create_identity,
    load_identity,
    open_signer,
)
from tests.fixtures.procs import free_port
from tests.fixtures.swtpm import start_swtpm

from .conftest import sign_concurrently

pytestmark = pytest.mark.swtpm


def _create(state_dir: Path, tcti: str):
    return create_identity(state_dir, name="tpm-agent", backend="tpm", algorithm=Algorithm.P256, tcti=tcti)


def test_create_sign_verify_with_public_key_only(state_dir: Path, swtpm) -> None:
    ident = _create(state_dir, swtpm.tcti)
    assert ident.backend == "tpm" and ident.algorithm is Algorithm.P256 and ident.protection == "tpm"
    assert ident.tcti == swtpm.tcti and ident.did.startswith("did:key:zDn")
    files = sorted(p.name for p in (state_dir / "identity").iterdir())
    assert files == ["identity.json", "key.tpm.pem"]
    assert (state_dir / "identity" / "key.tpm.pem").read_bytes().startswith(b"-----BEGIN TSS2 PRIVATE KEY")
    with open_signer(state_dir) as signer:
        for msg in (b"", b"checkpoint", bytes(range(256)) * 40):
            sig = signer.sign(msg)
            assert len(sig) == 64
            PublicKey.from_did(ident.did).verify(sig, msg)


def test_identity_survives_tpm_restart(tmp_path: Path, state_dir: Path) -> None:
    tpm_state = tmp_path / "tpm-nv"
    with start_swtpm(tpm_state) as first:
        ident = _create(state_dir, first.tcti)
        with open_signer(state_dir) as signer:
            ident.public_key.verify(signer.sign(b"before"), b"before")
    with start_swtpm(tpm_state) as second:  # same TPM, new process, new port
        assert load_identity(state_dir).did == ident.did
        with open_signer(state_dir, tcti=second.tcti) as signer:
            assert signer.public_key.did == ident.did
            PublicKey.from_did(ident.did).verify(signer.sign(b"after"), b"after")


def test_signer_reconnects_when_the_tpm_restarts(tmp_path: Path, state_dir: Path) -> None:
    from tests.fixtures.procs import require_binary, running

    tpm_state = tmp_path / "tpm-nv"
    tpm_state.mkdir()
    port = free_port(2)
    argv = [
        require_binary("swtpm"),
        "socket",
        "--tpm2",
        "--server",
        f"type=tcp,port={port},bindaddr=127.0.0.1",
        "--ctrl",
        f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
        "--flags",
        "not-need-init,startup-clear",
        "--tpmstate",
        f"dir={tpm_state}",
    ]
    tcti = f"swtpm:host=127.0.0.1,port={port}"
    with running(argv, port=port):
        ident = _create(state_dir, tcti)
        signer = open_signer(state_dir)
        ident.public_key.verify(signer.sign(b"one"), b"one")
    with pytest.raises(TPMUnavailableError):
        signer.sign(b"while down")
    with running(argv, port=port):  # the TPM comes back: the same signer object works again
        ident.public_key.verify(signer.sign(b"two"), b"two")
        signer.close()


def test_concurrent_signing_is_serialised(state_dir: Path, swtpm) -> None:
    ident = _create(state_dir, swtpm.tcti)
    with open_signer(state_dir) as signer:
        assert sign_concurrently(signer, ident.public_key) == []


def test_unreachable_tpm_is_a_clear_error(state_dir: Path) -> None:
    dead = f"swtpm:host=127.0.0.1,port={free_port(2)}"
    with pytest.raises(TPMUnavailableError, match="cannot reach the TPM") as info:
        _create(state_dir, dead)
    assert "--tcti" in info.value.hint
    assert not (state_dir / "identity").exists()
    with pytest.raises(TPMUnavailableError):
        _create(state_dir, "device:/dev/definitely-no-tpm")


def test_opening_with_the_tpm_gone(state_dir: Path, swtpm) -> None:
    _create(state_dir, swtpm.tcti)
    with pytest.raises(TPMUnavailableError):
        open_signer(state_dir, tcti=f"swtpm:host=127.0.0.1,port={free_port(2)}")


def test_a_different_tpm_refuses_the_key(state_dir: Path, swtpm, tmp_path: Path) -> None:
    _create(state_dir, swtpm.tcti)
    with start_swtpm(tmp_path / "other-tpm") as other:
        with pytest.raises(TPMKeyError, match="different TPM"):
            open_signer(state_dir, tcti=other.tcti)


def test_damaged_blob(state_dir: Path, swtpm) -> None:
    _create(state_dir, swtpm.tcti)
    pem = state_dir / "identity" / "key.tpm.pem"
    pem.write_bytes(pem.read_bytes()[:120] + b"\n-----END TSS2 PRIVATE KEY-----\n")
    with pytest.raises(TPMKeyError, match="damaged"):
        open_signer(state_dir)


def test_tpm_identity_cannot_be_exported(state_dir: Path, swtpm, tmp_path: Path) -> None:
    _create(state_dir, swtpm.tcti)
    with pytest.raises(NotExportableError, match="cannot be exported"):
        backup_identity(state_dir, tmp_path / "b", backup_passphrase=b"x")
    assert not (tmp_path / "b").exists()


def test_tpm_is_p256_only(state_dir: Path, swtpm) -> None:
    with pytest.raises(UsageError, match="P-256"):
        create_identity(state_dir, name="x", backend="tpm", algorithm=Algorithm.ED25519, tcti=swtpm.tcti)
