"""Policy parsing: the seed form, the full form, and every error with its line and column."""

from __future__ import annotations

import pytest

from kestrel.policy import PolicyError, parse_policy

SEED = """actions:
  - send_email
  - schedule_event
  - fetch_data
restrictions:
  - no_external_network unless explicitly permitted
"""

FULL = """version: 1
actions:
  - action: send_email
    args:
      to: {domain: [example.com, example.org]}
      subject: {regex: "[ -~]*", max_len: 120, optional: true}
    rate: {count: 10, per: 1h}
    window: {days: [mon, tue, wed, thu, fri], hours: "08:00-18:00", utc_offset: "+01:00"}
  - action: set_pin
    args:
      pin: {enum: [17, 27]}
      value: {type: int, min: 0, max: 1}
  - fetch_data
  - action: ask_llm
    network: true
restrictions:
  - no_external_network unless explicitly permitted
network:
  allow:
    - {host: api.example.com, port: 443}
    - {host: "*.weather.example", actions: [fetch_data]}
deny:
  - action: send_email
    args: {to: {domain: competitor.example}}
    reason: never mail the competitor
  - action: "*"
    window: {hours: "02:00-03:00"}
"""


def test_seed_policy_parses_as_written() -> None:
    p = parse_policy(SEED)
    assert set(p.allow) == {"send_email", "schedule_event", "fetch_data"}
    assert p.no_external_network and p.restriction_id == "restrictions[0]"
    assert len(p.digest) == 64


def test_full_policy() -> None:
    p = parse_policy(FULL)
    rule = p.allow["send_email"][0]
    assert rule.id == "actions[0]" and rule.rate.count == 10 and rule.rate.per == 3600
    assert rule.window.days == frozenset(range(5)) and rule.window.offset_min == 60
    assert [r.id for r in p.deny] == ["deny[0]", "deny[1]"]
    assert "ask_llm" in p.network_actions and "fetch_data" in p.network_actions
    assert p.net_allow[1].host == "*.weather.example"
    assert p.rate_windows == {"send_email": 3600.0}


def test_digest_is_of_exact_bytes() -> None:
    assert parse_policy(SEED).digest != parse_policy(SEED + "\n").digest


BAD = """actions:
  - send_email
  - action: set_pin
    args:
      pin: {enum: []}
      level: {min: 5, max: 1}
      name: {regex: "([a-z]+"}
    rate: {count: 0, per: 1y}
    window: {days: [someday], hours: "8-18"}
  - 42
  - action: bad name!
restrictions:
  - no_internet
network:
  allow:
    - {host: "http://x.example/", port: 70000}
deny:
  - action: x
    rate: {count: 1, per: 1}
colour: blue
"""


def test_every_error_reported_with_line_and_column() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(BAD, source="bad.yaml")
    issues = info.value.issues
    where = {(i.line, i.column) for i in issues}
    text = "\n".join(str(i) for i in issues)
    expected = [
        (5, 19, "enum must list at least one value"),
        (6, 20, "min is greater than max"),
        (7, 21, "not a valid regular expression"),
        (8, 19, "count must be between"),
        (8, 27, "per must be seconds or a duration"),
        (9, 21, "unknown day 'someday'"),
        (9, 38, "hours must look like"),
        (10, 5, "must be a string"),
        (11, 13, "not a valid action name"),
        (13, 5, "unknown restriction 'no_internet'"),
        (16, 14, "not a URL"),
        (16, 41, "port must be between"),
        (19, 5, "unknown key 'rate'"),
        (20, 1, "unknown key 'colour'"),
    ]
    for line, col, msg in expected:
        assert any(i.line == line and i.column == col and msg in i.message for i in issues), (line, col, msg, text)
    assert len(issues) == len(expected), text
    assert sorted(where) == sorted((i.line, i.column) for i in issues)
    assert "bad.yaml:5:19:" in str(info.value)


@pytest.mark.parametrize(
    "text,line,col,msg",
    [
        ("actions: [a\n", 2, 1, "YAML syntax"),
        ("", 1, 1, "empty"),
        ("- a\n", 1, 1, "must be a mapping"),
        ("restrictions: []\n", 1, 1, "no 'actions'"),
        ("actions: [a]\nactions: [b]\n", 2, 1, "duplicate key 'actions'"),
        ("base: &x [a]\nactions: *x\n", 2, 10, "aliases are not allowed"),
        ("actions: [a]\nversion: 2\n", 2, 10, "unsupported policy version 2"),
        ("actions:\n  - action: a\n    args: {n: {}}\n", 3, 15, "has no constraint"),
        ("actions:\n  - action: a\n    rate: {count: 5}\n", 3, 11, "needs both"),
        ("actions:\n  - args: {}\n", 2, 5, "has no 'action'"),
        ("actions:\n  - action: a\n    network: yes please\n", 3, 14, "must be a boolean"),
        ("actions:\n  - action: a\n    window: {tz: Mars/Olympus}\n", 3, 18, "unknown time zone 'Mars/Olympus'"),
        ("actions:\n  - action: a\n    window: {tz: ../../etc/passwd}\n", 3, 18, "unknown time zone"),
        ("actions:\n  - action: a\n    window: {tz: UTC, utc_offset: '+01:00'}\n", 3, 18, "not both"),
    ],
)
def test_single_errors(text: str, line: int, col: int, msg: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    first = info.value.issues[0]
    assert (first.line, first.column) == (line, col) and msg in first.message, info.value.issues


def test_limits() -> None:
    with pytest.raises(PolicyError, match="larger than"):
        parse_policy("#" * (2 << 20))
    with pytest.raises(PolicyError, match="longer than"):
        parse_policy('actions:\n  - action: a\n    args: {x: {regex: "' + "a" * 600 + '"}}\n')
    with pytest.raises(PolicyError, match="not UTF-8"):
        parse_policy(b"actions: [\xff]\n")


def test_billion_laughs_refused_quickly() -> None:
    lol = (
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=False)
        )
        + "actions: [*i]\n"
    )
    with pytest.raises(PolicyError, match="aliases"):
        parse_policy(lol)


def test_absurd_nesting_is_an_error() -> None:
    with pytest.raises(PolicyError, match="nesting"):
        parse_policy("actions: " + "[" * 100_000 + "]" * 100_000)
