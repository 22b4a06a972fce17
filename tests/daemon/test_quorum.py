"""Quorum-gated actions between three agents (daemons in this loop, real peer messaging over
mosquitto, real ledgers, policies from signed bundles, BLS keys sealed on disk): met, not met,
a member's policy denies, offline members, replayed votes, votes for other arguments, a rogue
key, a rotated-away key, and an auditor who checks a decision from one ledger export."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kestrel.ledger.export import EXPORT_MAGIC, verify_export
from kestrel.ledger.frame import RECORD, Frame, iter_frames
from kestrel.ledger.record import decode_record
from tests.identity.conftest import PASS

from .conftest import until
from .quorum_group import VALVE, Member, daemons, group_policy, make_group

bls = pytest.importorskip("kestrel.identity.bls")
from kestrel.daemon.pipeline import ActionDeniedError  # noqa: E402
from kestrel.identity.bls_store import create_bls_key  # noqa: E402
from kestrel.policy.quorum import QuorumMessageError, parse_request, verify_decision  # noqa: E402

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def trio(tmp_path: Path):
    members = make_group(tmp_path)
    yield members
    for m in members:
        m.ledger.close()


async def _call(d: Any) -> dict[str, Any]:
    return await d.control_call("gpio.write", dict(VALVE), source="control:test")


def _lamp(d: Any) -> int:
    return next(p["level"] for p in d.control_sim_list() if p["name"] == "lamp")


def _seqs(m: Member, kind: str) -> list[int]:
    m.ledger.flush()
    return [r.seq for r in m.ledger.records(kind=kind)]


def audit_export(data: bytes, agent: str, members: list[str]) -> list[Any]:
    """What an auditor does with one agent's ledger export and the members' AgentIDs."""
    from kestrel.identity.keys import PublicKey

    verify_export(data, PublicKey.from_did(agent))
    bodies = [
        decode_record(f.payload)
        for f in iter_frames(data, len(EXPORT_MAGIC))
        if isinstance(f, Frame) and f.type == RECORD
    ]
    return [
        verify_decision(r.body, members=members)
        for r in bodies
        if r.kind == "quorum.decided" and r.body["outcome"] == "allow"
    ]


async def test_two_of_three_met_recorded_everywhere_and_audited(trio, mosquitto, tmp_path):
    a, b, c = trio
    policy = group_policy(trio, 2)
    async with daemons(trio, mosquitto.port, [policy] * 3) as (da, db, dc):
        assert _lamp(da) == 0
        result = await _call(da)
        assert result and _lamp(da) == 1
        await until(
            lambda: len(b.kinds("quorum.outcome")) == 1 and len(c.kinds("quorum.outcome")) == 1,
            what="the outcome at both members",
        )
        await until(lambda: len(a.kinds("quorum.vote")) == 2, what="both votes recorded at the proposer")
    decided = a.kinds("quorum.decided")
    assert len(decided) == 1 and decided[0]["outcome"] == "allow"
    assert a.did in decided[0]["signers"] and len(decided[0]["signers"]) == 2
    # durable order at the proposer: proposed < the vote that counted < decided < executed
    assert (
        _seqs(a, "quorum.proposed")[0]
        < min(_seqs(a, "quorum.vote"))
        < _seqs(a, "quorum.decided")[0]
        < _seqs(a, "action.result")[0]
    )
    votes = a.kinds("quorum.vote")
    assert sorted(v["from"] for v in votes) == sorted([b.did, c.did])
    assert sum(v["accepted"] for v in votes) >= 1  # the second approval may come after the decision: 'late'
    assert all(v["accepted"] or v["reason"] == "late" for v in votes)
    for m in (b, c):
        voted = m.kinds("quorum.voted")
        assert [(v["vote"], v["proposer"], v["id"]) for v in voted] == [("allow", a.did, decided[0]["id"])]
        assert any(d["action"] == "gpio.write" for d in m.kinds("policy.decision"))  # its own policy decided
        assert m.kinds("quorum.outcome")[0]["outcome"] == "allow"
    # The auditor: one agent's ledger export and the three AgentIDs, nothing else.
    export = tmp_path / "a.export"
    a.ledger.export(export)
    found = audit_export(export.read_bytes(), a.did, [a.did, b.did, c.did])
    assert len(found) == 1 and found[0].request.action == "gpio.write"
    with pytest.raises(QuorumMessageError):
        audit_export(export.read_bytes(), a.did, [a.did, b.did])  # c unknown to this auditor
    # The same with the command line, from the export and from an inclusion proof of the decision.
    from kestrel.cli import main

    members = [x for m in trio for x in ("--member", m.did)]
    assert main(["audit", "quorum", str(export), "--agent", a.did, *members]) == 0
    proof = tmp_path / "decided.proof"
    seq = next(r.seq for r in a.ledger.records(kind="quorum.decided"))
    proof.write_bytes(a.ledger.prove(seq))
    assert main(["audit", "quorum", str(proof), "--agent", a.did, *members, "--json"]) == 0
    assert main(["audit", "quorum", str(export), "--agent", a.did, *members[:4]]) == 2  # c unknown
    assert main(["audit", "quorum", str(export), "--agent", b.did]) != 0  # not b's ledger


async def test_not_met_when_the_members_policies_deny(trio, mosquitto):
    a, b, c = trio
    async with daemons(
        trio, mosquitto.port, [group_policy(trio, 2), "actions: [gpio.read]\n", "actions: [gpio.read]\n"]
    ) as (da, db, dc):
        with pytest.raises(ActionDeniedError, match="quorum not met"):
            await _call(da)
        assert _lamp(da) == 0
    decided = a.kinds("quorum.decided")
    assert [d["outcome"] for d in decided] == ["deny"] and "aggregate" not in decided[0]
    assert sorted(decided[0]["refusals"]) == sorted([b.did, c.did])
    assert not a.kinds("action.result")
    for m in (b, c):
        assert [v["vote"] for v in m.kinds("quorum.voted")] == ["deny"]
        assert m.kinds("policy.decision")[-1]["decision"] == "deny"


async def test_one_member_denies_the_other_approves(trio, mosquitto):
    a, b, c = trio
    policy = group_policy(trio, 3)
    async with daemons(trio, mosquitto.port, [policy, policy, "actions: [gpio.read]\n"]) as (da, db, dc):
        with pytest.raises(ActionDeniedError, match="quorum not met"):  # 3 of 3 needed, c refuses
            await _call(da)
    assert [v["vote"] for v in c.kinds("quorum.voted")] == ["deny"]
    assert [v["vote"] for v in b.kinds("quorum.voted")] == ["allow"]
    assert c.did in a.kinds("quorum.decided")[0]["refusals"]


async def test_a_proposer_outside_the_group_needs_no_bls_key(trio, mosquitto):
    a, b, c = trio
    a.bls_key = None  # a's own key is not needed: b and c decide
    policy = f"actions:\n  - action: gpio.write\n    quorum: {{of: [{b.did}, {c.did}], threshold: 2}}\n"
    async with daemons(trio, mosquitto.port, [policy] * 3) as (da, db, dc):
        assert da.links.quorum is None
        assert await _call(da) and _lamp(da) == 1
        assert da.links.quorum is not None and da.links.quorum.bls_key is None
    decided = a.kinds("quorum.decided")
    assert decided[0]["outcome"] == "allow" and sorted(decided[0]["signers"]) == sorted([b.did, c.did])


async def test_offline_members_time_out_to_a_deny(trio, mosquitto):
    a, b, c = trio
    async with daemons([a], mosquitto.port, [group_policy(trio, 2)], timeout_s=1.0) as (da,):
        t0 = time.monotonic()
        with pytest.raises(ActionDeniedError, match="deadline"):
            await _call(da)
        assert 0.9 < time.monotonic() - t0 < 10
        assert _lamp(da) == 0
    decided = a.kinds("quorum.decided")
    assert decided[0]["outcome"] == "deny" and "did not answer" in decided[0]["reason"]


# -- a member whose answers the test writes by hand ----------------------------------------------


@contextlib.asynccontextmanager
async def by_hand(m: Member, port: int) -> AsyncIterator[Any]:
    """``m``'s peer messenger without a daemon: requests wait in its inbox, votes are crafted."""
    from kestrel.io.mqtt import MqttBridge
    from kestrel.sync.peers.messenger import PeerMessenger

    bridge = MqttBridge("127.0.0.1", port, agent_id=m.did, reconnect_initial=0.05)
    await bridge.start()
    assert await bridge.wait_connected(10)
    messenger = PeerMessenger(state_dir=m.state, signer=m.signer, bridge=bridge, ledger=m.ledger)
    await messenger.start()
    try:
        yield messenger
    finally:
        await messenger.stop()
        await bridge.aclose()


