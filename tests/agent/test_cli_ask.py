"""`kestrel ask`: rules-only, with the registered tiny LLM, and every bad input with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrel.agent.core import Agent
from kestrel.cli import main

from .conftest import DEFAULT_POLICY, install_policy

RULES = """\
rules:
  - id: fan-on
    when: "turn on the (?P<what>fan|pump)"
    action: gpio.write
    args: {actuator: "{what}", value: 1}
  - id: unlock
    when: "unlock"
    action: door.unlock
"""


@pytest.fixture
def agent_state(state_dir: Path, monkeypatch) -> Path:
    monkeypatch.setenv("KESTREL_PASSPHRASE", "correct horse")
    with Agent.create(state_dir, name="asker", passphrase="correct horse") as agent:
        install_policy(state_dir, agent.ledger, DEFAULT_POLICY)
    return state_dir


def steps(state: Path) -> list[dict]:
    with Agent.open(state) as agent:
        return [r.body for r in agent.ledger.records(kind="planner.step")]


def test_rules_only(agent_state, tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    rc = main(["ask", "turn on the fan", "--state", str(agent_state), "--rules", str(rules), "--rules-only"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out
    assert 'step 1 [rules] {"action":"gpio.write","args":{"actuator":"fan","value":1}} -> ALLOW by actions[0]' in out
    assert "allowed, but not executed: no daemon runs" in out and "nothing executed (no daemon)" in out
    assert "no daemon runs on" in captured.err and "NOT executed" in captured.err
    assert "outcome: done" in out
    body = steps(agent_state)[0]
    assert body["planner"] == "rules" and body["decision"]["allowed"] is True


def test_rule_for_an_unknown_action_is_reported(agent_state, tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    rc = main(["ask", "unlock the door", "--state", str(agent_state), "--rules", str(rules), "--rules-only"])
    out = capsys.readouterr().out
    assert rc == 1 and "invalid reply (unknown-action" in out and "outcome: invalid" in out


@pytest.mark.models
def test_with_the_registered_tiny_llm(agent_state, tinylm, capsys):
    from kestrel.agent.llm import register_local_llm

    register_local_llm(agent_state, tinylm)
    rc = main(
        [
            "ask",
            "turn on the fan",
            "--state",
            str(agent_state),
            "--max-steps",
            "2",
            "--threads",
            "1",
            "--tools",
            "gpio.write,send_email",
        ]
    )  # the tools the tiny model was trained with
    out = capsys.readouterr().out
    assert 'step 1 [llm] {"action":"gpio.write","args":{"actuator":"fan","value":1}} -> ALLOW by actions[0]' in out
    assert "outcome:" in out and rc in (0, 1)
    assert (
        steps(agent_state)[0]["model"]
        == __import__("kestrel.agent.llm", fromlist=["x"]).registered_llm(agent_state).digest
    )


def test_no_agent(tmp_path, capsys):
    rc = main(["ask", "hello", "--state", str(tmp_path / "nothing")])
    assert rc == 64 and "no agent in" in capsys.readouterr().err


def test_nothing_to_plan_with(agent_state, capsys):
    rc = main(["ask", "hello", "--state", str(agent_state)])
    err = capsys.readouterr().err
    assert rc == 64 and "nothing to plan with" in err and "Traceback" not in err


def test_bad_rules_file(agent_state, tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {id: a, when: '(', action: gpio.write}\n")
    rc = main(["ask", "x", "--state", str(agent_state), "--rules", str(rules)])
    err = capsys.readouterr().err
    assert rc == 2 and "rules.yaml" in err and "bad pattern" in err
    rules.write_bytes(b"\xff\xfe garbage")
    assert main(["ask", "x", "--state", str(agent_state), "--rules", str(rules)]) == 2
    assert main(["ask", "x", "--state", str(agent_state), "--rules", str(tmp_path / "missing.yaml")]) == 3


def test_bad_budget_and_tools(agent_state, tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    assert main(["ask", "x", "--state", str(agent_state), "--rules", str(rules), "--max-steps", "0"]) == 64
    assert main(["ask", "x", "--state", str(agent_state), "--rules", str(rules), "--tools", "door.unlock"]) == 64
    assert "unknown action(s) door.unlock" in capsys.readouterr().err


def test_corrupt_registration(agent_state, capsys):
    (agent_state / "agent").mkdir(mode=0o700)
    (agent_state / "agent" / "llm.json").write_text("{]")
    rc = main(["ask", "x", "--state", str(agent_state)])
    err = capsys.readouterr().err
    assert rc == 2 and "llm.json is corrupt" in err


def test_unreachable_endpoint_is_a_clear_error(agent_state, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy_allows_llm = agent_state  # llm.request is not in DEFAULT_POLICY: refused before any connection
    rc = main(["ask", "x", "--state", str(policy_allows_llm), "--endpoint", f"http://127.0.0.1:{port}/v1"])
    captured = capsys.readouterr()
    assert rc == 1 and "policy refused llm.request" in captured.err and "Traceback" not in captured.err
    assert "outcome: model-error" in captured.out
