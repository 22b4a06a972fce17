"""MqttBridge against a real mosquitto: acks, subscriptions, broker down/up/restart, limits, cleanup."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from kestrel.errors import ConfigError, DataError
from kestrel.io.errors import MqttError, PayloadTooLarge
from kestrel.io.mqtt import Counters, MqttBridge, client_id_for
from tests.fixtures.mosquitto import start_mosquitto as _start_mosquitto
from tests.fixtures.procs import free_port
from tests.fixtures.wait import until

pytestmark = pytest.mark.mosquitto

DID_A = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
DID_B = "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH"
FAST = {"reconnect_initial": 0.05, "reconnect_max": 0.3, "keepalive": 5}


@pytest.fixture
def broker_dir():
    """A persistence directory that mosquitto can still write after it drops root privileges
    (it then runs as user 'mosquitto', and pytest's tmp_path parents are 0700): without it the
    broker cannot save its database and a restart loses every session."""
    d = Path(tempfile.mkdtemp(prefix="kestrel-mosq-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start_mosquitto(tmp, *, port):
    return _start_mosquitto(tmp, port=port)


async def _get(sub, timeout: float = 5.0):
    return await asyncio.wait_for(sub.get(), timeout)


def test_client_id_is_stable_and_derived_from_the_agent_id():
    a = client_id_for(DID_A)
    assert a == client_id_for(DID_A) and a != client_id_for(DID_B)
    assert a.startswith("kestrel-") and len(a) == len("kestrel-") + 16
    assert MqttBridge("127.0.0.1", 1883, agent_id=DID_A).client_id == a


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="port"):
        MqttBridge("127.0.0.1", 70000, agent_id=DID_A)
    with pytest.raises(ConfigError, match="AgentID"):
        MqttBridge("127.0.0.1", 1883, agent_id="")


async def test_publish_is_acked_and_subscription_receives(mosquitto):
    async with (
        MqttBridge(mosquitto.host, mosquitto.port, agent_id=DID_A, **FAST) as a,
        MqttBridge(mosquitto.host, mosquitto.port, agent_id=DID_B, **FAST) as b,
    ):
        assert await a.wait_connected(5) and await b.wait_connected(5)
        sub = await b.subscribe("kestrel/+/cmd")
        mid = await a.publish("kestrel/dev1/cmd", b'{"action":"blink"}', qos=1)
        assert mid > 0
        msg = await _get(sub)
        assert (msg.topic, msg.payload, msg.qos) == ("kestrel/dev1/cmd", b'{"action":"blink"}', 1)
        await a.publish("kestrel/dev1/cmd", b"fire-and-forget", qos=0)
        assert (await _get(sub)).payload == b"fire-and-forget"
        assert a.stats.acked == 1 and a.stats.published == 2 and b.stats.received == 2


async def test_broker_down_at_start_then_up(broker_dir):
    port = free_port()
    changes: list[bool] = []
    async with MqttBridge("127.0.0.1", port, agent_id=DID_A, on_connection_change=changes.append, **FAST) as a:
        assert not a.connected
        assert not await a.wait_connected(0.3)
        assert "cannot connect" in a.last_error
        with pytest.raises(MqttError, match="QoS 0"):
            await a.publish("t/x", b"lost", qos=0)
        queued = asyncio.ensure_future(a.publish("t/x", b"queued while offline", qos=1))
        await until(lambda: len(a._pending) == 1)  # handed to paho, waiting for its PUBACK
        assert not queued.done()
        cm, broker = start_mosquitto(broker_dir, port=port)
        with cm:
            assert await a.wait_connected(10)
            await asyncio.wait_for(queued, 10)
            assert changes == [True] and a.stats.acked == 1


async def test_broker_restart_keeps_qos1_session(broker_dir):
    port = free_port()
    cm, broker = start_mosquitto(broker_dir, port=port)
    with cm:
        sub_bridge = MqttBridge("127.0.0.1", port, agent_id=DID_B, **FAST)
        await sub_bridge.start()
        assert await sub_bridge.wait_connected(5)
        sub = await sub_bridge.subscribe("alerts/#", qos=1)
        await sub_bridge.aclose()  # the subscriber goes away; its session stays on the broker
        async with MqttBridge("127.0.0.1", port, agent_id=DID_A, **FAST) as pub:
            assert await pub.wait_connected(5)
            await pub.publish("alerts/door", b"opened while subscriber away", qos=1)
    # the broker restarts (same persistence directory, same port) ...
    cm, broker = start_mosquitto(broker_dir, port=port)
    with cm:
        # ... and the subscriber comes back with the same client id: the queued message is delivered
        async with MqttBridge("127.0.0.1", port, agent_id=DID_B, **FAST) as back:
            got = await back.subscribe("alerts/#", qos=1)
            assert (await _get(got, 10)).payload == b"opened while subscriber away"
    assert sub.queue.closed


async def test_broker_goes_away_and_comes_back_while_running(broker_dir):
    port = free_port()
    changes: list[bool] = []
    cm, broker = start_mosquitto(broker_dir, port=port)
    cm.__enter__()
    try:
        async with (
            MqttBridge("127.0.0.1", port, agent_id=DID_A, on_connection_change=changes.append, **FAST) as a,
            MqttBridge("127.0.0.1", port, agent_id=DID_B, **FAST) as b,
        ):
            assert await a.wait_connected(5) and await b.wait_connected(5)
            sub = await b.subscribe("sensors/#", qos=1)
            cm.__exit__(None, None, None)  # broker stops
            await until(lambda: not a.connected)
            pending = asyncio.ensure_future(a.publish("sensors/temp", b"21.5", qos=1))
            await until(lambda: len(a._pending) == 1)  # queued in paho while the broker is away
            assert not pending.done()
            cm, broker = start_mosquitto(broker_dir, port=port)
            cm.__enter__()
            await asyncio.wait_for(pending, 10)  # delivered after the reconnect, acked
            msg = await _get(sub, 10)  # the subscription was restored
            assert msg.payload == b"21.5"
            assert changes[:3] == [True, False, True]
            assert a.stats.connects >= 2
    finally:
        cm.__exit__(None, None, None)


async def test_oversize_payloads(mosquitto):
    rejected: list[tuple[str, bytes, str]] = []
    async with (
        MqttBridge(
            mosquitto.host,
            mosquitto.port,
            agent_id=DID_A,
            max_payload=1024,
            on_rejected=lambda *a: rejected.append(a),
            **FAST,
        ) as small,
        MqttBridge(mosquitto.host, mosquitto.port, agent_id=DID_B, **FAST) as big,
    ):
        assert await small.wait_connected(5) and await big.wait_connected(5)
        with pytest.raises(PayloadTooLarge):
            await small.publish("x/y", b"x" * 1025)
        sub = await small.subscribe("in/#")
        await big.publish("in/blob", b"B" * 5000)
        await big.publish("in/ok", b"small")
        msg = await _get(sub)
        assert msg.topic == "in/ok"  # the oversize one was dropped, the loop kept going
        assert sub.oversize == 1 and small.stats.oversize == 1
        assert rejected == [("in/blob", b"B" * 5000, "oversize")]  # the payload, for the quarantine


async def test_flood_into_a_bounded_queue(mosquitto):
    async with (
        MqttBridge(mosquitto.host, mosquitto.port, agent_id=DID_A, **FAST) as a,
        MqttBridge(mosquitto.host, mosquitto.port, agent_id=DID_B, **FAST) as b,
    ):
        assert await a.wait_connected(5) and await b.wait_connected(5)
        sub = await b.subscribe("flood/#", queue_size=10)
        await asyncio.gather(*(a.publish(f"flood/{i}", b"%d" % i, qos=1) for i in range(200)))
        await until(lambda: b.stats.received == 200)
        assert len(sub.queue) == 10 and sub.overflows == 190 and b.stats.overflows == 190
        assert (await _get(sub)).payload == b"190"


def test_counters_lose_no_update_across_threads():
    """The bridge's counters are changed from the network thread and the loop: one owner, no lost update."""
    import threading
    import time

    class Slow(dict):  # a thread switch between reading and writing a value: a bare ``+= 1`` loses updates
        def __setitem__(self, key, value):
            time.sleep(0)  # kept: forces the thread switch under test (not a wait)
            super().__setitem__(key, value)

    counts = Counters("received", "acked")
    counts._values = Slow(counts._values)
    threads = [
        threading.Thread(target=lambda k=k: [counts.add(k) for _ in range(2_000)])
        for k in ("received", "received", "acked", "received")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts.snapshot() == {"received": 6_000, "acked": 2_000}
    assert counts["acked"] == 2_000


async def test_every_counter_moves_through_its_owner(mosquitto, monkeypatch):
    """Counting from both threads (messages in, oversize drops, publishes, PUBACKs): each change is a
    ``Counters.add`` call, and the totals are exact."""
    import threading

    import kestrel.io.mqtt as mqtt_mod

    seen: list[tuple[str, str]] = []
    original = mqtt_mod.Counters.add

    def spy(self, name, n=1):
        seen.append((threading.current_thread().name, name))
        return original(self, name, n)

    monkeypatch.setattr(mqtt_mod.Counters, "add", spy)
    async with (
        MqttBridge(mosquitto.host, mosquitto.port, agent_id=DID_A, max_payload=1024, **FAST) as small,
        MqttBridge(mosquitto.host, mosquitto.port, agent_id=DID_B, **FAST) as big,
    ):
        assert await small.wait_connected(5) and await big.wait_connected(5)
        sub = await small.subscribe("mix/#", queue_size=1000)
        sends = [big.publish(f"mix/{i}", b"x" * (2000 if i % 3 == 0 else 10)) for i in range(90)]
        sends += [small.publish("out/x", b"y") for _ in range(20)]  # the loop counts while messages come in
        await asyncio.gather(*sends)
        await until(lambda: small.stats.received + small.stats.oversize == 90)
        stats = small.stats
    assert (stats.received, stats.oversize, sub.oversize, stats.published, stats.acked) == (60, 30, 30, 20, 20)
    names = [name for _, name in seen]  # both bridges; the subscription's own oversize counter too
    assert (names.count("received"), names.count("oversize"), names.count("published"), names.count("acked")) == (
        60,
        60,
        110,
        110,
    )
    threads = {thread for thread, name in seen if name == "received"}
    assert threads and all(t.startswith("mqtt ") for t in threads)  # counted where the message arrives


async def test_invalid_topics_and_payloads(mosquitto):
    async with MqttBridge(mosquitto.host, mosquitto.port, agent_id=DID_A, **FAST) as a:
        with pytest.raises(DataError, match="wildcard"):
            await a.publish("a/+/b", b"x")
        with pytest.raises(DataError, match="bytes"):
            await a.publish("a/b", "text")  # type: ignore[arg-type]
        with pytest.raises(DataError, match="topic filter"):
            await a.subscribe("a/#/b")
        with pytest.raises(DataError, match="QoS 2"):
            await a.publish("a/b", b"x", qos=2)


async def test_cancelled_publish_reraises_and_close_fails_pending(tmp_path):
    a = MqttBridge("127.0.0.1", free_port(), agent_id=DID_A, **FAST)
    await a.start()
    task = asyncio.ensure_future(a.publish("t", b"1"))
    await until(lambda: len(a._pending) == 1)  # the publish waits for a PUBACK that cannot come
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a._pending == {}
    waiting = asyncio.ensure_future(a.publish("t", b"2"))
    sub = await a.subscribe("t")
    await until(lambda: len(a._pending) == 1)
    network_thread = a._thread
    assert network_thread.is_alive()
    await a.aclose()
    with pytest.raises(MqttError, match="closed"):
        await waiting
    with pytest.raises(MqttError, match="closed"):
        await sub.get()
    assert not network_thread.is_alive()
    await a.aclose()  # idempotent
    with pytest.raises(MqttError, match="not started"):
        await a.publish("t", b"3")


async def test_paho_is_driven_from_one_place(mosquitto, monkeypatch):
    """publish/subscribe only from the loop thread; every socket write on the bridge's network thread."""
    import threading

    import paho.mqtt.client as mqtt

    calls: dict[str, set[str]] = {"publish": set(), "subscribe": set(), "write": set()}

    def spy(name: str, original):
        def wrapper(self, *args, **kwargs):
            calls[name].add(threading.current_thread().name)
            return original(self, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(mqtt.Client, "publish", spy("publish", mqtt.Client.publish))
    monkeypatch.setattr(mqtt.Client, "subscribe", spy("subscribe", mqtt.Client.subscribe))
    monkeypatch.setattr(mqtt.Client, "_packet_write", spy("write", mqtt.Client._packet_write))
    async with MqttBridge(mosquitto.host, mosquitto.port, agent_id=DID_A, **FAST) as a:
        assert await a.wait_connected(5)
        sub = await a.subscribe("echo/#")
        await asyncio.gather(*(a.publish(f"echo/{i}", b"x", qos=1) for i in range(50)))
        await _get(sub)
    loop_thread = threading.current_thread().name
    assert calls["publish"] == {loop_thread} and calls["subscribe"] == {loop_thread}
    assert calls["write"] == {f"mqtt {mosquitto.host}:{mosquitto.port}"}


def test_session_expiry_default_is_the_documented_one() -> None:
    """docs/device-config.md and docs/sync-protocol.md: 7 days, for the bridge and the device config alike."""
    from kestrel.daemon.config import MqttConfig

    assert MqttBridge("127.0.0.1", agent_id=DID_A).session_expiry == MqttConfig(host="x").session_expiry_s == 604800
