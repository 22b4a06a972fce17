"""End to end on the sim board: an edge triggers a rule, the policy decides, the pin changes, the ledger proves it."""

from __future__ import annotations

import pytest

from kestrel.daemon.pipeline import ActionDeniedError
from kestrel.daemon.triggers import Proposal

from .conftest import GPIO_CONFIG, running, until

POLICY = """
    actions: [gpio.write]
    restrictions:
      - no_external_network unless explicitly permitted
"""


@pytest.mark.parametrize("audit", ["batched", "strict"])
async def test_edge_triggers_allowed_action_and_ledger_holds_decision_and_outcome(agent, audit):
    cfg = GPIO_CONFIG + f"    audit: {{decisions: {audit}}}\n"
    async with running(agent, cfg, policy=POLICY) as d:
        assert d.decision_log.queued == (audit == "batched")
        chip = d.factory.chip()
        lamp = d.hardware.outputs["lamp"]
        assert lamp.value == 0
        chip.drive(17, 1)
        await until(lambda: lamp.value == 1, what="lamp on")
        chip.drive(17, 0)
        await until(lambda: lamp.value == 0, what="lamp off")
        await until(lambda: d.pipeline.stats["succeeded"] >= 3, what="outcomes")  # startup sync + on + off
        await until(lambda: len(agent.kinds("action.result")) >= 3, what="records")
    decisions = [b for b in agent.kinds("policy.decision") if b["action"] == "gpio.write"]
    results = agent.kinds("action.result")
    assert [b["decision"] for b in decisions] == ["allow"] * len(decisions) and len(decisions) >= 3
    on = [r for r in results if r["source"] == "trigger:lamp_on"]
    assert on and on[0]["ok"] is True and on[0]["result"] == {"actuator": "lamp", "value": 1}
    # each outcome names the decision it followed (same arguments digest)
    assert {r["args_digest"] for r in results} <= {b["args_digest"] for b in decisions}
    agent.ledger.flush()
    verified = agent.ledger.verify()
    assert verified.size == agent.ledger.size
    # the decision precedes its outcome in the log
    seqs = {r.kind: r.seq for r in agent.ledger.records() if r.kind in ("policy.decision", "action.result")}
    assert min(r.seq for r in agent.ledger.records(kind="policy.decision")) < seqs["action.result"]


async def test_without_policy_everything_is_denied_and_the_pin_stays(agent):
    async with running(agent, GPIO_CONFIG) as d:
        chip = d.factory.chip()
        chip.drive(17, 1)
        await until(lambda: d.pipeline.stats["denied"] >= 2, what="denials")
        assert d.hardware.outputs["lamp"].value == 0
        try:
            await d.control_call("gpio.write", {"actuator": "lamp", "value": 1}, source="test")
        except ActionDeniedError as exc:
            assert "default-deny" in exc.message
        else:
            raise AssertionError("default-deny did not deny")
        assert d.hardware.outputs["lamp"].value == 0
    denied = [b for b in agent.kinds("policy.decision") if b["decision"] == "deny"]
    assert len(denied) >= 3 and all(b["rule"] == "default-deny" for b in denied)
    assert agent.kinds("action.result") == []


async def test_bad_arguments_are_recorded_as_a_failed_outcome(agent):
    async with running(agent, GPIO_CONFIG, policy=POLICY) as d:
        try:
            await d.pipeline.call(Proposal("gpio.write", {"actuator": "nope", "value": 1}, "test"))
        except Exception as exc:
            assert "no such actuator" in str(exc)
        else:
            raise AssertionError("unknown actuator accepted")
    failed = [r for r in agent.kinds("action.result") if r["source"] == "test"]
    assert failed and failed[0]["ok"] is False and failed[0]["error"]["type"] == "ActionArgsError"


async def test_rising_trigger_fires_once_per_transition_and_cooldown_limits(agent):
    cfg = """
        version: 1
        sensors:
          button: {type: gpio, pin: GPIO17}
        actuators:
          lamp: {type: gpio, pin: GPIO27}
        triggers:
          - name: lamp_on
            when: "button == 1"
            action: gpio.write
            args: {actuator: lamp, value: "${button}"}
            cooldown: 3600
    """
    async with running(agent, cfg, policy=POLICY) as d:
        chip = d.factory.chip()
        for v in (1, 0, 1, 0, 1):
            chip.drive(17, v)
        await until(lambda: d.pipeline.stats["succeeded"] >= 1, what="first firing")
        await until(lambda: d.counters["events"] >= 6, what="edges seen")
        assert d.pipeline.stats["proposed"] == 1  # the cooldown held back the later rising edges
        assert d.hardware.outputs["lamp"].value == 1
