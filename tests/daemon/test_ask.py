"""`ask` through the daemon: the planner proposes, the daemon's policy decides, the action runs
(output pin, ``action.result``), every step streams back; refusals and budgets end the loop."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kestrel.agent.llm import ScriptedModel
from kestrel.cli import main
from kestrel.sdk import Client, RemoteError

from .conftest import in_thread, running, until

CONFIG = """
    version: 1
    actuators:
      fan: {type: gpio, pin: GPIO27}
      heater: {type: gpio, pin: GPIO22}
"""
POLICY = """
    actions:
      - gpio.write
    deny:
      - action: gpio.write
        args:
          actuator: {enum: [heater]}
        reason: the heater is off limits
"""
FAN_ON = '{"action": "gpio.write", "args": {"actuator": "fan", "value": 1}}'
HEATER_ON = '{"action": "gpio.write", "args": {"actuator": "heater", "value": 1}}'
TOOLS = ["gpio.write", "send_email"]


def ask(state: Path, goal: str, **options) -> list[dict]:
    with Client(state) as k:
        return list(k.ask(goal, **options))


def results(agent) -> list[dict]:
    agent.ledger.flush()
    return agent.kinds("action.result")


async def test_allowed_call_executes_and_streams_each_step(agent):
    async with running(agent, CONFIG, policy=POLICY) as d:
        d.asks.model = ScriptedModel([FAN_ON, '{"final": "the fan is on"}'])
        items = await in_thread(ask, agent.state, "turn on the fan", tools=TOOLS)
        assert d.hardware.outputs["fan"].value == 1
    steps, outcome = items[:-1], items[-1]
    assert [s["type"] for s in steps] == ["step", "step"] and outcome["type"] == "outcome"
    assert steps[0]["call"] == {"action": "gpio.write", "args": {"actuator": "fan", "value": 1}}
    assert steps[0]["decision"]["allowed"] is True and steps[0]["result"]["ok"] is True
    assert "ALLOW by actions[0]" in steps[0]["text"]
    assert outcome["status"] == "done" and outcome["final"] == "the fan is on" and outcome["executed"] is True
    done = [r for r in results(agent) if r["action"] == "gpio.write"]
    assert len(done) == 1 and done[0]["ok"] is True and done[0]["source"].startswith("ask:uid=")
    recorded = agent.kinds("planner.step")
    assert [r["step"] for r in recorded] == [1, 2] and recorded[0]["decision"]["allowed"] is True
    assert steps[0]["seq"] is not None
    agent.ledger.verify()


async def test_refused_call_is_recorded_and_not_executed(agent):
    async with running(agent, CONFIG, policy=POLICY) as d:
        d.asks.model = ScriptedModel([HEATER_ON, HEATER_ON, FAN_ON])
        items = await in_thread(ask, agent.state, "heat the room", tools=TOOLS)
        assert d.hardware.outputs["heater"].value == 0
    outcome = items[-1]
    assert outcome["status"] == "refused" and outcome["decisions"] == [False, False]
    assert items[:-1] and all(s["decision"]["rule"] == "deny[0]" and s["result"] is None for s in items[:-1])
    assert not [r for r in results(agent) if r["action"] == "gpio.write"]
    denials = [r for r in agent.kinds("policy.decision") if r["action"] == "gpio.write"]
    assert [r["decision"] for r in denials] == ["deny", "deny"]


async def test_budgets_end_the_loop(agent):
    async with running(agent, CONFIG, policy=POLICY) as d:
        d.asks.model = ScriptedModel([FAN_ON] * 5)
        items = await in_thread(ask, agent.state, "keep the fan on", tools=TOOLS, budgets={"max_steps": 2})
    assert items[-1]["status"] == "steps" and items[-1]["steps"] == 2
    assert len([r for r in results(agent) if r["action"] == "gpio.write"]) == 2


async def test_rules_sent_by_the_client(agent):
    rules = 'rules: [{id: fan, when: "fan", action: gpio.write, args: {actuator: fan, value: 1}}]'
    async with running(agent, CONFIG, policy=POLICY) as d:
        items = await in_thread(ask, agent.state, "the fan please", rules=rules, rules_only=True, tools=TOOLS)
        assert d.hardware.outputs["fan"].value == 1
    assert items[0]["planner"] == "rules" and items[-1]["status"] == "done"


async def test_bad_requests_are_clear_errors(agent):
    async with running(agent, CONFIG, policy=POLICY) as d:
        for goal, options, text in (
            ("", {}, "ask needs params"),
            ("x", {"tools": ["door.unlock"]}, "unknown action(s) door.unlock"),
            ("x", {"budgets": {"max_steps": 0}}, "max_steps must be >= 1"),
            ("x", {"colour": "red"}, "unknown key(s)"),
            ("x", {"rules": "rules: [", "rules_only": True}, "not valid YAML"),
            ("x", {"rules_only": True}, "--rules-only needs rules"),
        ):
            with pytest.raises(RemoteError) as err:
                await in_thread(ask, agent.state, goal, **options)
            assert text in err.value.message
        assert d.pipeline.alive and d.asks.runs == 0


async def test_a_second_ask_is_refused_while_one_runs(agent):
    async with running(agent, CONFIG, policy=POLICY) as d:
        d.asks.model = ScriptedModel([FAN_ON, '{"final": "ok"}'], delay_s=0.05)
        first = threading.Thread(target=ask, args=(agent.state, "turn on the fan"), kwargs={"tools": TOOLS})
        first.start()
        try:
            await until(lambda: d.asks._busy, what="the first ask running")
            with pytest.raises(RemoteError) as err:
                await in_thread(ask, agent.state, "again", tools=TOOLS)
            assert "another ask is running" in err.value.message
        finally:
            await in_thread(first.join, 30)
        assert d.hardware.outputs["fan"].value == 1


@pytest.mark.models
async def test_real_tiny_model_through_the_daemon(agent, tinylm):
    from kestrel.agent.llm import register_local_llm

    register_local_llm(agent.state, tinylm, ledger=agent.ledger)
    async with running(agent, CONFIG, policy=POLICY) as d:
        items = await in_thread(ask, agent.state, "turn on the fan", tools=TOOLS, budgets={"max_steps": 3})
        assert d.hardware.outputs["fan"].value == 1
    assert items[0]["call"] == {"action": "gpio.write", "args": {"actuator": "fan", "value": 1}}
    assert items[0]["decision"]["allowed"] and items[0]["result"]["ok"]
    assert [r for r in results(agent) if r["action"] == "gpio.write" and r["ok"]]


async def test_cli_ask_goes_through_the_daemon(agent, tmp_path, capsys):
    (agent.state / "identity").mkdir(exist_ok=True)  # `kestrel ask` checks for an agent before it connects
    rules = tmp_path / "rules.yaml"
    rules.write_text('rules: [{id: fan, when: "fan", action: gpio.write, args: {actuator: fan, value: 1}}]\n')
    async with running(agent, CONFIG, policy=POLICY) as d:
        rc = await in_thread(
            main,
            [
                "ask",
                "the fan",
                "--state",
                str(agent.state),
                "--rules",
                str(rules),
                "--rules-only",
                "--tools",
                "gpio.write",
                "--json",
            ],
        )
        assert d.hardware.outputs["fan"].value == 1
    out = capsys.readouterr().out
    assert rc == 0, out
    assert 'step 1 [rules] {"action":"gpio.write","args":{"actuator":"fan","value":1}} -> ALLOW' in out
    assert '"executed": true' in out and "not executed" not in out


async def test_client_going_away_stops_the_run_and_frees_the_daemon(agent):
    async with running(agent, CONFIG, policy=POLICY) as d:
        d.asks.model = ScriptedModel([FAN_ON] * 6, delay_s=0.05)

        def first_step_then_leave() -> dict:
            with Client(agent.state) as k:
                stream = k.ask("keep the fan on", tools=TOOLS)
                step = next(stream)
                stream.close()
                return step

        step = await in_thread(first_step_then_leave)
        assert step["type"] == "step" and step["decision"]["allowed"]
        await until(lambda: not d.asks._busy, what="the abandoned run to stop")
        d.asks.model = ScriptedModel(['{"final": "ok"}'])
        items = await in_thread(ask, agent.state, "anything", tools=TOOLS)
        assert items[-1]["status"] == "done"
    assert len(agent.kinds("planner.step")) <= 5  # of 6 scripted calls, plus the second run's one
