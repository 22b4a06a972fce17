"""The daemon wired to everything over a real mosquitto: sync to a verifying collector, agent.send
between two daemons under policy, and bundles delivered over MQTT and through `kestrel ota apply`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kestrel.io.mqtt import MqttBridge
from kestrel.sdk import ActionDenied, Client, RemoteError
from kestrel.sync.peers.trust import add_peer
from tests.daemon.conftest import until
from tests.fixtures.wait import until_seen

from .conftest import cli, collecting, daemon_of, make_node, mqtt_config

pytestmark = [pytest.mark.mosquitto, pytest.mark.async_timeout(120)]

SEND_POLICY = "actions: [agent.send]\n"


@pytest.fixture
def collector(mosquitto, tmp_path):
    with collecting(mosquitto.host, mosquitto.port, tmp_path / "collector.db", client_id="it-collector") as store:
        yield store


async def test_two_daemons_sync_send_under_policy_and_receive_through_the_sdk(tmp_path, mosquitto, collector):
    alice, bob = make_node(tmp_path / "alice"), make_node(tmp_path / "bob")
    try:
        alice.provision(SEND_POLICY)
        bob.provision("actions: [gpio.write]\n")  # bob may not send
        add_peer(alice.state, bob.did)
        add_peer(bob.state, alice.did)
        cfg = mqtt_config(mosquitto.port)
        async with daemon_of(alice, cfg) as da, daemon_of(bob, cfg) as db:
            await until(
                lambda: da.links.messenger is not None and db.links.messenger is not None, what="both messengers"
            )
            await until(lambda: da.hardware.bridge.connected and db.hardware.bridge.connected, what="connected")
            async with MqttBridge("127.0.0.1", mosquitto.port, agent_id="probe") as probe:
                assert await probe.wait_connected(10)
                await until_seen(  # garbage bob refuses (and records): his inbox subscription is live
                    lambda: probe.publish(f"kestrel/{bob.did}/inbox", b"probe", qos=1),
                    lambda: sum(db.links.messenger.refused.values()) >= 1,
                    what="bob's inbox subscription",
                )

            sent = await asyncio.to_thread(
                lambda: Client(alice.state).call("agent.send", to=bob.did, body={"temp": 21.5})
            )
            assert sent["to"] == bob.did and sent["seq"] == 1 and len(sent["digest"]) == 64
            got = await asyncio.to_thread(lambda: Client(bob.state).messages(timeout=10))
            assert [(m["from"], m["body"], m["seq"]) for m in got] == [(alice.did, {"temp": 21.5}, 1)]
            assert got[0]["digest"] == sent["digest"]
            assert await asyncio.to_thread(lambda: Client(bob.state).messages(timeout=0)) == []

            with pytest.raises(ActionDenied):  # bob's policy does not list agent.send
                await asyncio.to_thread(lambda: Client(bob.state).call("agent.send", to=alice.did, body="x"))
            with pytest.raises(RemoteError) as bad:  # allowed, but the recipient is not trusted: fails, recorded
                await asyncio.to_thread(lambda: Client(alice.state).call("agent.send", to=alice.did, body="x"))
            assert bad.value.code == "failed" and "trust list" in bad.value.message

            st = await asyncio.to_thread(lambda: Client(alice.state).status())
            assert st["sync"] is not None and st["peers"]["did"] == alice.did
            rc, out, err = await cli("status", "--state", str(alice.state))
            assert "sync     connected" in out and "Traceback" not in err

            # alice's whole ledger reaches the collector, verified against her AgentID
            alice.ledger.flush()
            size = alice.ledger.size
            await until(lambda: da.links.sync.status.acked >= size, what="alice synced")
            await until(lambda: collector.agent_state(alice.did).size >= size, what="collector verified alice")
            assert not collector.agent_state(alice.did).forked
            rc, out, err = await cli("sync", "status", "--state", str(alice.state), "--json")
            assert rc == 0 and '"state": "connected"' in out
        sent_rec = alice.kinds("peer.sent")
        recv_rec = bob.kinds("peer.received")
        assert [r["digest"] for r in sent_rec] == [r["digest"] for r in recv_rec] == [sent["digest"]]
        denied = [d for d in bob.kinds("policy.decision") if d["action"] == "agent.send"]
        assert [d["decision"] for d in denied] == ["deny"]
        results = [r for r in alice.kinds("action.result") if r.get("action") == "agent.send"]
        assert len(results) == 2
        from kestrel.sync.state import OffsetStore

        assert OffsetStore(alice.state).load(alice.did).acked >= size  # persisted before the bridge closed
    finally:
        alice.ledger.close()
        bob.ledger.close()


async def test_bundles_over_mqtt_and_through_the_cli_activate_while_the_daemon_runs(tmp_path, mosquitto):
    node = make_node(tmp_path / "dev")
    try:
        node.provision("actions: [gpio.write]\n")
        async with daemon_of(node, mqtt_config(mosquitto.port)) as d:
            await until(lambda: d.hardware.bridge.connected, what="connected")
            first = d.policy.bundle_digest
            call = lambda: Client(node.state).call("agent.send", to=node.did, body=1)  # noqa: E731
            with pytest.raises(ActionDenied):
                await asyncio.to_thread(call)

            # 1. over the MQTT OTA topic
            async with MqttBridge("127.0.0.1", mosquitto.port, agent_id="owner-console") as owner:
                assert await owner.wait_connected(10)
                await until_seen(  # a bundle that does not parse is rejected (recorded): the OTA topic is live
                    lambda: owner.publish("fleet/ota", b"not a bundle", qos=1),
                    lambda: node.kinds("ota.rejected"),
                    what="the daemon's OTA subscription",
                )
                await owner.publish("fleet/ota", node.bundle("actions: [gpio.write, agent.send]\n"), qos=1)
            await until(lambda: len(node.kinds("ota.applied")) == 2, what="bundle over MQTT applied")
            assert node.kinds("ota.applied")[-1]["source"] == "mqtt"
            new = node.kinds("ota.applied")[-1]["bundle"]
            await until(lambda: d.policy.bundle_digest == new, timeout=5, what="engine switched")  # told by the daemon
            assert new != first
            with pytest.raises(RemoteError) as failed:  # allowed now: fails later (self is not a peer)
                await asyncio.to_thread(call)
            assert failed.value.code == "failed"

            # 2. `kestrel ota apply FILE` while the daemon holds the ledger: goes through the socket
            bundle = tmp_path / "b3.kbundle"
            bundle.write_bytes(node.bundle("actions: [gpio.write]\n"))
            rc, out, err = await cli("ota", "apply", str(bundle), "--state", str(node.state))
            assert rc == 0, err
            assert "through the running daemon" in out and "counter 3" in out
            applied = node.kinds("ota.applied")[-1]
            assert applied["counter"] == 3 and applied["source"].startswith("control:uid=")
            assert d.policy.bundle_digest == applied["bundle"]
            with pytest.raises(ActionDenied):
                await asyncio.to_thread(call)

            # a bundle that is too old is refused, recorded, and the active one stays
            old = tmp_path / "old.kbundle"
            node.counter = 0
            old.write_bytes(node.bundle("actions: [agent.send]\n"))
            rejected = len(node.kinds("ota.rejected"))
            rc, out, err = await cli("ota", "apply", str(old), "--state", str(node.state))
            assert rc not in (0, 1) and "Traceback" not in err and "counter" in err
            assert len(node.kinds("ota.rejected")) == rejected + 1 and d.policy.bundle_digest == applied["bundle"]

            # `kestrel ota rollback` and `kestrel set-policy` go through the daemon as well
            rc, out, err = await cli("ota", "rollback", "--state", str(node.state))
            assert rc == 0, err
            assert node.kinds("ota.rollback")[-1]["reason"] == "operator"
            with pytest.raises(RemoteError):  # the MQTT bundle's policy (agent.send allowed) is back
                await asyncio.to_thread(call)
            status = await asyncio.to_thread(lambda: Client(node.state).status())
            assert status["policy"]["bundle"] == node.kinds("ota.rollback")[-1]["bundle"]
    finally:
        node.ledger.close()


def test_cli_says_clearly_when_the_ledger_is_busy_and_no_daemon_answers(tmp_path: Path):
    """No daemon, but another writer holds the ledger: a clear error, exit 3, nothing changed."""
    import subprocess

    from kestrel.identity import create_identity, open_signer
    from kestrel.ledger import Ledger

    from .conftest import KESTREL

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    create_identity(state, name="t", backend="file", machine_bound=True)
    with Ledger.open(state / "ledger", signer=open_signer(state)) as held:
        r = subprocess.run(
            [*KESTREL, "ota", "rollback", "--state", str(state)], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 3, r.stderr
        assert "already open for writing" in r.stderr and "no daemon answers" in r.stderr
        assert "Traceback" not in r.stderr
        assert held.size == 0


async def test_broker_down_at_start_the_daemon_works_and_syncs_once_it_comes_up(tmp_path):
    from tests.fixtures.mosquitto import start_mosquitto
    from tests.fixtures.procs import free_port

    port = free_port()
    node = make_node(tmp_path / "dev")
    try:
        node.provision("actions: [gpio.write]\n")
        async with daemon_of(node, mqtt_config(port)) as d:
            assert not d.hardware.bridge.connected and d.links.sync is not None
            for v in (1, 0, 1):
                r = await asyncio.to_thread(lambda v=v: Client(node.state).call("gpio.write", actuator="lamp", value=v))
                assert r["value"] == v
            st = await asyncio.to_thread(lambda: Client(node.state).status())
            assert st["health"] == "ok" and st["sync"]["connected"] is False and st["sync"]["acked"] == 0
            cm, broker = start_mosquitto(tmp_path / "late-broker", port=port)
            with cm, collecting(broker.host, broker.port, tmp_path / "c.db", client_id="late") as store:
                node.ledger.flush()
                size = node.ledger.size
                await until(lambda: d.links.sync.status.acked >= size, timeout=30, what="synced after outage")
                await until(lambda: store.agent_state(node.did).size >= size, timeout=30, what="collected")
    finally:
        node.ledger.close()
