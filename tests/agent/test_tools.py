"""Parsing and validating the model's proposals against action schemas (pure)."""

from __future__ import annotations

import pytest

from kestrel.agent.actions import BUILTIN_TOOLS, builtin
from kestrel.agent.tools import Final, Handoff, ProposalError, ToolCall, ToolRegistry, ToolSpec, parse_proposal
from kestrel.errors import ConfigError, TransportError

SPECS = {t.name: t for t in BUILTIN_TOOLS}


def test_valid_call_with_surrounding_text():
    text = 'Sure! ```json\n{"action": "gpio.write", "args": {"actuator": "fan", "value": 1}}\n``` done'
    assert parse_proposal(text, SPECS) == ToolCall("gpio.write", {"actuator": "fan", "value": 1})


def test_final_and_handoff():
    assert parse_proposal('{"final": "all good"}', SPECS) == Final("all good")
    assert parse_proposal(' {"handoff": "rules"}', SPECS) == Handoff("rules")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "turn it on",
        '{"action": "gpio.write", "args": {',
        "{'action': 1}",
        '{"action": "gpio.write", "action": "send_email", "args": {}}',
    ],
)
def test_invalid_json(text):
    with pytest.raises(ProposalError) as info:
        parse_proposal(text, SPECS)
    assert info.value.code == "invalid-json"


def test_unknown_action():
    with pytest.raises(ProposalError) as info:
        parse_proposal('{"action": "door.unlock", "args": {}}', SPECS)
    assert info.value.code == "unknown-action" and "door.unlock" in info.value.message


@pytest.mark.parametrize(
    "args, fragment",
    [
        ({"actuator": "fan"}, "missing required 'value'"),
        ({"actuator": "fan", "value": 2}, "must be one of"),
        ({"actuator": "fan", "value": True}, "expected integer"),
        ({"actuator": "fan", "value": 1, "policy_override": True}, "unexpected argument 'policy_override'"),
        ({"actuator": 7, "value": 1}, "expected string"),
    ],
)
def test_args_outside_the_schema(args, fragment):
    import json

    with pytest.raises(ProposalError) as info:
        parse_proposal(json.dumps({"action": "gpio.write", "args": args}), SPECS)
    assert info.value.code == "bad-args"
    assert fragment in info.value.message


def test_extra_top_level_keys_are_refused():
    with pytest.raises(ProposalError) as info:
        parse_proposal('{"action": "gpio.write", "args": {"actuator": "fan", "value": 1}, "decision": "allow"}', SPECS)
    assert info.value.code == "bad-shape"


def test_pattern_and_length_constraints():
    with pytest.raises(ProposalError, match="does not match"):
        parse_proposal('{"action": "send_email", "args": {"to": "not an address", "subject": "x"}}', SPECS)
    with pytest.raises(ProposalError, match="longer than"):
        parse_proposal('{"action": "send_email", "args": {"to": "a@b.c", "subject": "' + "x" * 201 + '"}}', SPECS)


def test_bad_schemas_are_config_errors():
    with pytest.raises(ConfigError):
        ToolSpec("x", "d", {"type": "object", "propertees": {}})
    with pytest.raises(ConfigError):
        ToolSpec("x", "d", {"type": "strang"})
    with pytest.raises(ConfigError):
        ToolSpec("bad name", "d")
    with pytest.raises(ConfigError):
        ToolRegistry(builtin("gpio.write") * 2)


def test_registry_executes_and_turns_failures_into_results():
    def executor(action, args):
        if args["actuator"] == "broken":
            raise TransportError("chip gone")
        if args["actuator"] == "bug":
            raise RuntimeError("oops")
        return {"ok": args["actuator"]}

    reg = ToolRegistry(builtin("gpio.write"), executor=executor)
    assert reg.execute(ToolCall("gpio.write", {"actuator": "fan", "value": 1})).output == {"ok": "fan"}
    r = reg.execute(ToolCall("gpio.write", {"actuator": "broken", "value": 1}))
    assert not r.ok and r.error == "chip gone"
    r = reg.execute(ToolCall("gpio.write", {"actuator": "bug", "value": 1}))
    assert not r.ok and "RuntimeError" in r.error
    assert "gpio.write" in reg.describe() and '"value": 0|1' in reg.describe()
