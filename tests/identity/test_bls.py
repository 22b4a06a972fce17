"""BLS12-381 (min-pk, proof-of-possession suite): published vectors, proofs of possession,
the rogue-key attack, and identity-signed key certificates."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from kestrel.identity.keys import KeyFormatError, SignatureError, SoftwareSigner

bls = pytest.importorskip("kestrel.identity.bls")
blspy = pytest.importorskip("blspy")

VECTORS = json.loads((Path(__file__).parent / "data" / "bls12381_pop_vectors.json").read_text())
H = bytes.fromhex


def test_vectors_name_the_ciphersuite_we_implement():
    assert VECTORS["ciphersuite"] == bls.SUITE


@pytest.mark.parametrize("case", VECTORS["public_keys"], ids=lambda c: c["pubkey"][:8])
def test_sk_to_pk_vectors(case):
    assert bls.BLSSecretKey(H(case["privkey"])).public_key.raw == H(case["pubkey"])


@pytest.mark.parametrize("case", VECTORS["sign"], ids=lambda c: c["signature"][:8])
def test_sign_vectors(case):
    sk = bls.BLSSecretKey(H(case["privkey"]))
    assert sk.sign(H(case["message"])) == H(case["signature"])
    sk.public_key.verify(H(case["signature"]), H(case["message"]))


def test_zero_private_key_is_refused():
    for case in VECTORS["sign_invalid"]:
        with pytest.raises(KeyFormatError):
            bls.BLSSecretKey(H(case["privkey"]))
    with pytest.raises(KeyFormatError):
        bls.BLSSecretKey(b"\xff" * 32)  # above the group order


def test_aggregate_vectors():
    assert VECTORS["aggregate"]
    for case in VECTORS["aggregate"]:
        assert bls.aggregate([H(s) for s in case["signatures"]]) == H(case["output"])


def _proven(pk_hex: str) -> bls.ProvenKey:
    by_pk = {c["pubkey"]: c["privkey"] for c in VECTORS["public_keys"]}
    sk = bls.BLSSecretKey(H(by_pk[pk_hex]))
    return sk.public_key.proven(sk.prove_possession())


@pytest.mark.parametrize("case", VECTORS["fast_aggregate_verify"], ids=lambda c: f"{len(c['pubkeys'])}-{c['output']}")
def test_fast_aggregate_verify_vectors(case):
    keys = [_proven(pk) for pk in case["pubkeys"]]
    if case["output"]:
        bls.verify_aggregate(keys, H(case["message"]), H(case["signature"]))
    else:
        with pytest.raises(SignatureError):
            bls.verify_aggregate(keys, H(case["message"]), H(case["signature"]))


@pytest.mark.parametrize("case", VECTORS["verify"], ids=lambda c: f"{c['pubkey'][:6]}-{c['output']}")
def test_verify_vectors(case):
    if case["output"]:
        bls.BLSPublicKey(H(case["pubkey"])).verify(H(case["signature"]), H(case["message"]))
        return
    with pytest.raises((SignatureError, KeyFormatError)):  # the infinity key fails KeyValidate
        bls.BLSPublicKey(H(case["pubkey"])).verify(H(case["signature"]), H(case["message"]))


def test_malformed_keys_and_signatures_are_data_errors():
    sk = bls.BLSSecretKey.generate()
    for raw in (b"", b"\x00" * 48, b"\x80" + b"\x00" * 47, sk.public_key.raw[:47]):
        with pytest.raises(KeyFormatError):
            bls.BLSPublicKey(raw)
    for sig in (b"", b"\x00" * 96, b"\x01" * 96, sk.sign(b"m")[:95]):
        with pytest.raises(SignatureError):
            sk.public_key.verify(sig, b"m")


def test_rogue_key_aggregate_verifies_without_pop_and_is_refused_with_it():
    """The attack that proofs of possession stop: Mallory publishes pk_m = g*x - pk_victim, then
    'aggregates' a signature of the victim and herself by signing alone with x."""
    b = blspy
    victim = bls.BLSSecretKey.generate()
    x = bls.BLSSecretKey.generate()
    rogue_point = b.G1Element.from_bytes(x.public_key.raw) + b.G1Element.from_bytes(victim.public_key.raw).negate()
    rogue = bls.BLSPublicKey(bytes(rogue_point))
    msg = b"open valve 3"
    forged = x.sign(msg)
    # Without proofs of possession the forgery passes FastAggregateVerify: the attack is real.
    assert b.PopSchemeMPL.fast_aggregate_verify(
        [b.G1Element.from_bytes(victim.public_key.raw), rogue_point], msg, b.G2Element.from_bytes(forged)
    )
    # Mallory cannot prove possession of the rogue key; her own PoP or a signature does not pass.
    for proof in (x.prove_possession(), forged, x.sign(rogue.raw)):
        with pytest.raises(SignatureError):
            rogue.proven(proof)
    # And the aggregate API accepts only proven keys.
    with pytest.raises(TypeError):
        bls.verify_aggregate([victim.public_key, rogue], msg, forged)  # type: ignore[list-item]


def test_aggregate_refuses_duplicate_signers():
    sk = bls.BLSSecretKey.generate()
    p = sk.public_key.proven(sk.prove_possession())
    sig = bls.aggregate([sk.sign(b"m"), sk.sign(b"m")])
    with pytest.raises(SignatureError):
        bls.verify_aggregate([p, p], b"m", sig)


# -- certificates ------------------------------------------------------------------------------


def test_certificate_round_trip_for_both_identity_algorithms():
    from kestrel.identity.keys import Algorithm

    for alg in (Algorithm.ED25519, Algorithm.P256):
        ident = SoftwareSigner.generate(alg)
        sk = bls.BLSSecretKey.generate()
        data = bls.issue_certificate(ident, sk, serial=3, now=1_700_000_000.5)
        cert = bls.verify_certificate(data, agent=ident.public_key.did)
        assert (cert.agent, cert.serial, cert.time_ms) == (ident.public_key.did, 3, 1_700_000_000_500)
        assert cert.public_key == sk.public_key
        assert isinstance(cert.key, bls.ProvenKey)


def _rebuild(data: bytes, signer=None, **changes) -> bytes:
    _, body, sig = msgpack.unpackb(data)
    fields = msgpack.unpackb(body)
    fields.update(changes)
    body = msgpack.packb(fields, use_bin_type=True)
    if signer is not None:
        sig = signer.sign(bls.CERT_DOMAIN + body)
    return msgpack.packb([1, body, sig], use_bin_type=True)


def test_certificate_refusals_name_their_reason():
    ident, other = SoftwareSigner.generate(), SoftwareSigner.generate()
    sk, rogue = bls.BLSSecretKey.generate(), bls.BLSSecretKey.generate()
    good = bls.issue_certificate(ident, sk, serial=1, now=1.0)
    cases = {
        "wrong-agent": (good, other.public_key.did),
        "forged": (_rebuild(good, serial=2), None),  # body changed, signature kept
        "no-possession": (_rebuild(good, ident, pk=rogue.public_key.raw), None),  # re-signed, PoP of another key
        "bad-key": (_rebuild(good, ident, pk=b"\xc0" + bytes(47)), None),
        "malformed": (b"\x93\x01", None),
    }
    for reason, (data, agent) in cases.items():
        with pytest.raises(bls.BLSCertificateError) as info:
            bls.verify_certificate(data, agent=agent)
        assert info.value.reason == reason, (reason, info.value)
    for junk in (
        b"",
        b"\xff" * 10,
        good + b"x",
        b"\x00" * (bls.MAX_CERTIFICATE + 1),
        _rebuild(good, ident, extra=1),
        _rebuild(good, ident, serial=0),
    ):
        with pytest.raises(bls.BLSCertificateError):
            bls.verify_certificate(junk)


_P = int("1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffaaab", 16)


@pytest.mark.parametrize("case", VECTORS["hash_to_G2"]["cases"], ids=lambda c: c["msg"][:8] or "empty")
def test_hash_to_g2_rfc9380_vectors(case):
    """The ciphersuite's hash to G2 (RFC 9380 J.10.1), read back from the compressed point:
    x = (c1, c0) in the 96 bytes, and the 'larger y' flag bit for y."""
    dst = VECTORS["hash_to_G2"]["dst"].encode()
    point = bytes(blspy.G2Element.from_message(case["msg"].encode(), dst))
    x_c1 = bytearray(point[:48])
    flags, x_c1[0] = x_c1[0] & 0xE0, x_c1[0] & 0x1F
    assert (bytes(x_c1).hex(), point[48:].hex()) == (case["x_c1"], case["x_c0"])
    y_c0, y_c1 = int(case["y_c0"], 16), int(case["y_c1"], 16)
    larger = y_c1 > _P - y_c1 if y_c1 else y_c0 > _P - y_c0
    assert flags == (0xA0 if larger else 0x80)  # compressed, not infinity, sign of y
