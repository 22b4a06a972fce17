"""Fuzzing the pure cores: any input gives a value or the module's own error, never a crash."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrel.daemon import protocol as P
from kestrel.daemon.config import parse_device_config
from kestrel.daemon.decode import PayloadError, decode_frame, decode_payload
from kestrel.errors import ConfigError

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_YAML_BITS = st.sampled_from(
    [
        "version: 1\n",
        "sensors:\n",
        "  d: {type: gpio, pin: 4}\n",
        "  s: {type: serial, port: /dev/x}\n",
        "triggers:\n",
        "  - when: 'd == 1'\n",
        "    action: gpio.write\n",
        "    args: {actuator: l, value: 1}\n",
        "actuators:\n",
        "  l: {type: gpio, pin: 5}\n",
        "mqtt: {host: h}\n",
        "schedules:\n",
        "  - {every: 1, action: x}\n",
        "  - {cron: '*/5 * * * *', action: gpio.write}\n",
        "limits: {event_queue: -1}\n",
        "- \n",
        ": :\n",
        "  ",
        "{",
        "[",
        "!!python/object:x {}\n",
        "&a 1\n",
        "*a\n",
        "\t",
        "\u00e9",
        "0x1F",
        "~\n",
    ]
)


def _config_only_config_errors(text: str) -> None:
    try:
        parse_device_config(text, source="fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml")


@FAST
@given(st.lists(_YAML_BITS, max_size=12).map("".join))
def test_config_parser_fuzz(text):
    _config_only_config_errors(text)


@FAST
@given(st.text(max_size=200))
def test_config_parser_random_text(text):
    _config_only_config_errors(text)


def _decoders(data: bytes) -> None:
    for fmt in ("json", "msgpack", "text"):
        try:
            value = decode_payload(fmt, data, max_size=1024)
            json.dumps(value, default=lambda b: b.hex())  # a plain value the trigger language can read
        except PayloadError:
            pass
    for fmt in ("text", "nmea", "json", "bytes"):
        try:
            decode_frame(fmt, data)
        except PayloadError:
            pass


@FAST
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
            max_leaves=20,
        ).map(lambda v: msgpack.packb(v)),
    )
)
def test_payload_decoders_fuzz(data):
    _decoders(data)


@FAST
@given(st.binary(max_size=400))
def test_protocol_decoder_fuzz(line):
    try:
        req = P.decode_request(line)
        assert req.method in P.METHODS and isinstance(req.params, dict)
    except P.ProtocolError:
        pass


@pytest.mark.slow
@SLOW
@given(st.binary(max_size=2000))
def test_decoders_soak(data):
    _decoders(data)
    try:
        P.decode_request(data)
    except P.ProtocolError:
        pass


_JSON_BITS = st.sampled_from(
    [
        '{"id": 1, "method": "call", "params": {"action": "send_email", "args": {',
        '"to": ',
        '"value": ',
        '"url": ',
        "NaN",
        "-Infinity",
        "1e999",
        "9" * 30,
        "-" + "9" * 25,
        "1.5",
        "0",
        "true",
        "null",
        '"a@b.example"',
        '"x"',
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        '"\\ud800"',
        '"\\u0000"',
        '"a", "a": 1',
        "[" * 50,
        "]" * 50,
    ]
)


@FAST
@given(st.lists(_JSON_BITS, max_size=30).map("".join))
def test_protocol_decoder_structured_fuzz(text):
    """JSON-shaped hostile lines: a request, or bad_request; and the arguments of any request that decodes
    have a canonical form or an ArgsError (never a crash, a NaN or a huge integer)."""
    from kestrel.policy.canonical import ArgsError, canonicalize

    try:
        req = P.decode_request(text.encode())
    except P.ProtocolError:
        return
    args = req.params.get("args")
    if isinstance(args, dict):
        try:
            canonicalize(str(req.params.get("action")), args)
        except ArgsError:
            pass


def test_the_longest_hostile_line_is_decoded_in_bounded_memory():
    import tracemalloc

    line = b"[" * (P.MAX_LINE - 1)
    tracemalloc.start()
    try:
        with pytest.raises(P.ProtocolError):
            P.decode_request(line)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * P.MAX_LINE, peak
