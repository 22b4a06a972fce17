"""Pure core: the keystore envelope format (no files)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel.identity import (
    Algorithm,
    KdfParams,
    KeystoreCorruptError,
    MachineBindingError,
    SoftwareSigner,
    WrongPassphraseError,
)
from kestrel.identity.envelope import (
    BACKUP_MAGIC,
    open_envelope,
    parse_envelope,
    private_bytes,
    seal,
)

from .conftest import FAST_KDF, PASS


def _reseal_checksum(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize("alg", list(Algorithm))
def test_roundtrip_signs_with_the_same_key(alg: Algorithm) -> None:
    signer = SoftwareSigner.generate(alg)
    blob = seal(signer, PASS, kdf=FAST_KDF)
    env = parse_envelope(blob)
    assert env.public_key == signer.public_key and env.algorithm is alg
    opened = open_envelope(env, PASS)
    assert private_bytes(opened) == private_bytes(signer)
    signer.public_key.verify(opened.sign(b"msg"), b"msg")
    assert private_bytes(signer) not in blob


def test_layout_is_as_documented() -> None:
    signer = SoftwareSigner.generate(Algorithm.ED25519)
    blob = seal(signer, PASS, kdf=FAST_KDF, salt=b"S" * 16, nonce=b"N" * 12)
    assert blob[:8] == b"KSTRLKEY" and blob[8] == 1 and blob[9] == 1 and blob[10] == 1 and blob[11] == 1
    assert blob[12:16] == b"\0\0\0\0"
    assert struct.unpack(">III", blob[16:28]) == (8192, 1, 1)
    assert blob[28:44] == b"S" * 16 and blob[44:56] == b"N" * 12
    assert blob[56] == 32 and blob[57:89] == signer.public_key.raw
    assert blob[89:93] == b"\0\0\0\0" and blob[93:95] == b"\x00\x30"
    assert len(blob) == 95 + 48 + 32
    assert blob[-32:] == hashlib.sha256(blob[:-32]).digest()


def test_wrong_passphrase_is_not_corruption() -> None:
    env = parse_envelope(seal(SoftwareSigner.generate(), PASS, kdf=FAST_KDF))
    with pytest.raises(WrongPassphraseError) as info:
        open_envelope(env, b"wrong")
    assert not isinstance(info.value, MachineBindingError)
    assert "passphrase" in str(info.value)


def test_machine_kdf_reports_machine_binding() -> None:
    env = parse_envelope(seal(SoftwareSigner.generate(), b"m" * 40, kdf=KdfParams.machine()))
    with pytest.raises(MachineBindingError, match="machine"):
        open_envelope(env, b"x" * 40)


def test_every_flipped_byte_is_reported_as_corrupt() -> None:
    blob = seal(SoftwareSigner.generate(Algorithm.P256), PASS, kdf=FAST_KDF)
    for i in range(len(blob)):
        for mask in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= mask
            with pytest.raises(KeystoreCorruptError):
                parse_envelope(bytes(bad))


def test_every_truncation_is_reported_as_corrupt() -> None:
    blob = seal(SoftwareSigner.generate(), PASS, kdf=FAST_KDF)
    for n in range(len(blob)):
        with pytest.raises(KeystoreCorruptError):
            parse_envelope(blob[:n])
    with pytest.raises(KeystoreCorruptError):
        parse_envelope(blob + b"\0")


def test_header_is_authenticated_even_with_a_recomputed_checksum() -> None:
    blob = seal(SoftwareSigner.generate(), PASS, kdf=FAST_KDF)
    body = bytearray(blob[:-32])
    body[30] ^= 1  # inside the salt: still a valid structure
    with pytest.raises(WrongPassphraseError):
        open_envelope(parse_envelope(_reseal_checksum(bytes(body))), PASS)


def test_swapped_public_key_with_recomputed_checksum_is_refused() -> None:
    blob = seal(SoftwareSigner.generate(), PASS, kdf=FAST_KDF)
    other = SoftwareSigner.generate().public_key.raw
    body = blob[:57] + other + blob[89:-32]
    with pytest.raises(WrongPassphraseError):  # the public key is in the AEAD associated data
        open_envelope(parse_envelope(_reseal_checksum(body)), PASS)


def test_implausible_kdf_cost_is_refused_before_deriving() -> None:
    blob = seal(SoftwareSigner.generate(), PASS, kdf=FAST_KDF)
    body = blob[:16] + struct.pack(">I", 64 * 1024 * 1024) + blob[20:-32]  # 64 GiB of memory
    with pytest.raises(KeystoreCorruptError, match="implausible"):
        parse_envelope(_reseal_checksum(body))


def test_backup_and_keystore_magics_are_not_interchangeable() -> None:
    blob = seal(SoftwareSigner.generate(), PASS, kdf=FAST_KDF, magic=BACKUP_MAGIC)
    with pytest.raises(KeystoreCorruptError, match="backup file, not a keystore"):
        parse_envelope(blob)
    assert parse_envelope(blob, magic=BACKUP_MAGIC, what="backup").magic == BACKUP_MAGIC


def test_scrypt_kdf_roundtrip() -> None:
    signer = SoftwareSigner.generate()
    env = parse_envelope(seal(signer, PASS, kdf=KdfParams.scrypt(log2_n=10)))
    assert private_bytes(open_envelope(env, PASS)) == private_bytes(signer)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_always_a_clean_corrupt_error(data: bytes) -> None:
    with pytest.raises(KeystoreCorruptError):
        parse_envelope(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_garbage_with_valid_magic_and_checksum_is_a_clean_error(tail: bytes) -> None:
    data = _reseal_checksum(b"KSTRLKEY\x01" + tail)
    with pytest.raises(KeystoreCorruptError):
        parse_envelope(data)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_soak_mutated_envelopes_never_escape_as_other_errors(data) -> None:
    """Random mutations of a valid envelope: only KeystoreCorruptError or WrongPassphraseError."""
    blob = bytearray(_SOAK_BLOB)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1).filter(lambda k: not 16 <= k < 28))  # keep KDF cost
        blob[i] = data.draw(st.integers(0, 255))
    body = bytes(blob[:-32])
    candidate = _reseal_checksum(body) if data.draw(st.booleans()) else bytes(blob)
    try:
        env = parse_envelope(candidate)
    except KeystoreCorruptError:
        return
    try:
        open_envelope(env, PASS)
    except (WrongPassphraseError, KeystoreCorruptError):
        pass


_SOAK_BLOB = seal(SoftwareSigner.generate(Algorithm.P256), PASS, kdf=FAST_KDF)
