"""Fuzz the bundle parser/verifier: any bytes give a VerifiedBundle or a BundleError, never a crash."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrel.identity.keys import SoftwareSigner
from kestrel.ota.build import make_bundle
from kestrel.ota.bundle import MAGIC, parse_manifest, sign_bundle, verify_bundle
from kestrel.ota.errors import BundleError
from kestrel.ota.root import parse_root, root_envelope, root_payload

OWNER = SoftwareSigner.generate()
AGENT = SoftwareSigner.generate().public_key.did
NOW = time.time()
ROOT = parse_root(root_envelope(root_payload([OWNER.public_key.did], 1, 1)))
GOOD = sign_bundle(
    make_bundle(
        policy=b"actions: [a]\n",
        models=(("m.onnx", b"\x01\x02\x03" * 50),),
        counter=3,
        now=NOW,
        expires=NOW + 3600,
        agents=[AGENT],
    ),
    OWNER,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _verify(data: bytes) -> None:
    try:
        vb = verify_bundle(data, root=ROOT, now=NOW, agent_id=AGENT, counter=1)
    except BundleError as exc:
        assert exc.code and exc.code != "refused"
        return
    assert vb.manifest.counter >= 1 and vb.signed_by == (OWNER.public_key.did,)


def test_good_bundle_verifies() -> None:
    vb = verify_bundle(GOOD, root=ROOT, now=NOW, agent_id=AGENT, counter=1)
    assert vb.content("m.onnx") == b"\x01\x02\x03" * 50


@FAST
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    _verify(data)
    _verify(MAGIC + data)


@FAST
@given(st.integers(0, len(GOOD) - 1), st.integers(0, 255))
def test_single_byte_flips_are_refused(pos: int, value: int) -> None:
    data = bytearray(GOOD)
    if data[pos] == value:
        return
    data[pos] = value
    with pytest.raises(BundleError):
        verify_bundle(bytes(data), root=ROOT, now=NOW, agent_id=AGENT, counter=1)


@FAST
@given(st.integers(0, len(GOOD)), st.binary(min_size=1, max_size=16))
def test_insertions(pos: int, blob: bytes) -> None:
    with pytest.raises(BundleError):
        verify_bundle(GOOD[:pos] + blob + GOOD[pos:], root=ROOT, now=NOW, agent_id=AGENT, counter=1)


@FAST
@given(st.binary(max_size=300))
def test_manifest_parser(data: bytes) -> None:
    try:
        parse_manifest(data)
    except BundleError:
        pass


@pytest.mark.slow
@LONG
@given(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8))
def test_mutations_long(pos: int, blob: bytes) -> None:
    data = GOOD[:pos] + blob + GOOD[pos + len(blob) :]
    if data == GOOD:
        return
    with pytest.raises(BundleError):
        verify_bundle(data, root=ROOT, now=NOW, agent_id=AGENT, counter=1)
