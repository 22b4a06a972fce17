"""MQTT sensors, actuators and commands against a real mosquitto: bad payloads, broker outages, denials."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import msgpack
import pytest

from kestrel.io.mqtt import MqttBridge
from tests.fixtures.mosquitto import start_mosquitto
from tests.fixtures.procs import free_port
from tests.fixtures.wait import until_seen

from .conftest import running, until

pytestmark = pytest.mark.mosquitto

POLICY = "actions: [gpio.write, mqtt.publish]\n"


def _config(port: int, *, payload: str = "json", extra: str = "") -> str:
    return f"""
    version: 1
    mqtt:
      host: 127.0.0.1
      port: {port}
      keepalive: 5
      commands_topic: dev/cmd
      results_topic: dev/result
    sensors:
      weather: {{type: mqtt, topic: "sensors/weather", payload: {payload}, max_payload: 256}}
      button: {{type: gpio, pin: GPIO17}}
    actuators:
      lamp: {{type: gpio, pin: GPIO27}}
      alerts: {{type: mqtt, topic: dev/alerts, qos: 1}}
    triggers:
      - name: hot
        when: "weather.temp > 30"
        action: gpio.write
        args: {{actuator: lamp, value: 1}}
      - name: pressed
        when: "button == 1"
        action: mqtt.publish
        args: {{actuator: alerts, payload: {{pressed: true}}}}
    {extra}
    """


def _peer(port: int, name: str = "did:key:test-peer") -> MqttBridge:
    return MqttBridge("127.0.0.1", port, agent_id=name, keepalive=5, reconnect_initial=0.1, reconnect_max=0.5)


async def _live(peer: MqttBridge, topic: str, probe: bytes, seen, *, what: str) -> None:
    """Wait until the daemon's subscription to ``topic`` is live: a probe published there has
    reached it (``seen()``)."""
    await until_seen(lambda: peer.publish(topic, probe, qos=1), seen, what=what)


async def _weather_live(d, peer: MqttBridge, *, msgpack_payload: bool = False) -> None:
    probe = {"temp": 0}  # a reading that fires nothing
    data = msgpack.packb(probe) if msgpack_payload else json.dumps(probe).encode()
    await _live(
        peer,
        "sensors/weather",
        data,
        lambda: d.values.get("weather") == probe,
        what="the daemon's weather subscription",
    )


async def test_json_sensor_triggers_and_bad_payloads_are_quarantined(agent, mosquitto):
    async with running(agent, _config(mosquitto.port), policy=POLICY) as d:
        await until(lambda: d.hardware.bridge.connected, what="daemon connected")
        async with _peer(mosquitto.port) as peer:
            await peer.wait_connected(5)
            await _weather_live(d, peer)
            for bad in (
                b"{not json",
                b"\xff\xfe",
                b'{"temp": NaN}',
                b"[" * 500 + b"]" * 500,
                json.dumps({"temp": 1, "pad": "x" * 400}).encode(),
            ):
                await peer.publish("sensors/weather", bad, qos=1)
            await peer.publish("sensors/weather", b'{"temp": 35.5}', qos=1)
            await until(lambda: d.hardware.outputs["lamp"].value == 1, what="trigger after the garbage")
        assert d.values["weather"] == {"temp": 35.5}
        await until(lambda: len(agent.kinds("mqtt.quarantined")) == 5, what="quarantine records")
        assert d.hardware.counters["weather"]["bad_payloads"] == 5
    recs = agent.kinds("mqtt.quarantined")
    assert {r["topic"] for r in recs} == {"sensors/weather"}
    assert any("over the 256-byte limit" in r["reason"] for r in recs)
    files = sorted((agent.state / "data" / "quarantine").glob("*.bin"))
    assert len(files) == 5 and {f.read_bytes()[:9] for f in files} >= {b"{not json"}


async def test_msgpack_sensor(agent, mosquitto):
    async with running(agent, _config(mosquitto.port, payload="msgpack"), policy=POLICY) as d:
        await until(lambda: d.hardware.bridge.connected, what="connected")
        async with _peer(mosquitto.port) as peer:
            await peer.wait_connected(5)
            await _weather_live(d, peer, msgpack_payload=True)
            await peer.publish("sensors/weather", b"\xc1garbage", qos=1)
            await peer.publish("sensors/weather", msgpack.packb({"temp": 31}), qos=1)
            await until(lambda: d.hardware.outputs["lamp"].value == 1, what="msgpack trigger")
        assert d.hardware.counters["weather"]["bad_payloads"] == 1


async def test_broker_down_at_start_then_up_then_away(agent, tmp_path):
    port = free_port()
    async with running(agent, _config(port), policy=POLICY) as d:
        # no broker: the daemon runs, GPIO rules work, an MQTT publish waits in the bridge's queue
        assert d.hardware.bridge.connected is False and d.unhealthy() is None
        d.factory.chip().drive(17, 1)  # pressed -> mqtt.publish (queued, QoS1)
        await until(lambda: d.pipeline.stats["allowed"] >= 1, what="decision while offline")
        r = await d.control_call("gpio.write", {"actuator": "lamp", "value": 1}, source="test")
        assert r["value"] == 1
        cm, broker = start_mosquitto(tmp_path / "broker", port=port)
        with cm:
            async with _peer(port) as peer:
                sub = await peer.subscribe("dev/alerts", qos=1)
                await until(lambda: d.hardware.bridge.connected, timeout=20, what="late connect")
                msg = await asyncio.wait_for(sub.get(), 20)
                assert json.loads(msg.payload) == {"pressed": True}
        # broker gone again: still working offline
        await until(lambda: not d.hardware.bridge.connected, timeout=20, what="disconnect noticed")
        r = await d.control_call("gpio.write", {"actuator": "lamp", "value": 0}, source="test")
        assert r["value"] == 0 and d.unhealthy() is None
        st = d.control_status()
        assert st["mqtt"] == {"connected": False} and st["health"] == "ok"
    res = [r for r in agent.kinds("action.result") if r["action"] == "mqtt.publish"]
    assert res and res[0]["ok"] is True and res[0]["result"]["topic"] == "dev/alerts"


async def test_mqtt_command_for_refused_action_is_denied_and_recorded(agent, mosquitto):
    async with running(agent, _config(mosquitto.port), policy=POLICY) as d:
        await until(lambda: d.hardware.bridge.connected, what="connected")
        async with _peer(mosquitto.port) as peer:
            await peer.wait_connected(5)
            results = await peer.subscribe("dev/result", qos=1)  # returns once SUBACKed
            replies: dict[str, dict] = {}

            def answered(*ids: str) -> bool:
                while len(results.queue):
                    m = json.loads(results.queue.get_nowait().payload)
                    replies[m["id"]] = m
                return set(ids) <= set(replies)

            probe = {"id": "probe", "action": "gpio.write", "args": {"actuator": "lamp", "value": 0}}
            await _live(
                peer,
                "dev/cmd",
                json.dumps(probe).encode(),
                lambda: answered("probe"),
                what="the daemon's command subscription",
            )
            cmd = {"id": "c1", "action": "send_email", "args": {"to": "x@example.com", "subject": "hi"}}
            await peer.publish("dev/cmd", json.dumps(cmd).encode(), qos=1)
            await peer.publish("dev/cmd", b"\x00 not a command", qos=1)
            ok = {"id": "c2", "action": "gpio.write", "args": {"actuator": "lamp", "value": 1}}
            await peer.publish("dev/cmd", json.dumps(ok).encode(), qos=1)
            await until(lambda: answered("c1", "c2"), what="both replies")
        assert replies["c1"]["ok"] is False and replies["c1"]["error"]["code"] == "denied"
        assert replies["c2"]["ok"] is True and d.hardware.outputs["lamp"].value == 1
        assert d.counters["quarantined"] == 1
    denied = [b for b in agent.kinds("policy.decision") if b["action"] == "send_email"]
    assert len(denied) == 1 and denied[0]["decision"] == "deny"
    assert not [r for r in agent.kinds("action.result") if r["action"] == "send_email"]
    assert [q["sensor"] for q in agent.kinds("mqtt.quarantined")] == ["commands"]


async def test_payload_over_the_bridge_limit_is_counted_and_recorded(agent, mosquitto):
    cfg = _config(mosquitto.port).replace("keepalive: 5", "keepalive: 5\n      max_payload: 1024")
    async with running(agent, cfg, policy=POLICY) as d:
        await until(lambda: d.hardware.bridge.connected, what="connected")
        async with _peer(mosquitto.port) as peer:
            await peer.wait_connected(5)
            await _weather_live(d, peer)
            await peer.publish("sensors/weather", b"{" + b" " * 5000 + b"}", qos=1)
            await peer.publish("sensors/weather", b'{"temp": 40}', qos=1)
            await until(lambda: d.hardware.outputs["lamp"].value == 1, what="next message still handled")
        await until(lambda: agent.kinds("mqtt.quarantined"), what="record")
        assert d.hardware.counters["weather"]["bad_payloads"] == 1
    rec = agent.kinds("mqtt.quarantined")[0]
    big = b"{" + b" " * 5000 + b"}"
    assert rec["topic"] == "sensors/weather" and "5002 bytes" in rec["reason"]
    assert (rec["sensor"], rec["bytes"], rec["sha256"]) == ("weather", 5002, hashlib.sha256(big).hexdigest())
    assert (agent.state / "data" / "quarantine" / rec["file"]).read_bytes() == big


async def test_a_bare_number_on_a_json_sensor_counts_a_trigger_fault(agent, mosquitto):
    """'weather.temp > 30' on the value 21.5: a fault, counted, not a silent null."""
    async with running(agent, _config(mosquitto.port), policy=POLICY) as d:
        await until(lambda: d.hardware.bridge.connected, what="connected")
        async with _peer(mosquitto.port) as peer:
            await peer.wait_connected(5)
            await _weather_live(d, peer)
            await peer.publish("sensors/weather", b"21.5", qos=1)
            await until(lambda: d.counters["trigger_faults"] == 1, what="the fault counted")
            await peer.publish("sensors/weather", b'{"temp": 35}', qos=1)
            await until(lambda: d.hardware.outputs["lamp"].value == 1, what="the next report still handled")


async def test_mqtt_password_file_must_be_private(agent, mosquitto, tmp_path):
    from kestrel.errors import TransportError

    pw = tmp_path / "mqtt.pass"
    pw.write_text("s3cret\n")
    os.chmod(pw, 0o644)
    cfg = _config(mosquitto.port).replace(
        "keepalive: 5", f"keepalive: 5\n      username: dev\n      password_file: {pw}"
    )
    with pytest.raises(TransportError, match="accessible by other users"):
        async with running(agent, cfg, policy=POLICY):
            pass
    os.chmod(pw, 0o600)
    async with running(agent, cfg) as d:  # (the policy is installed already)
        await until(lambda: d.hardware.bridge.connected, what="connected with credentials")


async def test_stopping_does_not_log_the_broker_unreachable(agent, mosquitto, caplog):
    caplog.set_level("INFO", logger="kestrel.daemon.hardware")
    async with running(agent, _config(mosquitto.port), policy=POLICY) as d:
        await until(lambda: d.hardware.bridge.connected, what="connected")
    said = [r.getMessage() for r in caplog.records if r.name == "kestrel.daemon.hardware"]
    assert "MQTT: disconnected from the broker (stopping)" in said
    assert not [m for m in said if "unreachable" in m], said
