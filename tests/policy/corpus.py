"""A fixed corpus of (policy, request, state, now) cases and its recorded decisions.

``golden_decisions.json`` holds the decisions the straightforward evaluator (before the
compiled evaluation plans, commit 0bf3b5b) gave for every case, so that any later
optimisation is checked against the same observable behaviour: rule, reason, allow/deny,
rate key and the args digest values. Regenerate only for a deliberate behaviour change::

    .venv/bin/python -m tests.policy.corpus --write
"""

from __future__ import annotations

import calendar
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kestrel.policy import ActionRequest, PolicyState, args_digest, evaluate, parse_policy

from .test_parse import FULL, SEED

GOLDEN = Path(__file__).with_name("golden_decisions.json")
EXAMPLES = Path(__file__).resolve().parents[2] / "ota" / "policies"

EDGE = """version: 1
actions:
  - action: typed
    args:
      s: {type: str, optional: true}
      i: {type: int, optional: true}
      n: {type: number, min: -2.5, max: 1000.0, optional: true}
      b: {type: bool, optional: true}
  - action: typed
    args:
      e: {equals: 7}
      f: {equals: "yes", optional: true}
      g: {equals: true, optional: true}
  - action: pick
    args:
      v: {enum: [1, two, 3.5, false]}
      w: {enum: [x], optional: true}
    rate: {count: 2, per: 30s, key: shared}
  - action: pick
    args:
      v: {min: 100}
    window: {days: [sat, sun], hours: "22:00-02:00", utc_offset: "-05:30"}
  - action: mail
    args:
      to: {domain: Example.COM, max_len: 20}
      tag: {regex: "[a-z]+(-[a-z]+)*", max_len: 12, optional: true}
    rate: {count: 1, per: 1m, key: shared}
  - action: net
    network: true
  - action: hook
  - action: quiet
    window: {hours: "09:00-17:00"}
restrictions:
  - no_external_network
  - no_external_network unless explicitly permitted
network:
  actions: [hook]
  allow:
    - {host: api.example.com, port: 443}
    - {host: api.example.com, port: 8443, actions: [hook]}
    - {host: any.example}
    - {host: "*.svc.example", actions: [net, hook]}
    - {host: "*.open.example", port: 80}
deny:
  - action: pick
    args: {v: {enum: [3.5]}, w: {enum: [x]}}
    reason: not that pair
  - action: "*"
    args: {danger: {equals: yes}}
  - quiet
  - action: "*"
    window: {days: [sun], hours: "23:00-23:30"}
  - action: mail
    args: {to: {regex: "root@.*", max_len: 64}}
"""

# Wednesday 2026-11-25 10:00 UTC and a spread of other instants (windows, wraps, weekends).
WED_10 = float(calendar.timegm((2026, 11, 25, 10, 0, 0)))
TIMES = (
    WED_10,
    WED_10 - 8 * 3600 + 1800,
    WED_10 + 3 * 86400 + 13 * 3600 + 1800,
    WED_10 + 4 * 86400 + 13 * 3600 + 10,
    WED_10 + 4 * 86400 + 13 * 3600 + 1790,
    0.0,
)

