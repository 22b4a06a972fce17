"""Hypothesis fuzzing of the parsers: garbage gives a Kestrel DataError, never a crash."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrel.errors import DataError
from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger.checkpoint import verify_checkpoint
from kestrel.ledger.export import EXPORT_MAGIC, PROOF_MAGIC, verify_export, verify_proof
from kestrel.ledger.frame import Frame, FrameDamage, iter_frames
from kestrel.ledger.record import decode_record
from kestrel.ledger.verify import verify_stream

from .streams import build, export_of

KEY = SoftwareSigner.generate()
STREAM, _, _ = build(KEY, 8, cp_every=3)
EXPORT = export_of(KEY, 8)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
record_like = st.fixed_dictionaries(
    {},
    optional={
        "seq": msgpack_values,
        "time": msgpack_values,
        "kind": msgpack_values,
        "body": msgpack_values,
        "prev": msgpack_values,
    },
)


def _mutations():
    return st.one_of(
        st.binary(max_size=600),
        st.tuples(st.integers(0, len(STREAM) - 1), st.binary(min_size=1, max_size=8)).map(
            lambda t: STREAM[: t[0]] + t[1] + STREAM[t[0] + len(t[1]) :]
        ),
        st.integers(0, len(STREAM)).map(lambda n: STREAM[:n]),
        st.tuples(st.integers(0, len(STREAM)), st.integers(0, len(STREAM))).map(
            lambda t: STREAM[: min(t)] + STREAM[max(t) :]
        ),
    )


def _check_decode(data):
    try:
        decode_record(data)
    except DataError:
        pass


def _check_stream(data):
    for item in iter_frames(data):
        assert isinstance(item, (Frame, FrameDamage))
    for allow in (False, True):
        try:
            v = verify_stream(data, KEY.public_key, allow_torn_tail=allow)
        except DataError:
            continue
        assert v.size <= 8 and v.signed_size <= v.size


def _check_export(data):
    try:
        verify_export(data, KEY.public_key)
    except DataError:
        pass
    try:
        verify_proof(data, KEY.public_key)
    except DataError:
        pass
    try:
        verify_checkpoint(data, KEY.public_key)
    except DataError:
        pass


@FAST
@given(st.one_of(st.binary(max_size=300), record_like.map(lambda d: msgpack.packb(d, use_bin_type=True))))
def test_decode_record_fuzz(data):
    _check_decode(data)


@FAST
@given(_mutations())
def test_stream_parser_fuzz(data):
    _check_stream(data)


@FAST
@given(
    st.one_of(
        st.binary(max_size=400).map(lambda b: EXPORT_MAGIC + b),
        st.binary(max_size=400).map(lambda b: PROOF_MAGIC + b),
        msgpack_values.map(lambda v: PROOF_MAGIC + msgpack.packb(v, use_bin_type=True)),
        st.tuples(st.integers(0, len(EXPORT) - 1), st.binary(min_size=1, max_size=4)).map(
            lambda t: EXPORT[: t[0]] + t[1] + EXPORT[t[0] + len(t[1]) :]
        ),
        st.text(max_size=200).map(str.encode),
    )
)
def test_export_proof_checkpoint_fuzz(data):
    _check_export(data)


@pytest.mark.slow
@SLOW
@given(_mutations())
def test_stream_parser_fuzz_long(data):
    _check_stream(data)


@pytest.mark.slow
@SLOW
@given(st.binary(max_size=2000))
def test_export_fuzz_long(data):
    _check_export(EXPORT_MAGIC + data)
