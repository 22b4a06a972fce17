"""Model outputs as trigger conditions: the real sensor-anomaly model fed from sensor readings,
its score and alarm read by a trigger, the policy deciding, the action running."""

from __future__ import annotations

import json
import math
import textwrap

import pytest

from kestrel.daemon.config import parse_device_config
from kestrel.errors import ConfigError
from tests.fixtures.wait import until_seen

from .conftest import running, until

POLICY = "actions: [gpio.write]\n"
CHANNELS = ("temp", "humidity", "vibration", "current")
NORMAL = {"temp": 21.0, "humidity": 55.0, "vibration": 0.12, "current": 1.2}


def file_config(state, *, model: str = "sensor-anomaly", window: int = 16, inputs=CHANNELS) -> str:
    sensors = "\n".join(f"  {c}: {{type: periodic, every: 0.02, file: {state / (c + '.txt')}}}" for c in CHANNELS)
    return textwrap.dedent("""\
        version: 1
        sensors:
        {sensors}
        actuators:
          alarm_lamp: {{type: gpio, pin: GPIO27}}
        models:
          anomaly:
            model: {model}
            inputs: [{inputs}]
            window: {window}
            every: 0.02
            threshold: 1.0
        triggers:
          - name: anomaly_alarm
            when: "anomaly.alarm and anomaly.score > 1"
            action: gpio.write
            args: {{actuator: alarm_lamp, value: 1}}
        """).format(sensors=sensors, model=model, inputs=", ".join(inputs), window=window)


def write_readings(state, values: dict) -> None:
    for name, v in values.items():
        tmp = state / f".{name}.tmp"
        tmp.write_text(f"{v}\n")
        tmp.replace(state / f"{name}.txt")


@pytest.fixture
def installed(agent, sensor_build):
    from kestrel.inference.store import ModelStore

    ModelStore(agent.state).install(sensor_build.path, ledger=agent.ledger)
    return agent


async def test_anomalous_readings_fire_the_trigger_and_the_action_runs(installed):
    agent = installed
    write_readings(agent.state, NORMAL)
    async with running(agent, file_config(agent.state), policy=POLICY) as d:
        await until(lambda: (d.values.get("anomaly") or {}).get("runs", 0) >= 3, what="model runs on normal data")
        assert d.values["anomaly"]["alarm"] is False and d.values["anomaly"]["score"] < 1.0
        assert d.hardware.outputs["alarm_lamp"].value == 0
        write_readings(agent.state, {"vibration": 3.0})  # a stuck vibration sensor far outside normal
        await until(lambda: d.hardware.outputs["alarm_lamp"].value == 1, what="the anomaly trigger")
        assert d.values["anomaly"]["alarm"] is True and d.values["anomaly"]["score"] > 1.0
        status = d.control_status()
        assert status["models"]["anomaly"]["runs"] >= 4 and status["models"]["anomaly"]["error"] is None
    agent.ledger.flush()
    decided = [r for r in agent.kinds("policy.decision") if r["action"] == "gpio.write"]
    assert decided and decided[0]["decision"] == "allow"
    done = [r for r in agent.kinds("action.result") if r["source"] == "trigger:anomaly_alarm"]
    assert done and done[0]["ok"] is True
    agent.ledger.verify()


async def test_policy_refusal_of_the_triggered_action_is_recorded(installed):
    agent = installed
    write_readings(agent.state, {**NORMAL, "vibration": 3.0})
    async with running(agent, file_config(agent.state), policy="actions: [send_email]\n") as d:
        await until(
            lambda: any(r["action"] == "gpio.write" for r in agent.kinds("policy.decision")),
            what="the decision on the triggered action",
        )
        assert d.hardware.outputs["alarm_lamp"].value == 0
    assert [r["decision"] for r in agent.kinds("policy.decision") if r["action"] == "gpio.write"][0] == "deny"
    assert not [r for r in agent.kinds("action.result") if r["source"] == "trigger:anomaly_alarm"]


@pytest.mark.parametrize(
    "model, window, inputs, key, text",
    [
        ("no-such-model", 16, CHANNELS, "models.anomaly.model", "is not installed"),
        ("sensor-anomaly", 8, CHANNELS, "models.anomaly.inputs", "expects readings: float32[?, 16, 4]"),
        ("sensor-anomaly", 16, CHANNELS[:3], "models.anomaly.inputs", "feeds [16, 3]"),
    ],
)
async def test_model_that_does_not_fit_the_config_is_a_config_error_at_start(
    installed, model, window, inputs, key, text
):
    agent = installed
    with pytest.raises(ConfigError) as err:
        async with running(agent, file_config(agent.state, model=model, window=window, inputs=inputs)):
            pass
    assert err.value.key == key and text in err.value.message
    assert err.value.path == "device.yaml" and err.value.line is not None


