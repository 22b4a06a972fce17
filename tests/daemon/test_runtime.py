"""OTA hand-off (drop directory, MQTT), periodic sensors that come and go, schedules, reload in-process."""

from __future__ import annotations

import time

import pytest

from kestrel.daemon.pipeline import ActionDeniedError
from kestrel.identity.keys import SoftwareSigner
from kestrel.io.mqtt import MqttBridge
from kestrel.ota import sign_bundle
from kestrel.ota.build import make_bundle
from kestrel.ota.store import OtaDir

from .conftest import GPIO_CONFIG, running, until


def _signed_bundle(agent, owner: SoftwareSigner, policy: bytes, counter: int = 1) -> bytes:
    now = time.time()
    data = make_bundle(
        policy=policy, counter=counter, now=now, expires=now + 3600, agents=[agent.ledger.public_key.did]
    )
    return sign_bundle(data, owner)


async def test_drop_directory_bundle_installs_policy_and_garbage_is_rejected(agent):
    owner = SoftwareSigner.generate()
    OtaDir(agent.state).init_root([owner.public_key.did], 1)
    cfg = GPIO_CONFIG + "    ota: {drop_dir: drop, poll: 0.05}\n"
    drop = agent.state / "drop"
    drop.mkdir()
    async with running(agent, cfg) as d:
        with pytest.raises(ActionDeniedError):
            await d.control_call("gpio.write", {"actuator": "lamp", "value": 1}, source="test")
        (drop / "junk.kbundle").write_bytes(b"\x00garbage")
        await until(lambda: agent.kinds("ota.rejected"), what="rejection")
        (drop / "policy.kbundle").write_bytes(_signed_bundle(agent, owner, b"actions: [gpio.write]\n"))
        await until(lambda: agent.kinds("ota.applied"), what="bundle applied")
        r = await d.control_call("gpio.write", {"actuator": "lamp", "value": 1}, source="test")
        assert r["value"] == 1 and d.unhealthy() is None
    assert len(agent.kinds("ota.rejected")) == 1  # the junk file is not re-rejected on every scan


@pytest.mark.mosquitto
async def test_mqtt_bundle_installs_policy(agent, mosquitto):
    owner = SoftwareSigner.generate()
    OtaDir(agent.state).init_root([owner.public_key.did], 1)
    cfg = GPIO_CONFIG + f"    mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n    ota: {{mqtt_topic: dev/ota}}\n"
    async with running(agent, cfg) as d:
        await until(lambda: d.hardware.bridge.connected, what="connected")
        async with MqttBridge("127.0.0.1", mosquitto.port, agent_id="did:key:owner-tool") as owner_link:
            await owner_link.wait_connected(5)
            for _ in range(20):  # sent again until the daemon's subscription is live (refusal recorded)
                await owner_link.publish("dev/ota", b"not a bundle", qos=1)
                try:
                    await until(lambda: agent.kinds("ota.rejected"), timeout=0.5, what="the refusal")
                    break
                except AssertionError:
                    continue
            assert agent.kinds("ota.rejected")
            await owner_link.publish("dev/ota", _signed_bundle(agent, owner, b"actions: [gpio.write]\n"), qos=1)
            await until(lambda: agent.kinds("ota.applied"), what="applied over MQTT")
        r = await d.control_call("gpio.write", {"actuator": "lamp", "value": 1}, source="test")
        assert r["value"] == 1
    assert [b["source"] for b in agent.kinds("ota.rejected")] == ["mqtt"]


async def test_periodic_file_sensor_disappears_and_returns(agent, tmp_path):
    f = tmp_path / "temp"
    f.write_text("41000\n")
    cfg = f"""
    version: 1
    sensors:
      cpu: {{type: periodic, every: 0.02, file: "{f}", scale: 0.001}}
      sw: {{type: periodic, every: 0.02, pin: GPIO5}}
    actuators:
      fan: {{type: gpio, pin: GPIO27}}
    triggers:
      - {{name: hot, when: "cpu > 50", action: gpio.write, args: {{actuator: fan, value: 1}}}}
    """
    async with running(agent, cfg, policy="actions: [gpio.write]\n") as d:
        await until(lambda: d.values.get("cpu") == 41.0, what="first reading")
        assert d.values["sw"] == 0
        d.factory.chip().drive(5, 1)
        await until(lambda: d.values.get("sw") == 1, what="sampled pin")
        f.unlink()
        await until(lambda: d.hardware.sensor_state["cpu"] == "unavailable", what="gone")
        assert d.unhealthy() is None
        f.write_text("55000\n")
        await until(lambda: d.hardware.outputs["fan"].value == 1, what="back and triggering")
        assert d.hardware.sensor_state["cpu"] == "ok" and d.hardware.counters["cpu"]["read_errors"] >= 1
        f.write_text("not a number\n")
        await until(lambda: d.hardware.sensor_state["cpu"] == "unavailable", what="garbage reading")
    states = [b["state"] for b in agent.kinds("sensor.fault") if b["sensor"] == "cpu"]
    assert states[:3] == ["unavailable", "ok", "unavailable"]


async def test_every_schedule_fires_repeatedly(agent):
    cfg = """
    version: 1
    actuators:
      led: {type: gpio, pin: GPIO27}
    schedules:
      - {name: blink, every: 0.05, action: gpio.write, args: {actuator: led, value: 1}}
    """
    async with running(agent, cfg, policy="actions: [gpio.write]\n") as d:
        await until(lambda: d.pipeline.stats["succeeded"] >= 3, what="three firings")
    sources = {b["source"] for b in agent.kinds("action.result")}
    assert sources == {"schedule:blink"}


async def test_reload_in_process_keeps_old_config_on_error(agent, tmp_path):
    path = tmp_path / "device.yaml"
    path.write_text("version: 1\nsensors:\n  a: {type: gpio, pin: GPIO17}\n")
    async with running(agent, path.read_text(), config_path=path) as d:
        path.write_text("version: 1\nsensors:\n  a: {type: gpio, pin: GPIO17}\n  b: {type: gpio, pin: GPIO18}\n")
        assert (await d.reload())["reloaded"] is True
        assert {s.name for s in d.config.sensors} == {"a", "b"}
        path.write_text("version: 1\nsensors:\n  c: {type: gpio, pin: GPIO99}\n")  # valid YAML, no such pin
        r = await d.reload()
        assert r["reloaded"] is False and "GPIO99" in r["error"]
        assert {s.name for s in d.config.sensors} == {"a", "b"} and d.hardware is not None
        d.factory.chip().drive(18, 1)
        await until(lambda: d.values.get("b") == 1, what="old config still reading")
        assert d.counters["reload_failures"] == 1


async def test_the_daemon_wires_the_active_ota_slot_as_its_policy_source(agent):
    """The policy engine gets its policy from the source the daemon hands it (docs/architecture.md, Layers)."""
    from kestrel.ota.source import ActiveSlotSource

    async with running(agent, GPIO_CONFIG, policy="actions: [gpio.write]\n") as d:
        assert isinstance(d.policy.source, ActiveSlotSource) and d.policy.source.state_dir == agent.state
        assert d.policy.bundle_digest == d.policy.source.load()[1]
