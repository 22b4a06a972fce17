"""Property tests: garbage never escapes as anything but a clean refusal (bounded; more under -m slow)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrel.identity.keys import Algorithm, SoftwareSigner
from kestrel.sync.collector.core import CollectorCore
from kestrel.sync.collector.sqlite import SqliteStore
from kestrel.sync.peers.envelope import PeerMessageError, ReplayState, open_message, seal
from kestrel.sync.wire import SyncBatch, SyncFormatError, decode_batch, decode_resend, encode_batch, ledger_topic

from .logs import LogBuilder

ALICE, BOB = SoftwareSigner.generate(), SoftwareSigner.generate()
NOW = 1_800_000_000.0
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _fuzz(n: int):
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fuzz(150)
@given(st.binary(max_size=400) | msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)))
def test_wire_decoders_only_raise_format_errors(data):
    for decode in (decode_batch, decode_resend):
        try:
            decode(data)
        except SyncFormatError:
            pass


@_fuzz(150)
@given(st.binary(max_size=400) | msgpack_values.map(lambda v: msgpack.packb([1, msgpack.packb(v), b"", b"\0" * 64])))
def test_peer_open_only_raises_refusals(data):
    with pytest.raises(PeerMessageError):
        open_message(
            data, me=BOB.public_key, trusted={ALICE.public_key.did: ALICE.public_key}, replay=ReplayState(), now=NOW
        )


@_fuzz(100)
@given(st.integers(0, 400), st.integers(0, 7))
def test_peer_message_bit_flip_is_refused(pos, bit):
    data = bytearray(seal({"v": 1}, signer=ALICE, recipient=BOB.public_key, seq=1, now=NOW))
    pos %= len(data)
    data[pos] ^= 1 << bit
    try:
        msg = open_message(
            bytes(data),
            me=BOB.public_key,
            trusted={ALICE.public_key.did: ALICE.public_key},
            replay=ReplayState(),
            now=NOW,
        )
    except PeerMessageError:
        return
    assert msg.body == {"v": 1}  # only a flip msgpack ignores (none expected) could pass, unchanged


@_fuzz(40)
@given(st.integers(0, 10_000), st.integers(0, 7))
def test_collector_never_stores_a_flipped_record(tmp_path_factory, pos, bit):
    log = LogBuilder()
    log.append(6)
    payload = bytearray(encode_batch(SyncBatch(0, tuple(log.records), log.checkpoint())))
    payload[pos % len(payload)] ^= 1 << bit
    store = SqliteStore(tmp_path_factory.mktemp("fz") / "c.db")
    try:
        out = CollectorCore(store, clock=lambda: NOW).handle(ledger_topic(log.did), bytes(payload))
        stored = [raw for _, raw in store.verified_records(log.did)]
        assert stored == log.records[: len(stored)]  # whatever was stored is genuine
        assert out.verified == len(stored)
    finally:
        store.close()


@pytest.mark.parametrize("alg", [Algorithm.ED25519, Algorithm.P256])
def test_collector_verifies_both_identity_algorithms(tmp_path, alg):
    log = LogBuilder(SoftwareSigner.generate(alg))
    log.append(9)
    store = SqliteStore(tmp_path / "c.db")
    out = CollectorCore(store, clock=lambda: NOW).handle(
        ledger_topic(log.did), encode_batch(SyncBatch(0, tuple(log.records), log.checkpoint()))
    )
    assert out.verified == 9
    store.close()


@pytest.mark.slow
@_fuzz(5000)
@given(st.binary(max_size=2000))
def test_peer_open_fuzz_long(data):
    with pytest.raises(PeerMessageError):
        open_message(data, me=BOB.public_key, trusted={}, replay=ReplayState(), now=NOW)
