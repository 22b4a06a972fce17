"""Canonical action arguments: one parse, the form the policy decides on and the action executes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel.policy import ActionRequest, PolicyState, evaluate, parse_policy
from kestrel.policy.canonical import ArgsError, canonicalize, parse_address, parse_url

from .hostile import HOSTILE_RECIPIENTS, RECIPIENT_FRAGMENTS

DOMAIN_POLICY = parse_policy("""
actions:
  - action: send_email
    args:
      to: {domain: example.com}
""")


@pytest.mark.parametrize("to", HOSTILE_RECIPIENTS)
def test_a_recipient_that_is_not_exactly_one_bare_address_is_refused(to: str) -> None:
    with pytest.raises(ArgsError):
        canonicalize("send_email", {"to": to, "subject": "hi"})
    with pytest.raises(ArgsError):
        canonicalize("send_email", {"to": ["bob@example.com", to], "subject": "hi"})
    # and the policy's own domain check refuses it even when asked without canonicalisation
    d = evaluate(DOMAIN_POLICY, ActionRequest("send_email", {"to": to}), PolicyState(), 0.0)
    assert not d.allowed


def test_recipients_become_a_list_of_canonical_addresses() -> None:
    c = canonicalize("send_email", {"to": "Bob@EXAMPLE.com.", "subject": "s"})
    assert c == {"to": ["Bob@example.com"], "subject": "s", "body": ""}
    c = canonicalize("send_email", {"to": ["a@bücher.example", "a@xn--bcher-kva.example"]})
    assert c["to"] == ["a@xn--bcher-kva.example"]  # IDNA: one domain, one recipient
    assert canonicalize("send_email", c) == c  # idempotent: the handler re-parses the same form


def test_the_domain_constraint_sees_the_normalised_domain() -> None:
    policy = parse_policy("actions:\n  - action: send_email\n    args:\n      to: {domain: bücher.example}\n")
    for to in ("a@BÜCHER.example", "a@xn--bcher-kva.example"):
        req = ActionRequest("send_email", canonicalize("send_email", {"to": to}))
        assert evaluate(policy, req, PolicyState(), 0.0).allowed, to


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(RECIPIENT_FRAGMENTS), min_size=1, max_size=12).map("".join))
def test_allowed_implies_every_recipient_is_in_the_domain(to: str) -> None:
    try:
        args = canonicalize("send_email", {"to": to})
    except ArgsError:
        return
    d = evaluate(DOMAIN_POLICY, ActionRequest("send_email", args), PolicyState(), 0.0)
    if d.allowed:
        assert all(parse_address(a).domain == "example.com" and a.count("@") == 1 for a in d.args["to"])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:80@evil.com/",
        "http://evil.com\\@127.0.0.1/",
        "http://user@127.0.0.1/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://127.1/",
        "http://017700000001/",
        "ftp://127.0.0.1/",
        "http://127.0.0.1:0/",
        "http://127.0.0.1:99999/",
        "http://[::1%25eth0]/",
        "http:///x",
        "http://a b/",
        "http://%31%32%37.0.0.1/",
        "javascript:alert(1)",
        "http://127.0.0.1:8080:80/",
    ],
)
def test_ambiguous_urls_have_no_canonical_form(url: str) -> None:
    with pytest.raises(ArgsError):
        canonicalize("fetch_data", {"url": url})


def test_urls_are_normalised_once() -> None:
    u = parse_url("HTTP://Example.COM.:80/a/./b/../c%7e%2f?q=%41#frag")
    assert (u.scheme, u.host, u.port, u.target) == ("http", "example.com", 80, "/a/c~%2F?q=A")
    assert u.text == "http://example.com/a/c~%2F?q=A"
    assert parse_url(u.text) == u
    assert parse_url("https://[0:0::1]:8443").text == "https://[::1]:8443/"


@pytest.mark.parametrize("topic", ["a/#", "a/+/b", "#", "+", "$SYS/x", "a\0b", ""])
def test_mqtt_topics_with_wildcards_are_refused(topic: str) -> None:
    with pytest.raises(ArgsError):
        canonicalize("mqtt.publish", {"topic": topic, "payload": "x"})


def test_mqtt_and_gpio_values_take_one_type() -> None:
    c = canonicalize("mqtt.publish", {"topic": "a/b", "payload": {"v": 1}, "retain": "false", "qos": "0"})
    assert c == {"topic": "a/b", "payload": {"v": 1}, "qos": 0, "retain": False}
    with pytest.raises(ArgsError):
        canonicalize("mqtt.publish", {"topic": "a/b", "retain": "no"})
    assert canonicalize("gpio.write", {"actuator": "lamp", "value": "ON"}) == {"actuator": "lamp", "value": 1}
    with pytest.raises(ArgsError):
        canonicalize("gpio.write", {"actuator": "lamp", "value": 2})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1 << 64, {"x": [math.nan]}, {1: "x"}, b"x"])
def test_any_action_refuses_non_json_and_non_finite_values(value: object) -> None:
    with pytest.raises(ArgsError):
        canonicalize("set_heater", {"value": value})


def test_nesting_is_bounded() -> None:
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ArgsError, match="nested"):
        canonicalize("anything", {"v": deep})


def test_a_host_argument_is_read_as_a_url_host_is() -> None:
    from kestrel.policy import destination

    assert destination({"host": "Example.COM."}) == ("example.com", None)
    assert destination({"host": "[::1]", "port": 8883}) == ("::1", 8883)
    for host in ("127.1", "0x7f.0.0.1", "2130706433", "fe80::1%eth0"):
        with pytest.raises(ValueError):
            destination({"host": host})