async def next_request(messenger: Any, proposer: Member, me: Member) -> tuple[Any, dict[str, Any]]:
    """The next quorum.request in ``me``'s inbox (outcomes of earlier requests are skipped)."""
    while True:
        msg = await messenger.receive(10)
        if msg.body.get("t") == "quorum.request":
            return parse_request(msg.body, sender=proposer.did, me=me.did)


def _vote(
    req: Any, key: Any, *, cert: bytes | None = None, message: bytes | None = None, rid: str | None = None
) -> dict[str, Any]:
    return {
        "t": "quorum.vote",
        "id": rid or req.id,
        "vote": "allow",
        "sig": key.secret.sign(message or req.message()),
        "cert": cert or key.certificate.data,
    }


async def test_replayed_rotated_other_args_and_rogue_votes_are_refused(trio, mosquitto):
    a, b, c = trio
    old_key = b.bls_key
    b.bls_key = create_bls_key(b.state, b.signer, ledger=b.ledger, passphrase=PASS)  # b rotates: serial 2
    assert b.bls_key.serial == 2 and not (b.state / "bls" / "key-1.enc").exists()
    policy = group_policy(trio, 2)
    async with daemons([a], mosquitto.port, [policy], timeout_s=3.0) as (da,), by_hand(b, mosquitto.port) as bm:
        # Request 1: b approves with its current key; the quorum (a + b) is met.
        call = asyncio.create_task(_call(da))
        req1, args = await next_request(bm, a, b)
        assert args == VALVE
        await bm.send(a.did, _vote(req1, b.bls_key))
        assert await call and _lamp(da) == 1

        # Request 2: every answer b gives is refused, so the request times out to a deny.
        call = asyncio.create_task(_call(da))
        req2, _ = await next_request(bm, a, b)
        other_args = req2.__class__(**{**req2.__dict__, "args_digest": "0" * 64})
        x = bls.BLSSecretKey.generate()
        rogue_pk = bls.BLSPublicKey(
            bytes(
                bls.load_backend().G1Element.from_bytes(x.public_key.raw)
                + bls.load_backend().G1Element.from_bytes(b.bls_key.secret.public_key.raw).negate()
            )
        )
        rogue_cert = _rogue_certificate(b, x, rogue_pk)
        attempts = {
            "late": _vote(req1, b.bls_key),  # the vote of request 1, replayed
            "bad-signature": _vote(req2, b.bls_key, message=req1.message()),  # request 1's signature, new id
            "cert-rotated": _vote(req2, old_key),  # the rotated-away key (a copy an attacker kept)
            "cert-no-possession": {**_vote(req2, b.bls_key), "sig": x.sign(req2.message()), "cert": rogue_cert},
        }
        for body in attempts.values():
            await bm.send(a.did, body)
        await bm.send(a.did, _vote(other_args, b.bls_key))  # approves other arguments
        with pytest.raises(ActionDeniedError, match="deadline"):
            await call
        refused = [(v["reason"], v["id"]) for v in a.kinds("quorum.vote") if not v["accepted"]]
    assert ("late", req1.id) in refused
    for reason in ("bad-signature", "cert-rotated", "cert-no-possession"):
        assert (reason, req2.id) in refused, (reason, refused)
    assert sum(1 for r, i in refused if r == "bad-signature" and i == req2.id) == 2  # replay and other args
    assert [d["outcome"] for d in a.kinds("quorum.decided")] == ["allow", "deny"]
    first = a.kinds("quorum.decided")[0]
    assert dict(zip(first["signers"], first["serials"], strict=False)) == {a.did: 1, b.did: 2}

    # The rogue-key aggregate a malicious member c might record as a decision: "b and c approved",
    # with c's key pk_c = g*x - pk_b, so that x alone signs for both. The pairing check passes
    # (tests/identity/test_bls.py shows it); the auditor refuses c's key: no proof of possession.
    forged = {
        **req2.to_body(),
        "outcome": "allow",
        "signers": [b.did, c.did],
        "certs": [b.bls_key.certificate.data, _rogue_certificate(c, x, rogue_pk)],
        "aggregate": x.sign(req2.message()),
    }
    with pytest.raises(QuorumMessageError) as info:
        verify_decision(forged, members=[a.did, b.did, c.did])
    assert info.value.reason == "cert-no-possession"


def _rogue_certificate(owner: Member, x: Any, rogue_pk: Any) -> bytes:
    """A certificate for ``rogue_pk`` signed by ``owner``'s identity key, with the only proof of
    possession its maker can produce (one for x)."""
    import msgpack

    body = msgpack.packb(
        {
            "v": 1,
            "agent": owner.did,
            "serial": 3,
            "pk": rogue_pk.raw,
            "pop": x.prove_possession(),
            "ts": int(time.time() * 1000),
        },
        use_bin_type=True,
    )
    return msgpack.packb([1, body, owner.signer.sign(bls.CERT_DOMAIN + body)], use_bin_type=True)
