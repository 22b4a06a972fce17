"""Numbers fail closed: NaN, infinities and huge integers are refused where they enter, and no range
check lets them through (issue 12)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from kestrel.policy import ActionRequest, PolicyError, PolicyState, evaluate, parse_policy

KESTREL = [sys.executable, "-m", "kestrel.cli"]


@pytest.mark.parametrize(
    "value, why",
    [
        (".nan", "finite number"),
        (".NaN", "finite number"),
        (".inf", "finite number"),
        ("-.inf", "finite number"),
        ("9" * 5000, "out of range"),
        ("9" * 25, "out of range"),
        ("-" + "9" * 20, "out of range"),
    ],
)
def test_non_finite_and_huge_numbers_are_policy_errors_with_line_and_column(value: str, why: str) -> None:
    text = f"actions:\n  - action: set_heater\n    args:\n      value: {{min: {value}, max: 10}}\n"
    with pytest.raises(PolicyError) as err:
        parse_policy(text)
    issue = err.value.issues[0]
    assert (issue.line, issue.column) == (4, 20) and why in issue.message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "1e999", "-1e999", "inf"])
def test_range_checks_fail_closed(value: object) -> None:
    for bounds in ("{min: 0, max: 0}", "{min: 0}", "{max: 0}", "{type: number}"):
        policy = parse_policy(f"actions:\n  - action: a\n    args:\n      value: {bounds}\n")
        d = evaluate(policy, ActionRequest("a", {"value": value}), PolicyState(), 0.0)
        assert not d.allowed, (bounds, value)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*KESTREL, *argv], capture_output=True, text=True, timeout=60)


def test_policy_check_reports_a_5000_digit_integer(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("actions:\n  - action: a\n    args:\n      value: {max: " + "9" * 5000 + "}\n")
    r = _cli("policy", "check", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and ":4:" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "text",
    [
        '{"value": NaN}',
        '{"value": Infinity}',
        '{"value": 1e999}',
        '{"value": ' + "9" * 5000 + "}",
        '{"a": 1, "a": 2}',
        "[" * 100000,
    ],
)
def test_call_args_json_refuses_what_is_not_strict_json(tmp_path, text: str) -> None:
    r = _cli("call", "--state", str(tmp_path), "--action", "set_heater", "--args-json", text)
    assert r.returncode == 64 and "Traceback" not in r.stderr and "--args-json" in r.stderr, r.stderr


def test_a_nested_quantifier_regex_decides_at_once() -> None:
    """(a+)+ froze the daemon's event loop under a backtracking engine; a DFA answers in one pass."""
    policy = parse_policy(
        'actions:\n  - action: send_email\n    args:\n      subject: {regex: "(a+)+", max_len: 120}\n'
    )
    d = evaluate(policy, ActionRequest("send_email", {"subject": "a" * 34 + "!"}), PolicyState(), 0.0)
    assert not d.allowed and "pattern" in d.reason
    assert evaluate(policy, ActionRequest("send_email", {"subject": "a" * 120}), PolicyState(), 0.0).allowed


def test_backreferences_are_refused_at_parse_time_with_position() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy('actions:\n  - action: a\n    args:\n      x: {regex: "(a)\\\\1"}\n')
    assert err.value.issues[0].line == 4 and "backreferences" in err.value.issues[0].message


def test_a_decision_that_runs_out_of_its_budget_is_a_policy_timeout_deny() -> None:
    policy = parse_policy("actions:\n  - action: a\n")
    d = evaluate(policy, ActionRequest("a", {}), PolicyState(), 0.0, expired=lambda: True)
    assert not d.allowed and d.rule == "policy_timeout" and "policy_timeout" in d.reason
    assert evaluate(policy, ActionRequest("a", {}), PolicyState(), 0.0, expired=lambda: False).allowed
