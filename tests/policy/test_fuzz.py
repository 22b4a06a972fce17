"""Fuzz the policy parser and evaluator: any input gives a Policy or a PolicyError, never a crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrel.policy import ActionRequest, PolicyError, PolicyState, evaluate, parse_policy

from .test_parse import FULL

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(
        ["send_email", "*", "08:00-18:00", "1h", "mon", "+01:00", "no_external_network unless explicitly permitted"]
    ),
)
_keys = st.sampled_from(
    [
        "actions",
        "action",
        "args",
        "rate",
        "window",
        "deny",
        "network",
        "allow",
        "host",
        "port",
        "count",
        "per",
        "days",
        "hours",
        "enum",
        "min",
        "max",
        "regex",
        "domain",
        "restrictions",
        "version",
        "type",
        "optional",
        "utc_offset",
        "x",
    ]
)
_docs = st.recursive(
    _scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(_keys, kids, max_size=5)),
    max_leaves=25,
)


def _dump(doc) -> str:
    import yaml

    return yaml.safe_dump(doc, default_flow_style=False)


def _check_text(text) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError as exc:
        assert exc.issues and all(i.line >= 1 and i.column >= 1 for i in exc.issues)
        return
    for action in list(policy.allow)[:3] + ["nope"]:
        evaluate(policy, ActionRequest(action, {"to": "a@b.c", "url": "https://x.y/"}), PolicyState(), 0.0)


@FAST
@given(_docs)
def test_structured_documents(doc) -> None:
    _check_text(_dump({"actions": doc}) if not isinstance(doc, dict) else _dump(doc))


@FAST
@given(st.binary(max_size=300))
def test_random_bytes(data) -> None:
    _check_text(data)


@FAST
@given(st.integers(0, len(FULL) - 1), st.text(max_size=3))
def test_mutated_full_policy(pos, insert) -> None:
    _check_text(FULL[:pos] + insert + FULL[pos + 1 :])


@FAST
@given(
    st.dictionaries(
        st.text(max_size=8), st.recursive(_scalars, lambda k: st.lists(k, max_size=3), max_leaves=6), max_size=5
    ),
    st.floats(0, 4e9),
)
def test_evaluate_any_arguments(args, now) -> None:
    p = parse_policy(FULL)
    for action in ("send_email", "set_pin", "fetch_data", "ask_llm", "other"):
        d = evaluate(p, ActionRequest(action, args), PolicyState(), now)
        assert isinstance(d.allowed, bool) and d.rule


@pytest.mark.slow
@LONG
@given(_docs)
def test_structured_documents_long(doc) -> None:
    _check_text(_dump({"actions": doc}) if not isinstance(doc, dict) else _dump(doc))


@pytest.mark.slow
@LONG
@given(st.integers(0, len(FULL) - 1), st.text(max_size=6))
def test_mutated_full_policy_long(pos, insert) -> None:
    _check_text(FULL[:pos] + insert + FULL[pos + 1 :])


_HOSTILE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["eve@evil.com, bob@example.com", "Bob <b@example.com>", "http://127.1/", "a/#", "NaN"]),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=30,
)


@FAST
@given(
    st.sampled_from(
        [
            "send_email",
            "fetch_data",
            "gpio.write",
            "mqtt.publish",
            "serial.write",
            "schedule_event",
            "agent.send",
            "set_heater",
        ]
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "to",
                "url",
                "value",
                "topic",
                "payload",
                "actuator",
                "subject",
                "start",
                "retain",
                "qos",
                "data",
                "summary",
                "x",
            ]
        ),
        _HOSTILE,
        max_size=5,
    ),
)
def test_canonical_form_or_args_error_and_the_form_is_stable(action, args) -> None:
    from kestrel.policy.canonical import ArgsError, canonicalize

    try:
        c = canonicalize(action, args)
    except ArgsError:
        return
    assert canonicalize(action, c) == c  # the handler's re-parse sees exactly what the policy saw
    json.dumps(c, allow_nan=False)  # plain JSON, finite numbers
