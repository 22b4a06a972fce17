"""File keystore shell: real files in a real state directory."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest

from kestrel.errors import TransportError
from kestrel.identity import (
    Algorithm,
    IdentityCorruptError,
    IdentityExistsError,
    IdentityNotFoundError,
    KeystoreCorruptError,
    MachineBindingError,
    PassphraseRequiredError,
    PublicKey,
    WrongPassphraseError,
    create_identity,
    load_identity,
    open_signer,
)
from kestrel.identity.envelope import private_bytes

from .conftest import FAST_KDF, PASS, sign_concurrently


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("alg", list(Algorithm))
def test_create_open_sign_verify(state_dir: Path, make_identity, alg: Algorithm) -> None:
    ident = make_identity(algorithm=alg)
    assert ident.algorithm is alg and ident.backend == "file" and ident.protection == "passphrase"
    assert ident.did.startswith("did:key:z6Mk" if alg is Algorithm.ED25519 else "did:key:zDn")
    assert load_identity(state_dir) == ident
    signer = open_signer(state_dir, passphrase=PASS)
    assert signer.public_key == ident.public_key
    sig = signer.sign(b"record bytes")
    PublicKey.from_did(ident.did).verify(sig, b"record bytes")  # the AgentID alone verifies


def test_modes_are_private_from_creation(state_dir: Path, make_identity) -> None:
    fresh = state_dir / "new-state"  # created by create_identity itself
    make_identity(state=fresh, machine_bound=True)
    for d in (fresh, fresh / "identity"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = list((fresh / "identity").iterdir())
    assert {f.name for f in files} == {"identity.json", "key.enc", "machine.key"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert not [p for p in fresh.iterdir() if p.name.startswith(".identity.new")]  # no staging left


@pytest.mark.parametrize("machine_bound", [False, True])
def test_no_plaintext_private_key_on_disk(state_dir: Path, make_identity, machine_bound: bool) -> None:
    make_identity(algorithm=Algorithm.P256, machine_bound=machine_bound)
    raw = private_bytes(open_signer(state_dir, passphrase=PASS))
    needles = [raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw)[:40]]
    for rel, data in _snapshot(state_dir).items():
        for needle in needles:
            assert needle not in data, f"private key material found in {rel}"


def test_wrong_passphrase(state_dir: Path, make_identity) -> None:
    make_identity()
    before = _snapshot(state_dir)
    with pytest.raises(WrongPassphraseError, match="wrong passphrase"):
        open_signer(state_dir, passphrase=b"not it")
    assert _snapshot(state_dir) == before


def test_passphrase_from_environment(state_dir: Path, make_identity, monkeypatch) -> None:
    ident = make_identity()
    monkeypatch.setenv("KESTREL_PASSPHRASE", PASS.decode())
    assert open_signer(state_dir).public_key == ident.public_key


def test_no_passphrase_and_no_terminal_is_a_clear_error(state_dir: Path, make_identity, monkeypatch) -> None:
    make_identity()
    monkeypatch.delenv("KESTREL_PASSPHRASE", raising=False)
    with pytest.raises(PassphraseRequiredError, match="no terminal") as info:
        open_signer(state_dir)
    assert "--passphrase-file" in info.value.hint


@pytest.mark.parametrize("damage", ["flip-first", "flip-middle", "flip-last", "truncate", "empty", "append"])
def test_corrupt_keystore_is_reported_and_left_alone(state_dir: Path, make_identity, damage: str) -> None:
    make_identity()
    key = state_dir / "identity" / "key.enc"
    data = bytearray(key.read_bytes())
    if damage.startswith("flip"):
        i = {"flip-first": 0, "flip-middle": len(data) // 2, "flip-last": len(data) - 1}[damage]
        data[i] ^= 0x10
    elif damage == "truncate":
        data = data[: len(data) - 20]
    elif damage == "empty":
        data = bytearray()
    else:
        data += b"junk"
    key.write_bytes(bytes(data))
    with pytest.raises(KeystoreCorruptError, match="damaged") as info:
        open_signer(state_dir, passphrase=PASS)
    assert "backup" in info.value.hint
    assert key.read_bytes() == bytes(data)  # nothing rewritten


def test_existing_identity_is_never_replaced(state_dir: Path, make_identity) -> None:
    first = make_identity()
    before = _snapshot(state_dir)
    for kw in ({}, {"algorithm": Algorithm.P256}, {"machine_bound": True}):
        with pytest.raises(IdentityExistsError, match="not replaceable"):
            make_identity(**kw)
    assert _snapshot(state_dir) == before
    assert load_identity(state_dir) == first


def test_concurrent_creation_yields_exactly_one_identity(state_dir: Path) -> None:
    results: list[object] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        try:
            results.append(create_identity(state_dir, name="race", passphrase=PASS, kdf=FAST_KDF))
        except IdentityExistsError as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [r for r in results if not isinstance(r, Exception)]
    assert len(made) == 1 and len(results) == 4
    assert load_identity(state_dir) == made[0]
    assert open_signer(state_dir, passphrase=PASS).public_key == made[0].public_key


def test_empty_identity_directory_is_not_an_identity(state_dir: Path, make_identity) -> None:
    (state_dir / "identity").mkdir(mode=0o700)
    with pytest.raises(IdentityNotFoundError):
        load_identity(state_dir)
    assert make_identity().did == load_identity(state_dir).did


def test_machine_bound_opens_here_and_not_elsewhere(state_dir: Path, make_identity, tmp_path: Path) -> None:
    mid = tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    ident = make_identity(machine_bound=True, algorithm=Algorithm.P256, machine_id_path=mid)
    assert ident.protection == "machine-bound"
    signer = open_signer(state_dir, machine_id_path=mid)
    ident.public_key.verify(signer.sign(b"x"), b"x")
    other = tmp_path / "other-machine-id"
    other.write_text("fedcba9876543210fedcba9876543210\n")
    with pytest.raises(MachineBindingError, match="does not open on this machine"):
        open_signer(state_dir, machine_id_path=other)


def test_machine_bound_uses_the_system_machine_id_by_default(
    state_dir: Path, make_identity, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KESTREL_MACHINE_ID_FILE", raising=False)
    if not any(Path(p).is_file() for p in ("/etc/machine-id", "/var/lib/dbus/machine-id")):
        pytest.skip("this machine has no machine-id")
    ident = make_identity(machine_bound=True)
    assert open_signer(state_dir).public_key == ident.public_key
    fake = tmp_path / "mid"
    fake.write_text("11111111111111111111111111111111\n")
    monkeypatch.setenv("KESTREL_MACHINE_ID_FILE", str(fake))  # as if the state dir moved machines
    with pytest.raises(MachineBindingError):
        open_signer(state_dir)


def test_machine_bound_copy_without_secret_fails_cleanly(state_dir: Path, make_identity) -> None:
    make_identity(machine_bound=True)
    (state_dir / "identity" / "machine.key").unlink()
    with pytest.raises(TransportError, match="machine-bound secret not found"):
        open_signer(state_dir)


def test_keystore_readable_by_others_is_refused(state_dir: Path, make_identity) -> None:
    make_identity()
    key = state_dir / "identity" / "key.enc"
    key.chmod(0o644)
    with pytest.raises(TransportError, match="accessible by other users") as info:
        open_signer(state_dir, passphrase=PASS)
    assert "chmod 600" in info.value.hint


def test_symlinked_keystore_is_refused(state_dir: Path, make_identity, tmp_path: Path) -> None:
    make_identity()
    key = state_dir / "identity" / "key.enc"
    moved = tmp_path / "elsewhere.enc"
    os.rename(key, moved)
    key.symlink_to(moved)
    with pytest.raises(TransportError, match="cannot open keystore"):
        open_signer(state_dir, passphrase=PASS)


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b"[]", b'{"format": "kestrel-identity/1"}', b'{"format": "other/9", "did": "x"}']
)
def test_corrupt_identity_json(state_dir: Path, make_identity, content: bytes) -> None:
    make_identity()
    (state_dir / "identity" / "identity.json").write_bytes(content)
    with pytest.raises(IdentityCorruptError, match="identity.json"):
        load_identity(state_dir)


def test_identity_json_pointing_at_another_key_is_refused(state_dir: Path, make_identity, tmp_path) -> None:
    make_identity()
    other = make_identity(state=tmp_path / "other")
    path = state_dir / "identity" / "identity.json"
    path.write_bytes(path.read_bytes().replace(load_identity(state_dir).did.encode(), other.did.encode()))
    with pytest.raises(IdentityCorruptError, match="different key"):
        open_signer(state_dir, passphrase=PASS)


def test_tampered_algorithm_in_identity_json_is_refused(state_dir: Path, make_identity) -> None:
    make_identity()
    path = state_dir / "identity" / "identity.json"
    path.write_bytes(path.read_bytes().replace(b'"ed25519"', b'"p256"'))
    with pytest.raises(IdentityCorruptError, match="disagrees"):
        load_identity(state_dir)


def test_missing_identity(state_dir: Path) -> None:
    with pytest.raises(IdentityNotFoundError, match="no agent identity") as info:
        load_identity(state_dir)
    assert "kestrel init-agent" in info.value.hint


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "x" * 200])
def test_bad_names_are_refused(state_dir: Path, name: str) -> None:
    from kestrel.errors import UsageError

    with pytest.raises(UsageError, match="invalid agent name"):
        create_identity(state_dir, name=name, passphrase=PASS, kdf=FAST_KDF)
    assert not (state_dir / "identity").exists()


def test_signer_is_thread_safe(state_dir: Path, make_identity) -> None:
    ident = make_identity(algorithm=Algorithm.P256)
    signer = open_signer(state_dir, passphrase=PASS)
    assert sign_concurrently(signer, ident.public_key, each=50) == []


def test_created_at_is_rfc3339_utc(make_identity) -> None:
    from datetime import datetime

    ident = make_identity()
    assert ident.created_at.endswith("Z")
    datetime.strptime(ident.created_at, "%Y-%m-%dT%H:%M:%SZ")
