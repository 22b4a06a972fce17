"""Agent-to-agent messages between two real agents over mosquitto: trust, policy, forgery, replay."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgpack
import pytest

from kestrel._internal.paths import StateLayout
from kestrel.errors import UsageError
from kestrel.identity.keys import SoftwareSigner
from kestrel.io.mqtt import MqttBridge
from kestrel.ledger.ledger import Ledger
from kestrel.sync.peers.envelope import seal
from kestrel.sync.peers.keyagree import SoftwareKeyAgreement
from kestrel.sync.peers.messenger import PeerMessenger, PeerSendDenied, send_under_policy
from kestrel.sync.peers.trust import add_peer
from kestrel.sync.wire import inbox_topic
from tests.fixtures.wait import until

pytestmark = pytest.mark.mosquitto


def _install_policy(state: Path, ledger: Ledger, text: str) -> None:
    """A policy reaches a device only as a bundle signed by its owner."""
    from kestrel.ota import apply_bundle, sign_bundle
    from kestrel.ota.build import make_bundle
    from kestrel.ota.store import OtaDir

    owner = SoftwareSigner.generate()
    OtaDir(state).init_root([owner.public_key.did], 1)
    now = time.time()
    bundle = make_bundle(policy=text.encode(), counter=1, now=now, expires=now + 3600, agents=[ledger.public_key.did])
    apply_bundle(state, sign_bundle(bundle, owner), ledger=ledger, now=now)


class Node:
    def __init__(self, root: Path, name: str) -> None:
        self.state = root / name
        self.state.mkdir(mode=0o700)
        self.signer = SoftwareSigner.generate()
        self.ledger = Ledger.open(StateLayout(self.state).ledger, signer=self.signer)

    @property
    def did(self) -> str:
        return self.signer.public_key.did

    def kinds(self, kind: str) -> list[dict]:
        self.ledger.flush()
        return [r.body for r in self.ledger.records(kind=kind)]


@pytest.fixture
def nodes(tmp_path):
    alice, bob = Node(tmp_path, "alice"), Node(tmp_path, "bob")
    yield alice, bob
    alice.ledger.close()
    bob.ledger.close()


async def _messenger(node: Node, broker) -> tuple[MqttBridge, PeerMessenger]:
    bridge = MqttBridge(broker.host, broker.port, agent_id=node.did, reconnect_initial=0.05)
    await bridge.start()
    assert await bridge.wait_connected(10)
    m = PeerMessenger(
        state_dir=node.state,
        signer=node.signer,
        bridge=bridge,
        ledger=node.ledger,
        key_agreement=SoftwareKeyAgreement.from_signer(node.signer),
    )
    await m.start()
    return bridge, m


def test_signed_and_encrypted_messages_recorded_on_both_sides(nodes, mosquitto):
    alice, bob = nodes
    add_peer(alice.state, bob.did)
    add_peer(bob.state, alice.did)

    async def go():
        ab, am = await _messenger(alice, mosquitto)
        bb, bm = await _messenger(bob, mosquitto)
        try:
            s1 = await am.send(bob.did, {"hello": "bob"})
            s2 = await am.send(bob.did, {"secret": "tangerine"}, encrypt=True)
            m1, m2 = await bm.receive(10), await bm.receive(10)
            return s1, s2, m1, m2
        finally:
            for m, b in ((am, ab), (bm, bb)):
                await m.stop()
                await b.aclose()

    s1, s2, m1, m2 = asyncio.run(go())
    assert (m1.body, m1.encrypted, m1.seq) == ({"hello": "bob"}, False, 1)
    assert (m2.body, m2.encrypted, m2.seq) == ({"secret": "tangerine"}, True, 2)
    sent = alice.kinds("peer.sent")
    got = bob.kinds("peer.received")
    assert [s["digest"] for s in sent] == [s1.digest, s2.digest] == [g["digest"] for g in got]
    assert all(g["from"] == alice.did for g in got) and all(s["to"] == bob.did for s in sent)
    assert "tangerine" not in str(sent) + str(got) and "hello" not in str(sent) + str(got)  # digests only
    assert set(sent[0]) == {"to", "seq", "digest", "encrypted", "bytes"}


def test_forged_replayed_and_unknown_refused_and_recorded(nodes, mosquitto, publisher):
    alice, bob = nodes
    add_peer(bob.state, alice.did)
    mallory = SoftwareSigner.generate()

    async def go():
        bb, bm = await _messenger(bob, mosquitto)
        try:
            genuine = seal({"n": 1}, signer=alice.signer, recipient=bob.signer.public_key, seq=1, now=time.time())
            v, header, payload, sig = msgpack.unpackb(genuine)
            forged = msgpack.packb([v, header, msgpack.packb({"n": 1000}), sig])  # alice's signature, new body
            stranger = seal({"hi": 1}, signer=mallory, recipient=bob.signer.public_key, seq=1, now=time.time())
            for data in (genuine, genuine, forged, stranger, b"\x00garbage"):
                await asyncio.to_thread(publisher.publish, inbox_topic(bob.did), data)
            await until(lambda: bm.received + sum(bm.refused.values()) == 5, what="bob handled the five messages")
            return bm.refused, bm.received
        finally:
            await bm.stop()
            await bb.aclose()

    refused, received = asyncio.run(go())
    assert received == 1
    assert refused == {"replayed": 1, "forged": 1, "unknown-sender": 1, "malformed": 1}
    recorded = bob.kinds("peer.refused")
    assert sorted(r["reason"] for r in recorded) == ["forged", "malformed", "replayed", "unknown-sender"]
    assert {r["from"] for r in recorded if r["reason"] != "malformed"} == {alice.did, mallory.public_key.did}


def test_replay_protection_survives_restart(nodes, mosquitto, publisher):
    alice, bob = nodes
    add_peer(bob.state, alice.did)
    genuine = seal({"n": 1}, signer=alice.signer, recipient=bob.signer.public_key, seq=7, now=time.time())

    async def deliver():
        bb, bm = await _messenger(bob, mosquitto)
        try:
            await asyncio.to_thread(publisher.publish, inbox_topic(bob.did), genuine)
            await until(lambda: bm.received + sum(bm.refused.values()) == 1, what="bob handled the message")
            return bm.received, dict(bm.refused)
        finally:
            await bm.stop()
            await bb.aclose()

    assert asyncio.run(deliver()) == (1, {})
    assert asyncio.run(deliver()) == (0, {"replayed": 1})  # a new process still refuses it


def test_agent_send_needs_policy_and_trust(nodes, mosquitto):
    from kestrel.policy.engine import PolicyEngine

    alice, bob = nodes

    async def go():
        ab, am = await _messenger(alice, mosquitto)
        try:
            engine = PolicyEngine(alice.state, alice.ledger)
            with pytest.raises(PeerSendDenied):  # no policy installed: default deny
                await send_under_policy(am, engine, bob.did, {"x": 1})
            _install_policy(alice.state, alice.ledger, "actions: [agent.send]\n")
            with pytest.raises(UsageError, match="trust list"):
                await send_under_policy(am, engine, bob.did, {"x": 1})
            add_peer(alice.state, bob.did)
            sent = await send_under_policy(am, engine, bob.did, {"x": 1})
            return sent
        finally:
            await am.stop()
            await ab.aclose()

    sent = asyncio.run(go())
    decisions = [(d["action"], d["decision"]) for d in alice.kinds("policy.decision")]
    assert decisions == [("agent.send", "deny"), ("agent.send", "allow"), ("agent.send", "allow")]
    assert [s["seq"] for s in alice.kinds("peer.sent")] == [sent.seq] == [1]
