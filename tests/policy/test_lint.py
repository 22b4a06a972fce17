"""Policy warnings (kestrel.policy.lint): unknown actions and argument keys, device fit, and the
shipped examples checked against the device configs they are written for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kestrel.cli import main
from kestrel.cli.policy import device_facts
from kestrel.policy import parse_policy
from kestrel.policy.lint import DeviceFacts, lint_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "ota" / "policies").glob("*.yaml"))

TYPOS = """actions:
  - gpio.wrte
  - action: gpio.write
    args:
      actuator: {enum: [lamp, heater]}
      valeu: {enum: [0, 1]}
  - set_pin
deny:
  - action: "*"
    args: {pin: {enum: [3]}}
network:
  allow:
    - {host: x.example, actions: [fetch_dat]}
"""


def _by_place(warnings) -> dict[tuple[int, int], str]:
    return {(w.line, w.column): w.message for w in warnings}


def test_unknown_actions_and_keys_with_place_and_suggestion() -> None:
    parse_policy(TYPOS)  # well-formed: these are warnings, not errors
    found = _by_place(lint_policy(TYPOS))
    assert "unknown action 'gpio.wrte'" in found[(2, 5)] and "did you mean 'gpio.write'?" in found[(2, 5)]
    assert "no argument 'valeu'" in found[(6, 7)] and "did you mean 'value'?" in found[(6, 7)]
    assert "unknown action 'set_pin'" in found[(7, 5)] and "gpio.write" in found[(7, 5)]
    assert "'pin'" in found[(10, 12)]
    assert "did you mean 'fetch_data'?" in found[(13, 35)]
    assert len(found) == 5  # 'heater' is only wrong for a device that lacks it


def test_device_actuators_and_proposals() -> None:
    device = DeviceFacts(
        source="dev.yaml", actuators={"lamp": "gpio", "alerts": "mqtt"}, proposals=(("trigger 'door'", "mqtt.publish"),)
    )
    found = _by_place(lint_policy(TYPOS, device=device))
    assert "dev.yaml has no gpio actuator 'heater'" in found[(5, 31)] and "lamp" in found[(5, 31)]
    assert "trigger 'door' proposes mqtt.publish" in found[(1, 1)]
    assert not lint_policy(
        "actions: [mqtt.publish, {action: gpio.write, args: {actuator: {equals: lamp}}}]\n", device=device
    )


def test_known_names_are_quiet() -> None:
    text = (
        "actions:\n  - action: send_email\n    args: {to: {domain: [a.example]}, host: {equals: relay}}\n"
        "  - {action: llm.request, args: {model: {equals: m}}}\n  - agent.send\n"
        "deny:\n  - {action: '*', args: {url: {regex: '.*evil.*'}}}\n"
    )
    assert lint_policy(text) == []


def test_not_yaml_gives_no_warnings() -> None:
    assert lint_policy("actions: [") == []


@pytest.mark.parametrize("policy", EXAMPLES, ids=lambda p: p.name)
def test_shipped_policy_fits_its_device_config(policy: Path) -> None:
    m = re.search(r"^# device config: (\S+)", policy.read_text(), re.M)
    assert m, f"{policy.name} must name the device config it is for ('# device config: PATH')"
    config = ROOT / m.group(1)
    assert config.is_file(), config
    warnings = lint_policy(policy.read_bytes(), device=device_facts(str(config)))
    assert warnings == [], "\n".join(map(str, warnings))


def test_check_prints_warnings_and_strict_fails(tmp_path, capsys) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(TYPOS)
    assert main(["policy", "check", str(path)]) == 0
    out = capsys.readouterr()
    assert "5 warning(s)" in out.out
    assert f"{path}:2:5: warning: unknown action 'gpio.wrte'" in out.err
    config = ROOT / "runtime" / "kestrel" / "data" / "device.yaml"
    assert main(["policy", "check", str(path), "--config", str(config), "--strict"]) == 1
    assert "no gpio actuator 'heater'" in capsys.readouterr().err


def test_bundle_build_prints_the_warnings(tmp_path, capsys) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(TYPOS)
    assert (
        main(
            [
                "bundle",
                "build",
                "--policy",
                str(path),
                "--counter",
                "1",
                "--group",
                "g",
                "-o",
                str(tmp_path / "b.kbundle"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"{path}:6:7: warning: gpio.write has no argument 'valeu'" in err and (tmp_path / "b.kbundle").exists()
