"""The compiled evaluation plans: which rules each action looks at, and cheap Decisions."""

from __future__ import annotations

import hashlib

import pytest

from kestrel.policy import ActionRequest, Decision, PolicyState, args_digest, evaluate, parse_policy
from kestrel.policy.model import ArgConstraint, make_decision

from .test_parse import FULL

DENIES = """actions:
  - action: a
  - action: b
deny:
  - action: a
    args: {y: {equals: 1}}
    reason: y first
  - action: "*"
    args: {x: {equals: 1}}
    reason: x second
  - action: a
    args: {x: {equals: 2}, z: {equals: 3}}
    reason: x and z
  - action: b
    window: {hours: "00:00-24:00"}
    reason: b never
"""


def _decide(policy, action, **args):
    return evaluate(policy, ActionRequest(action, args), PolicyState(), 0.0)


def test_make_decision_is_an_ordinary_decision() -> None:
    fields = (True, "act", "actions[0]", "allowed by actions[0]", "p" * 64, "a" * 64, "act")
    fast, slow = make_decision(*fields), Decision(*fields)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert make_decision(*fields[:6]).rate_key is None
    with pytest.raises(AttributeError):
        fast.allowed = False  # type: ignore[misc]


def test_evaluate_returns_frozen_decisions_equal_to_constructed_ones() -> None:
    p = parse_policy(FULL)
    d = _decide(p, "set_pin", pin=17, value=1)
    assert d == Decision(
        True, "set_pin", "actions[1]", "allowed by actions[1]", p.digest, args_digest({"pin": 17, "value": 1})
    )


def test_plans_hold_only_the_rules_that_can_apply() -> None:
    p = parse_policy(DENIES)
    assert set(p.plans) == {"a", "b", "*"}
    a, b, other = p.plans["a"], p.plans["b"], p.plans["*"]
    assert [s.id for s in a.deny_by_name["y"]] == ["deny[0]"]
    assert [s.id for s in a.deny_by_name["x"]] == ["deny[1]", "deny[2]"]
    assert [s.id for s in b.deny_always] == ["deny[3]"] and set(b.deny_names) == {"x"}
    assert [s.id for s in other.deny_by_name["x"]] == ["deny[1]"] and not other.allow
    assert [r.id for r in a.allow] == ["actions[0]"] and not other.deny_always


def test_indexed_deny_rules_keep_file_order_and_need_every_argument() -> None:
    p = parse_policy(DENIES)
    assert _decide(p, "a", x=1, y=1).reason == "y first"  # both match: the first in the file wins
    assert _decide(p, "a", x=1).reason == "x second"
    assert _decide(p, "a", x=2).allowed  # deny[2] also needs z
    assert _decide(p, "a", x=2, z=3).reason == "x and z"
    assert _decide(p, "a", z=3, x=2, y=0).reason == "x and z"
    assert _decide(p, "b").reason == "b never"  # a window-only deny applies whatever the arguments
    assert _decide(p, "b", x=1).reason == "x second"
    assert _decide(p, "b", y=1).reason == "b never"
    assert _decide(p, "c", x=1).reason == "x second" and _decide(p, "c").rule == "default-deny"
    assert _decide(p, "*", x=1).reason == "x second"


def test_unhashable_values_are_refused_not_crashing() -> None:
    p = parse_policy(
        "actions:\n  - action: s\n    args: {pin: {enum: [1, 2]}}\ndeny:\n  - action: s\n    args: {pin: {enum: [9]}}\n"
    )
    for value in ({1}, bytearray(b"1"), [{1}]):
        d = _decide(p, "s", pin=value)
        assert not d.allowed and d.rule == "actions[0]" and "permitted values" in d.reason


def test_unknown_constraint_type_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown type"):
        ArgConstraint(name="x", type="integer")
    assert ArgConstraint(name="x", type="int").check("12") is None


def test_args_digest_falls_back_for_cycles_and_odd_keys() -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    assert args_digest({"x": cyclic}) == args_digest({"x": cyclic})
    assert args_digest({"x": cyclic}) != args_digest({"x": []})
    assert args_digest({1: "a"}) == args_digest({"1": "a"})  # keys as strings, as documented
    # the documented definition, computed independently: sorted keys, "," ":", UTF-8, repr for the rest
    text = '{"a":[2],"b":1.5,"c":"caf\u00e9","d":"b\'x\'"}'
    assert (
        args_digest({"d": b"x", "c": "caf\u00e9", "b": 1.5, "a": (2,)})
        == hashlib.sha256(text.encode("utf-8")).hexdigest()
    )
