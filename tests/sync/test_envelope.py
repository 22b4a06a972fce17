"""Peer message envelope: sign, encrypt, verify, refuse (pure core)."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization

from kestrel.identity.keys import Algorithm, SoftwareSigner
from kestrel.sync.peers.envelope import PeerMessageError, ReplayState, open_message, seal
from kestrel.sync.peers.keyagree import SoftwareKeyAgreement, ed25519_public_to_x25519

NOW = 1_800_000_000.0


@pytest.fixture(params=[Algorithm.ED25519, Algorithm.P256], ids=["ed25519", "p256"])
def pair(request):
    alice = SoftwareSigner.generate(request.param)
    bob = SoftwareSigner.generate(request.param)
    return alice, bob


def _open(data, bob, trusted, replay=ReplayState(), now=NOW):
    return open_message(data, me=SoftwareKeyAgreement.from_signer(bob), trusted=trusted, replay=replay, now=now)


@pytest.mark.parametrize("encrypt", [False, True])
def test_roundtrip(pair, encrypt):
    alice, bob = pair
    data = seal({"kind": "hello", "n": 1}, signer=alice, recipient=bob.public_key, seq=1, now=NOW, encrypt=encrypt)
    msg = _open(data, bob, {alice.public_key.did: alice.public_key})
    assert msg.body == {"kind": "hello", "n": 1}
    assert msg.sender == alice.public_key.did and msg.seq == 1 and msg.encrypted is encrypt
    assert msg.replay.last_seq == {alice.public_key.did: 1}
    if encrypt:
        assert b"hello" not in data


def test_mixed_algorithms_encrypt():
    alice, bob = SoftwareSigner.generate(Algorithm.P256), SoftwareSigner.generate(Algorithm.ED25519)
    data = seal("x", signer=alice, recipient=bob.public_key, seq=3, now=NOW, encrypt=True)
    assert _open(data, bob, {alice.public_key.did: alice.public_key}).body == "x"


def test_x25519_conversion_matches_private_key():
    signer = SoftwareSigner.generate()
    ka = SoftwareKeyAgreement.from_signer(signer)
    x_pub = ka._x.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert ed25519_public_to_x25519(signer.public_key.raw) == x_pub


def test_unknown_sender_refused(pair):
    alice, bob = pair
    data = seal({}, signer=alice, recipient=bob.public_key, seq=1, now=NOW)
    with pytest.raises(PeerMessageError) as exc:
        _open(data, bob, {})
    assert exc.value.reason == "unknown-sender" and exc.value.sender == alice.public_key.did


def test_forged_signature_refused(pair):
    alice, bob = pair
    mallory = SoftwareSigner.generate(alice.public_key.algorithm)
    # Mallory signs a message claiming to be Alice: re-sign the header naming alice.
    good = seal({"pay": 1}, signer=alice, recipient=bob.public_key, seq=1, now=NOW)
    v, header, payload, _sig = msgpack.unpackb(good)
    from kestrel.sync.peers.envelope import _signed_bytes

    forged = msgpack.packb([v, header, payload.replace(b"\x01", b"\x09"), mallory.sign(_signed_bytes(header, payload))])
    with pytest.raises(PeerMessageError) as exc:
        _open(forged, bob, {alice.public_key.did: alice.public_key})
    assert exc.value.reason == "forged"


def test_tampered_payload_refused(pair):
    alice, bob = pair
    good = seal({"amount": 1}, signer=alice, recipient=bob.public_key, seq=1, now=NOW)
    v, header, payload, sig = msgpack.unpackb(good)
    bad = msgpack.packb([v, header, payload[:-1] + bytes([payload[-1] ^ 1]), sig])
    with pytest.raises(PeerMessageError) as exc:
        _open(bad, bob, {alice.public_key.did: alice.public_key})
    assert exc.value.reason == "forged"


def test_replay_refused(pair):
    alice, bob = pair
    trusted = {alice.public_key.did: alice.public_key}
    data = seal({}, signer=alice, recipient=bob.public_key, seq=5, now=NOW)
    msg = _open(data, bob, trusted)
    with pytest.raises(PeerMessageError) as exc:
        _open(data, bob, trusted, replay=msg.replay)
    assert exc.value.reason == "replayed" and exc.value.seq == 5
    older = seal({}, signer=alice, recipient=bob.public_key, seq=4, now=NOW)
    with pytest.raises(PeerMessageError):
        _open(older, bob, trusted, replay=msg.replay)


def test_stale_refused(pair):
    alice, bob = pair
    data = seal({}, signer=alice, recipient=bob.public_key, seq=1, now=NOW - 3600)
    with pytest.raises(PeerMessageError) as exc:
        _open(data, bob, {alice.public_key.did: alice.public_key})
    assert exc.value.reason == "stale"


def test_not_for_us(pair):
    alice, bob = pair
    carol = SoftwareSigner.generate()
    data = seal({}, signer=alice, recipient=carol.public_key, seq=1, now=NOW)
    with pytest.raises(PeerMessageError) as exc:
        _open(data, bob, {alice.public_key.did: alice.public_key})
    assert exc.value.reason == "not-for-us"


def test_ciphertext_for_other_key_undecryptable(pair):
    alice, bob = pair
    data = seal("secret", signer=alice, recipient=bob.public_key, seq=1, now=NOW, encrypt=True)
    v, header, payload, sig = msgpack.unpackb(data)
    # A correctly signed message whose ciphertext is garbage cannot be opened.
    from kestrel.sync.peers.envelope import _signed_bytes

    junk = bytes(len(payload))
    bad = msgpack.packb([v, header, junk, alice.sign(_signed_bytes(header, junk))])
    with pytest.raises(PeerMessageError) as exc:
        _open(bad, bob, {alice.public_key.did: alice.public_key})
    assert exc.value.reason == "undecryptable"


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x02\x03",
        msgpack.packb([1, b"x", b"", b""]),
        msgpack.packb([1, msgpack.packb({"from": 1}), b"", b""]),
        b"\xff" * 300_000,
    ],
)
def test_garbage_refused_as_malformed(pair, garbage):
    alice, bob = pair
    with pytest.raises(PeerMessageError) as exc:
        _open(garbage, bob, {alice.public_key.did: alice.public_key})
    assert exc.value.reason == "malformed"
