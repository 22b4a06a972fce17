"""The example policies shipped in ota/policies parse and behave as their comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrel.policy import ActionRequest, PolicyState, evaluate, parse_policy

EXAMPLES = Path(__file__).resolve().parents[2] / "ota" / "policies"
TUE_10_UTC = 1764064800.0


def _decide(name: str, action: str, now: float = TUE_10_UTC, **args) -> bool:
    policy = parse_policy((EXAMPLES / name).read_bytes(), source=name)
    return evaluate(policy, ActionRequest(action, args), PolicyState(), now).allowed


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    assert parse_policy(path.read_bytes(), source=path.name).allow


def test_home_assistant() -> None:
    assert _decide("home-assistant.yaml", "send_email", to="mum@family.example")
    assert not _decide("home-assistant.yaml", "send_email", to="mum+x@family.example")
    assert not _decide("home-assistant.yaml", "send_email", to="x@elsewhere.example")
    assert _decide("home-assistant.yaml", "fetch_data", url="https://radar.weather.example/now")
    assert not _decide("home-assistant.yaml", "fetch_data", url="https://llm.family.example/")
    assert _decide("home-assistant.yaml", "llm.request", url="https://llm.family.example/v1/chat")


def test_greenhouse() -> None:
    assert _decide("greenhouse.yaml", "gpio.write", actuator="vent", value="1")
    assert not _decide("greenhouse.yaml", "gpio.write", actuator="lamp", value="1")
    assert _decide("greenhouse.yaml", "mqtt.publish", actuator="heater_setpoint", payload=8)
    assert not _decide("greenhouse.yaml", "mqtt.publish", actuator="heater_setpoint", payload=40)
    assert _decide("greenhouse.yaml", "mqtt.publish", actuator="telemetry", payload="{}")
    assert not _decide("greenhouse.yaml", "gpio.write", TUE_10_UTC - 7 * 3600 + 600, actuator="vent", value=1)  # 03:10
    assert not _decide("greenhouse.yaml", "fetch_data", url="https://example.com/")
    assert _decide("greenhouse.yaml", "fetch_data", url="http://localhost:8123/api")