ARGSETS: tuple[dict[str, Any], ...] = (
    {},
    {"to": "bob@example.com"},
    {"to": "BOB@Example.Com"},
    {"to": "bob@example.com.evil"},
    {"to": "@example.com"},
    {"to": ["bob@example.com", "amy@example.org"]},
    {"to": ["bob@example.com", "ceo@competitor.example"]},
    {"to": "x+y@family.example"},
    {"to": "mum@family.example", "subject": "hello"},
    {"to": "bob@example.com", "subject": "caf\u00e9"},
    {"to": "root@example.com"},
    {"to": []},
    {"to": [[1]]},
    {"to": {"nested": 1}},
    {"to": None},
    {"pin": 17, "value": 1},
    {"pin": "27", "value": "0"},
    {"pin": 4, "value": 1},
    {"pin": 17, "value": True},
    {"pin": 17, "value": "1e999"},
    {"pin": 17.0, "value": 1.0},
    {"celsius": "12.5"},
    {"topic": "greenhouse/a/b"},
    {"topic": "greenhouse/" + "x" * 80},
    {"url": "https://api.example.com/v1"},
    {"url": "http://api.example.com/v1"},
    {"url": "https://API.Example.com.:443/v1"},
    {"url": "https://radar.weather.example:8443/"},
    {"url": "https://a.svc.example/"},
    {"url": "http://b.open.example/"},
    {"url": "https://b.open.example/"},
    {"url": "https://any.example:9/"},
    {"url": "http://127.0.0.1:8080/x"},
    {"url": "http://localhost/x"},
    {"url": "not a url"},
    {"url": "https://x:99999/"},
    {"url": 5},
    {"host": "api.example.com", "port": 8443},
    {"host": "api.example.com", "port": "443"},
    {"host": "API.example.com."},
    {"host": "a/b"},
    {"host": "h", "port": "x"},
    {"host": "h", "port": True},
    {"host": "h", "port": 0},
    {"host": "::1", "port": 22},
    {"s": "a", "i": "-12", "n": "1e2", "b": "true"},
    {"s": 1, "i": True},
    {"i": "1.5"},
    {"n": -3},
    {"n": float("nan")},
    {"n": float("inf")},
    {"b": 1},
    {"e": 7},
    {"e": 7.0, "f": "yes", "g": True},
    {"e": True},
    {"e": "7"},
    {"v": 1},
    {"v": "1"},
    {"v": "two"},
    {"v": "3.5"},
    {"v": 3.5, "w": "x"},
    {"v": [1, "two"]},
    {"v": [1, "zzz"]},
    {"v": False},
    {"v": 0},
    {"v": 150},
    {"v": "150"},
    {"v": {"k": 1}},
    {"to": "bob@example.com", "tag": "a-b"},
    {"to": "bob@example.com", "tag": "a--b"},
    {"to": "averyveryverylongname@example.com"},
    {"danger": "yes"},
    {"danger": ["no", "yes"]},
    {"danger": True},
    {"forbidden": "yes", "x": [1, 2.5, None, "\u00fc", {"b": 1, "a": [True]}]},
    {"x": b"bytes", "y": (1, 2)},
)

_STATES = {
    "empty": PolicyState(),
    "busy": PolicyState(
        {
            "send_email": tuple(WED_10 - 10 - i for i in range(30)),
            "shared": (WED_10 - 5,),
            "ask_llm": (WED_10 - 1,),
            "gpio.write": tuple(WED_10 - 30 - i * 0.01 for i in range(600)),
        }
    ),
    "saturated": PolicyState(saturated_until=WED_10 + 1),
}


def policies() -> dict[str, str]:
    out = {"seed": SEED, "full": FULL, "edge": EDGE}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        out["example:" + path.name] = path.read_text()
    return out


def actions(text: str) -> list[str]:
    p = parse_policy(text)
    names = sorted(set(p.allow) | {r.action for r in p.deny if r.action != "*"})
    return names + ["unknown_action"]


def cases(text: str) -> Iterator[tuple[str, int, str, float]]:
    """(action, index into ARGSETS, state name, now) for one policy, in a fixed order."""
    for action in actions(text):
        for i in range(len(ARGSETS)):
            for state in _STATES:
                for now in TIMES if state == "empty" else TIMES[:1]:
                    yield action, i, state, now


def outcomes(text: str) -> list[list[Any]]:
    """[allowed, rule, reason, rate_key, args index] of every case of one policy."""
    policy = parse_policy(text)
    out = []
    for action, i, state, now in cases(text):
        d = evaluate(policy, ActionRequest(action, ARGSETS[i]), _STATES[state], now)
        assert d.policy_digest == policy.digest and d.action == action
        out.append([d.allowed, d.rule, d.reason, d.rate_key, d.args_digest])
    return out


def record() -> dict[str, Any]:
    digests = [args_digest(a) for a in ARGSETS]
    table: dict[tuple, int] = {}
    per_policy = {}
    for name, text in policies().items():
        rows = []
        for allowed, rule, reason, rate_key, adigest in outcomes(text):
            key = (allowed, rule, reason, rate_key)
            rows.append([table.setdefault(key, len(table)), digests.index(adigest)])
        per_policy[name] = {"policy_digest": parse_policy(text).digest, "decisions": rows}
    return {"args_digests": digests, "outcomes": [list(k) for k in table], "policies": per_policy}


if __name__ == "__main__":
    if "--write" in sys.argv:
        GOLDEN.write_text(json.dumps(record(), separators=(",", ":")) + "\n")
    print(f"{GOLDEN}: {sum(len(p['decisions']) for p in record()['policies'].values())} decisions")
