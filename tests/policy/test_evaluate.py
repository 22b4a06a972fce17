"""Pure evaluation: default deny, argument constraints, rates, windows, network, deny precedence."""

from __future__ import annotations

import calendar

import pytest

from kestrel.policy import ActionRequest, PolicyState, args_digest, evaluate, parse_policy

from .test_parse import FULL, SEED

# Wednesday 2026-11-25 10:00 UTC (11:00 at +01:00)
WED_10 = float(calendar.timegm((2026, 11, 25, 10, 0, 0)))
SAT_10 = WED_10 + 3 * 86400


def decide(policy_text: str, action: str, now: float = WED_10, state: PolicyState = PolicyState(), **args):
    return evaluate(parse_policy(policy_text), ActionRequest(action, args), state, now)


def test_no_policy_denies_everything() -> None:
    d = evaluate(None, ActionRequest("send_email", {}), PolicyState(), WED_10)
    assert not d.allowed and d.rule == "default-deny"


def test_seed_policy() -> None:
    assert decide(SEED, "send_email", to="a@b.example").allowed
    assert decide(SEED, "schedule_event").rule == "actions[1]"
    d = decide(SEED, "delete_files")
    assert not d.allowed and d.rule == "default-deny"
    d = decide(SEED, "fetch_data", url="https://evil.example/x")
    assert not d.allowed and d.rule == "restrictions[0]"
    assert decide(SEED, "fetch_data", url="http://127.0.0.1:8080/sensor").allowed
    assert not decide(SEED, "fetch_data").allowed  # a network action must name its destination
    d = decide(SEED, "send_email", to="a@b.example", host="smtp.relay.example", port=587)
    assert not d.allowed and d.rule == "restrictions[0]"


def test_argument_constraints() -> None:
    assert decide(FULL, "send_email", to="bob@example.com").allowed
    assert decide(FULL, "send_email", to=["bob@example.com", "amy@example.org"]).allowed
    d = decide(FULL, "send_email", to=["bob@example.com", "eve@attacker.example"])
    assert not d.allowed and "domain" in d.reason and d.rule == "actions[0]"
    assert not decide(FULL, "send_email", to="bob@example.com.attacker.example").allowed
    assert not decide(FULL, "send_email", to="@example.com").allowed
    assert not decide(FULL, "send_email").allowed  # 'to' is required
    assert not decide(FULL, "send_email", to="bob@example.com", subject="caf\u00e9").allowed
    assert not decide(FULL, "send_email", to="bob@example.com", subject="x" * 121).allowed
    assert decide(FULL, "set_pin", pin=17, value=1).allowed
    assert decide(FULL, "set_pin", pin="27", value="0").allowed  # CLI strings
    assert not decide(FULL, "set_pin", pin=4, value=1).allowed
    assert not decide(FULL, "set_pin", pin=17, value=2).allowed
    assert not decide(FULL, "set_pin", pin=17, value=True).allowed
    assert not decide(FULL, "set_pin", pin=17, value="1e999").allowed


def test_deny_rules_win_over_allows() -> None:
    d = decide(FULL, "send_email", to=["bob@example.com", "ceo@competitor.example"])
    assert not d.allowed and d.rule == "deny[0]" and d.reason == "never mail the competitor"
    night = WED_10 - 8 * 3600 + 30 * 60  # 02:30 UTC
    d = decide(FULL, "set_pin", night, pin=17, value=1)
    assert not d.allowed and d.rule == "deny[1]"


def test_time_windows() -> None:
    assert decide(FULL, "send_email", WED_10, to="bob@example.com").allowed
    d = decide(FULL, "send_email", SAT_10, to="bob@example.com")
    assert not d.allowed and "time window" in d.reason
    assert not decide(FULL, "send_email", WED_10 + 7.5 * 3600, to="bob@example.com").allowed  # 18:30 +01:00
    assert decide(FULL, "send_email", WED_10 - 2 * 3600 + 60, to="bob@example.com").allowed  # 09:01 +01:00
    wrap = "actions:\n  - action: a\n    window: {days: [fri], hours: '22:00-06:00'}\n"
    fri_23 = WED_10 + 2 * 86400 + 13 * 3600
    assert decide(wrap, "a", fri_23).allowed
    assert decide(wrap, "a", fri_23 + 5 * 3600).allowed  # Saturday 04:00 is still Friday's night
    assert not decide(wrap, "a", fri_23 + 8 * 3600).allowed
    assert not decide(wrap, "a", fri_23 - 86400).allowed  # Thursday 23:00


