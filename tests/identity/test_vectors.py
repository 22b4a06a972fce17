"""The test vectors printed in docs/identity.md: exact bytes, both KDF kinds."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from kestrel.identity import KdfParams, SoftwareSigner
from kestrel.identity.envelope import open_envelope, parse_envelope, private_bytes, seal

SEED = bytes(range(32))
SALT = bytes(range(16))
NONCE = bytes(range(0xA0, 0xAC))
DID = "did:key:z6MkehRgf7yJbgaGfYsdoAsKdBPE3dj2CYhowQdcjqSJgvVd"
MACHINE_SECRET = bytes(range(0x40, 0x60)) + b"0123456789abcdef0123456789abcdef"  # machine.key || machine-id

VECTORS = {
    "argon2id": (
        KdfParams.argon2id(memory_kib=8192, iterations=1, lanes=1),
        b"kestrel",
        """
4b5354524c4b4559010101010000000000002000000000010000000100010203
0405060708090a0b0c0d0e0fa0a1a2a3a4a5a6a7a8a9aaab2003a107bff3ce10
be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8000000000030dd
3fcce5c8597284d9376b542510a880a3bdfee4ffa2f44fc6c9dfed4fb93e5288
eb1af690628c7289d70bd48171525bde205ea3b2e11114b19f9db415293c995d
4b132ba2431d816146290c4b577604""",
    ),
    "machine": (
        KdfParams.machine(),
        MACHINE_SECRET,
        """
4b5354524c4b4559010103010000000000000000000000000000000000010203
0405060708090a0b0c0d0e0fa0a1a2a3a4a5a6a7a8a9aaab2003a107bff3ce10
be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b800000000003094
03a6ad791de64e61528c7f2ab93f2b54afdbe08873461cde5fb429c663570efe
ee51fef287999dd10235dec3a68d81bab020a172d72d95c69eb903bca0d0b057
4343780fa5ec4090c38787b26f8c6c""",
    ),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector(name: str) -> None:
    kdf, secret, text = VECTORS[name]
    expected = bytes.fromhex("".join(text.split()))
    signer = SoftwareSigner(ed25519.Ed25519PrivateKey.from_private_bytes(SEED))
    assert signer.public_key.did == DID
    assert seal(signer, secret, kdf=kdf, salt=SALT, nonce=NONCE) == expected
    opened = open_envelope(parse_envelope(expected), secret)
    assert private_bytes(opened) == SEED