@pytest.mark.parametrize(
    "models, text, key",
    [
        ("anomaly: {model: m, inputs: [nosuch]}", "unknown sensor 'nosuch'", "models.anomaly.inputs"),
        ("temp: {model: m, inputs: [temp]}", "has the name of a sensor", "models.temp"),
        ("anomaly: {model: m, inputs: []}", "at least one input", "models.anomaly.inputs"),
        ("anomaly: {model: m, inputs: [temp], window: 0}", "", "models.anomaly.window"),
        ("anomaly: {model: m, inputs: [temp], colour: red}", "colour", "models.anomaly.colour"),
        ("anomaly: {inputs: [temp]}", "", "models.anomaly.model"),
    ],
)
def test_bad_models_section_names_file_line_and_key(models, text, key):
    cfg = f"version: 1\nsensors:\n  temp: {{type: periodic, every: 1, file: /tmp/t}}\nmodels:\n  {models}\n"
    with pytest.raises(ConfigError) as err:
        parse_device_config(cfg, source="dev.yaml")
    assert text in err.value.message and err.value.key == key and err.value.line == 5, err.value


def test_trigger_may_read_a_model_sensor_and_unknown_names_still_fail():
    base = (
        "version: 1\nsensors:\n  temp: {type: periodic, every: 1, file: /tmp/t}\n"
        "actuators:\n  lamp: {type: gpio, pin: GPIO27}\n"
        "models:\n  anomaly: {model: sensor-anomaly, inputs: [temp], window: 4}\n"
    )
    trig = 'triggers:\n  - {{when: "{w}", action: gpio.write, args: {{actuator: lamp, value: 1}}}}\n'
    cfg = parse_device_config(base + trig.format(w="anomaly.alarm"), source="dev.yaml")
    assert cfg.models[0].name == "anomaly" and cfg.models[0].window == 4 and cfg.models[0].every_s is None
    with pytest.raises(ConfigError) as err:
        parse_device_config(base + trig.format(w="anomly.alarm"), source="dev.yaml")
    assert "unknown sensor 'anomly'" in err.value.message


def _sine_rows(n: int, *, vibration_stuck: float | None = None) -> list[dict]:
    rows = []
    for t in range(n):
        base = math.sin(0.1 * t + 1.0)
        rows.append(
            {
                "temp": 21 + 3 * base,
                "humidity": 55 - 8 * base,
                "vibration": vibration_stuck
                if vibration_stuck is not None and t >= n // 2
                else 0.12 + 0.05 * abs(math.sin(0.7 * t + 1.0)),
                "current": 1.2 + 0.18 * base,
            }
        )
    return rows


@pytest.mark.mosquitto
async def test_mqtt_readings_through_the_model_fire_the_trigger(installed, mosquitto):
    from kestrel.io.mqtt import MqttBridge

    agent = installed
    config = f"""
        version: 1
        mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, keepalive: 5}}
        sensors:
          machine: {{type: mqtt, topic: plant/machine, payload: json}}
        actuators:
          alarm_lamp: {{type: gpio, pin: GPIO27}}
        models:
          anomaly:
            model: sensor-anomaly
            inputs: [machine.temp, machine.humidity, machine.vibration, machine.current]
            window: 16
        triggers:
          - name: anomaly_alarm
            when: "anomaly.alarm"
            action: gpio.write
            args: {{actuator: alarm_lamp, value: 1}}
        """
    async with running(agent, config, policy=POLICY) as d:
        await until(lambda: d.hardware.bridge.connected, what="daemon connected")
        peer = MqttBridge("127.0.0.1", mosquitto.port, agent_id="did:key:test-plant", keepalive=5)
        async with peer:
            await peer.wait_connected(5)
            await until_seen(  # a payload the sensor refuses: it proves the subscription, the model never sees it
                lambda: peer.publish("plant/machine", b"{probe", qos=1),
                lambda: d.hardware.counters.get("machine", {}).get("bad_payloads", 0) >= 1,
                what="the daemon's plant/machine subscription",
            )
            for row in _sine_rows(16):
                await peer.publish("plant/machine", json.dumps(row).encode(), qos=1)
            await until(lambda: (d.values.get("anomaly") or {}).get("runs", 0) >= 1, what="a model run")
            assert d.values["anomaly"]["alarm"] is False  # the manifest's calibrated threshold (one report with runs)
            assert d.hardware.outputs["alarm_lamp"].value == 0
            for row in _sine_rows(16, vibration_stuck=3.0):
                await peer.publish("plant/machine", json.dumps(row).encode(), qos=1)
            await until(lambda: d.hardware.outputs["alarm_lamp"].value == 1, what="the anomaly trigger")
    assert [r for r in agent.kinds("action.result") if r["source"] == "trigger:anomaly_alarm" and r["ok"]]


def test_parsing_a_models_section_imports_no_inference():
    import subprocess
    import sys

    cfg = (
        "version: 1\\nsensors:\\n  temp: {type: periodic, every: 1, file: /tmp/t}\\n"
        "models:\\n  anomaly: {model: sensor-anomaly, inputs: [temp], window: 4}\\n"
    )
    code = (
        "import sys; from kestrel.daemon.config import parse_device_config; "
        f"c = parse_device_config('{cfg}'); assert c.models; "
        "print(sorted(m for m in ('numpy', 'onnxruntime', 'kestrel.inference') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