def test_time_windows_in_an_iana_zone_follow_daylight_saving_time() -> None:
    """Europe/Berlin moves from +01:00 to +02:00 on 2026-03-29 and back on 2026-10-25."""
    berlin = "actions:\n  - action: a\n    window: {hours: '08:00-18:00', tz: Europe/Berlin}\n"
    fixed = "actions:\n  - action: a\n    window: {hours: '08:00-18:00', utc_offset: '+01:00'}\n"
    utc = lambda *t: calendar.timegm((2026, *t, 0, 0))  # noqa: E731
    summer_0630, summer_1630 = utc(3, 30, 6, 30), utc(3, 30, 16, 30)  # 08:30 and 18:30 in Berlin (CEST)
    assert decide(berlin, "a", summer_0630).allowed and not decide(fixed, "a", summer_0630).allowed
    assert not decide(berlin, "a", summer_1630).allowed and decide(fixed, "a", summer_1630).allowed
    winter_0730 = utc(3, 28, 7, 30)  # 08:30 in Berlin (CET), the day before the change
    assert decide(berlin, "a", winter_0730).allowed and decide(fixed, "a", winter_0730).allowed
    assert decide(berlin, "a", utc(10, 26, 7, 30)).allowed  # back to CET: 08:30
    assert not decide(berlin, "a", utc(10, 26, 6, 30)).allowed  # 07:30 CET
    # the local day counts: Monday 07:00 in Auckland (+13:00) is still Sunday in UTC
    monday = "actions:\n  - action: a\n    window: {days: [mon], hours: '06:00-09:00', tz: Pacific/Auckland}\n"
    sunday_1800_utc = utc(1, 4, 18, 0)  # 2026-01-04 was a Sunday
    assert decide(monday, "a", sunday_1800_utc).allowed
    assert not decide(monday, "a", sunday_1800_utc + 86400).allowed  # Tuesday 07:00 there


def test_rate_limit_sliding_window() -> None:
    p = parse_policy("actions:\n  - action: ping\n    rate: {count: 3, per: 60}\n")
    state = PolicyState()
    t = WED_10
    for i in range(3):
        d = evaluate(p, ActionRequest("ping", {}), state, t + i)
        assert d.allowed and d.rate_key == "ping"
        state = state.record(d, t + i, horizon=p.rate_windows)
    d = evaluate(p, ActionRequest("ping", {}), state, t + 10)
    assert not d.allowed and "rate limit" in d.reason
    assert evaluate(p, ActionRequest("ping", {}), state, t + 60.5).allowed
    assert PolicyState(saturated_until=t + 1).count("ping", t) == 0
    assert not evaluate(p, ActionRequest("ping", {}), PolicyState(saturated_until=t + 1), t).allowed


def test_network_allow_list() -> None:
    assert decide(FULL, "fetch_data", url="https://api.example.com/v1").allowed
    assert not decide(FULL, "fetch_data", url="http://api.example.com/v1").allowed  # port 80
    assert decide(FULL, "fetch_data", url="https://radar.weather.example:8443/").allowed
    assert not decide(FULL, "ask_llm", url="https://radar.weather.example/").allowed  # scoped to fetch_data
    assert decide(FULL, "ask_llm", url="https://api.example.com/v1/chat").allowed
    assert not decide(FULL, "ask_llm").allowed
    assert not decide(FULL, "fetch_data", url="https://weather.example.evil/").allowed
    for bad in ({"url": "not a url"}, {"url": "https://x:99999/"}, {"host": "a/b"}, {"host": "h", "port": "x"}):
        d = decide(FULL, "fetch_data", **bad)
        assert not d.allowed and d.rule == "network", bad
    open_net = "actions: [fetch_data]\n"
    assert decide(open_net, "fetch_data", url="https://anywhere.example/").allowed


def test_first_matching_allow_rule_wins_and_reason_is_first_failure() -> None:
    text = (
        "actions:\n  - action: move\n    args: {speed: {max: 1}}\n"
        "  - action: move\n    args: {speed: {max: 5}, operator: {equals: root}}\n"
    )
    assert decide(text, "move", speed=0.5).rule == "actions[0]"
    assert decide(text, "move", speed=3, operator="root").rule == "actions[1]"
    d = decide(text, "move", speed=3)
    assert not d.allowed and d.rule == "actions[0]" and "above" in d.reason


def test_deterministic_and_digests() -> None:
    p = parse_policy(FULL)
    r = ActionRequest("send_email", {"to": "bob@example.com", "subject": "hi"})
    a, b = evaluate(p, r, PolicyState(), WED_10), evaluate(p, r, PolicyState(), WED_10)
    assert a == b and a.policy_digest == p.digest
    assert a.args_digest == args_digest({"subject": "hi", "to": "bob@example.com"})
    assert a.args_digest != args_digest({"to": "bob@example.com"})


@pytest.mark.parametrize("args", [{"to": {"nested": 1}}, {"to": [[1]]}, {"to": None}, {"to": []}])
def test_odd_argument_types_are_denied_not_crashing(args) -> None:
    assert not decide(FULL, "send_email", **args).allowed


def test_args_digest_of_awkward_arguments() -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    for args in ({1: "a", "b": 2}, {"x": cyclic}, {"x": {2: [object()]}}):
        d = evaluate(parse_policy(FULL), ActionRequest("send_email", args), PolicyState(), WED_10)
        assert not d.allowed and len(d.args_digest) == 64
    assert args_digest({1: "a"}) == args_digest({1: "a"}) != args_digest({2: "a"})
