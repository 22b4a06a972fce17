"""The trigger expression language, templates, cron specs and the pure trigger engine."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel.daemon.config import parse_device_config
from kestrel.daemon.cron import CronError, parse_cron
from kestrel.daemon.expr import ExpressionError, compile_expression
from kestrel.daemon.template import Template
from kestrel.daemon.triggers import TriggerEngine

VALUES = {"t": 21.5, "door": 1, "w": {"temp": 30, "tags": ["a", "b"]}, "name": "porch", "gps": {"f": ["x", "3"]}}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("t > 20 and door == 1", True),
        ("t > 20 and not door", False),
        ("w.temp - 5 * 2 == 20", True),
        ("(1 + 2) * 3 % 4", 1),
        ("-t < 0", True),
        ("w.temp / 0", None),
        ("missing > 3", False),
        ("missing == null", True),
        ("missing + 1", None),
        ("'a' in w.tags and 'z' not in w.tags", True),
        ("name + '-1' == \"porch-1\"", True),
        ("abs(-2) + max(1, 5, 3) + min(4, 2) + round(2.6) + floor(1.9) + len(w.tags)", 2 + 5 + 2 + 3 + 1 + 2),
        ("str(door) + str(missing) + str(true)", "1nulltrue"),
        ("gps.f[1] == '3' and gps.f[9] == null and w['temp'] == 30", True),
        ("[1, 2, t][2]", 21.5),
        ("w.__class__.__name__", None),  # dotted names only read mappings: no attribute access
        ("missing.temp", None),  # not reported yet: null
        ("1e3 > 999.5 and .5 < 1", True),
        ("t > 'x' or true", None),  # type error -> raised, checked below
    ],
)
def test_evaluation(text, expected):
    e = compile_expression(text)
    if text.startswith("t > 'x'"):
        with pytest.raises(ExpressionError, match="cannot order"):
            e.evaluate(VALUES)
        return
    assert e.evaluate(VALUES) == expected


@pytest.mark.parametrize("text", ["t.__class__", "t.temp > 30", "name.len"])
def test_a_field_of_a_value_that_is_not_an_object_is_an_error(text):
    """A bare number on a JSON sensor's topic (t = 21.5, read as t.temp) is a fault, not a silent null."""
    with pytest.raises(ExpressionError, match="not an object with a field"):
        compile_expression(text).evaluate(VALUES)


@pytest.mark.parametrize(
    "text, words",
    [
        ("t >", "ends too early"),
        ("t = 1", "unexpected character"),
        ("__import__('os')", "unknown function"),
        ("lambda: 1", "unexpected"),
        ("(" * 40 + "1" + ")" * 40, "nested too deeply"),
        ("1 2", "unexpected text"),
        ("max()", "takes 1..16 arguments"),
        ("x" * 2000, "longer than"),
        ("", "non-empty"),
    ],
)
def test_bad_expressions_are_rejected_with_position(text, words):
    with pytest.raises(ExpressionError, match=words):
        compile_expression(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab1 .'\"()[]<>=!+-*/%,andortinulfe", max_size=60))
def test_fuzz_never_raises_anything_but_expression_error(text):
    try:
        e = compile_expression(text)
    except ExpressionError:
        return
    try:
        e.evaluate({"a": 1, "b": [1, 2], "ab": "x"})
    except ExpressionError:
        pass


def test_names_and_templates():
    assert compile_expression("w.temp > t and door").names == {"w", "t", "door"}
    t = Template.of({"msg": "temp ${w.temp} at ${name}", "v": "${door}", "n": [1, "${t}"], "plain": 5})
    assert t.render(VALUES) == {"msg": "temp 30 at porch", "v": 1, "n": [1, 21.5], "plain": 5}


CRON_CASES = [
    ("*/5 * * * *", dt.datetime(2026, 1, 1, 10, 3), dt.datetime(2026, 1, 1, 10, 5)),
    ("0 9 * * 1-5", dt.datetime(2026, 1, 3, 10, 3), dt.datetime(2026, 1, 5, 9, 0)),  # Sat -> Mon
    ("30 23 31 12 *", dt.datetime(2026, 6, 1), dt.datetime(2026, 12, 31, 23, 30)),
    ("0 0 29 2 *", dt.datetime(2026, 3, 1), dt.datetime(2028, 2, 29, 0, 0)),
    ("0 12 1 * 0", dt.datetime(2026, 1, 1, 13, 0), dt.datetime(2026, 1, 4, 12, 0)),  # dom OR dow
    ("15,45 */6 * * 7", dt.datetime(2026, 1, 4, 6, 20), dt.datetime(2026, 1, 4, 6, 45)),
]


@pytest.mark.parametrize("spec, after, expected", CRON_CASES)
def test_cron_next(spec, after, expected):
    c = parse_cron(spec)
    assert c.next_after(after) == expected and c.matches(expected)


@pytest.mark.parametrize("spec", ["* * * *", "60 * * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *", "0 0 31 2 *"])
def test_bad_cron(spec):
    with pytest.raises(CronError):
        parse_cron(spec).next_after(dt.datetime(2026, 1, 1))


def test_trigger_engine_rising_always_cooldown_and_faults():
    cfg = parse_device_config(
        """
sensors:
  x: {type: gpio, pin: 4}
  s: {type: periodic, every: 1, file: /dev/null}
triggers:
  - {name: rise, when: "x == 1", action: gpio.write, args: {v: "${x}"}}
  - {name: each, when: "x == 1", fire: always, cooldown: 10, action: gpio.write}
  - {name: bad, when: "s > 'str'", action: gpio.write}
""",
        source="t.yaml",
    )
    eng = TriggerEngine(cfg.triggers)
    vals = {"x": 1}
    props, faults = eng.on_sensor("x", vals, now=0.0)
    assert [p.source for p in props] == ["trigger:rise", "trigger:each"] and props[0].args == {"v": 1}
    assert eng.on_sensor("x", vals, now=1.0)[0] == []  # still true: rise does not refire; each is cooling
    assert [p.source for p in eng.on_sensor("x", vals, now=11.0)[0]] == ["trigger:each"]
    vals["x"] = 0
    assert eng.on_sensor("x", vals, now=12.0)[0] == []
    vals["x"] = 1
    assert [p.source for p in eng.on_sensor("x", vals, now=13.0)[0]] == ["trigger:rise"]
    props, faults = eng.on_sensor("s", {"s": 3}, now=14.0)
    assert props == [] and faults and faults[0].trigger == "bad" and "cannot order" in faults[0].message
