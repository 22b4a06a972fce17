"""Owner operations through the control socket (ota.apply/rollback, trust.apply), peer.receive's
bad input, and the policy engine re-reading the active policy when the daemon applies a bundle."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time

import pytest

from kestrel.daemon import protocol as P
from kestrel.identity.keys import SoftwareSigner
from kestrel.sdk import Client, RemoteError

from .conftest import GPIO_CONFIG, in_thread, running

SMALL_UPLOADS = (
    GPIO_CONFIG
    + """
    ota: {max_bundle: 4096}
"""
)


def _owned(agent) -> SoftwareSigner:
    """Give the agent an owner (trust root v1) and return the owner's key."""
    from kestrel.ota.store import OtaDir

    owner = SoftwareSigner.generate()
    OtaDir(agent.state).init_root([owner.public_key.did], 1)
    return owner


def _bundle(agent, owner: SoftwareSigner, policy: str, counter: int) -> bytes:
    from kestrel.ota import sign_bundle
    from kestrel.ota.build import make_bundle

    now = time.time()
    return sign_bundle(
        make_bundle(
            policy=policy.encode(), counter=counter, now=now, expires=now + 3600, agents=[agent.signer.public_key.did]
        ),
        owner,
    )


def _raw(state, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(state / "run" / "control.sock"))
        s.sendall(line)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, "daemon hung up"
            buf += chunk
    return json.loads(buf)


async def test_ota_apply_in_chunks_switches_the_policy_at_once_and_rollback(agent, monkeypatch):
    owner = _owned(agent)
    monkeypatch.setattr(P, "UPLOAD_CHUNK", 100)  # a real bundle in several chunks
    async with running(agent, GPIO_CONFIG) as d:
        client = Client(agent.state)
        with pytest.raises(RemoteError) as denied:
            await in_thread(client.call, "gpio.write", actuator="lamp", value=1)
        assert denied.value.code == "denied"
        bundle = _bundle(agent, owner, "actions: [gpio.write]\n", 1)
        assert len(bundle) > 4 * 100
        r = await in_thread(client.ota_apply, bundle)
        assert r["changed"] and r["counter"] == 1 and r["slot"] == "a"
        assert (await in_thread(client.call, "gpio.write", actuator="lamp", value=1))["value"] == 1
        again = await in_thread(client.ota_apply, bundle)
        assert again["changed"] is False
        r2 = await in_thread(client.ota_apply, _bundle(agent, owner, "actions: [send_email]\n", 2))
        assert r2["slot"] == "b" and r2["previous_slot"] == "a"
        with pytest.raises(RemoteError):
            await in_thread(client.call, "gpio.write", actuator="lamp", value=0)
        back = await in_thread(client.ota_rollback, reason="test")
        assert back["slot"] == "a" and d.policy.bundle_digest == r["bundle"]
        assert (await in_thread(client.call, "gpio.write", actuator="lamp", value=0))["value"] == 0
    applied = agent.kinds("ota.applied")
    assert [a["counter"] for a in applied] == [1, 2]
    assert all(a["source"].startswith("control:uid=") for a in applied)
    assert agent.kinds("ota.rollback")[-1]["reason"] == "test"


async def test_bad_bundles_and_bad_requests_are_refused_clearly(agent):
    _owned(agent)
    async with running(agent, SMALL_UPLOADS) as d:
        client = Client(agent.state)
        with pytest.raises(RemoteError) as bad:  # garbage: refused by kestrel.ota, recorded
            await in_thread(client.ota_apply, b"not a bundle at all")
        assert bad.value.code == "failed" and bad.value.reason and bad.value.exit_code not in (0, 1)
        assert agent.kinds("ota.rejected")[-1]["reason"] == bad.value.reason
        with pytest.raises(RemoteError) as big:  # over ota.max_bundle: refused at the first chunk, recorded
            await in_thread(client.ota_apply, b"x" * 5000)
        assert big.value.code == "failed" and big.value.reason == "oversize" and "max_bundle" in big.value.message
        oversize = agent.kinds("ota.rejected")[-1]
        assert (oversize["reason"], oversize["size"]) == ("oversize", 5000)
        assert oversize["sha256"] == hashlib.sha256(b"x" * 5000).hexdigest()
        with pytest.raises(RemoteError) as none:
            await in_thread(client.ota_rollback)
        assert none.value.reason == "no-previous"
        with pytest.raises(RemoteError) as root:
            await in_thread(client.trust_apply, b"{}")
        assert root.value.code == "failed"
        with pytest.raises(RemoteError) as nopeers:  # no MQTT configured
            await in_thread(client.messages)
        assert nopeers.value.code == "failed" and "mqtt" in (nopeers.value.hint or "")
        with pytest.raises(RemoteError) as nomqtt:  # agent.send needs the policy first: denied (no policy)
            await in_thread(client.call, "agent.send", to="did:key:z", body=1)
        assert nomqtt.value.code == "denied"
        for params in ({"data": "00ff"}, {"data": {"$hex": "zz"}}, {"data": {"$hex": "00"}, "more": "yes"}):
            reply = await in_thread(_raw, agent.state, P.encode({"id": 7, "method": "ota.apply", "params": params}))
            assert reply["id"] == 7 and reply["error"]["code"] == "bad_request"
        for params in ({"timeout": -1}, {"max": 0}, {"timeout": "soon"}):
            reply = await in_thread(_raw, agent.state, P.encode({"id": 8, "method": "peer.receive", "params": params}))
            assert reply["error"]["code"] == "bad_request"
        reply = await in_thread(
            _raw, agent.state, P.encode({"id": 9, "method": "ota.rollback", "params": {"reason": ""}})
        )
        assert reply["error"]["code"] == "bad_request"
        assert d.unhealthy() is None
    assert agent.kinds("ota.applied") == [] and agent.kinds("trust.rotated") == []
    (rejected,) = agent.kinds("trust.rejected")
    assert rejected["reason"] == "root-malformed" and rejected["size"] == 2
    assert rejected["sha256"] == hashlib.sha256(b"{}").hexdigest()


async def test_trust_apply_rotates_the_root_and_records_it(agent):
    from kestrel.ota.root import root_envelope, root_payload, sign_root

    owner = _owned(agent)
    new = SoftwareSigner.generate()
    env = root_envelope(root_payload([new.public_key.did], 1, 2))
    env = sign_root(sign_root(env, owner), new)
    async with running(agent, GPIO_CONFIG):
        r = await in_thread(Client(agent.state).trust_apply, env)
    assert (r["from_version"], r["version"], r["owners"]) == (1, 2, [new.public_key.did])
    assert agent.kinds("trust.rotated") == [r]


async def test_a_rotation_without_the_current_owners_signatures_is_refused_and_recorded(agent):
    from kestrel.ota.root import root_envelope, root_payload, sign_root
    from kestrel.ota.store import OtaDir

    _owned(agent)
    before = OtaDir(agent.state).root_file.read_bytes()
    stranger = SoftwareSigner.generate()
    env = sign_root(root_envelope(root_payload([stranger.public_key.did], 1, 2)), stranger)
    async with running(agent, GPIO_CONFIG):
        with pytest.raises(RemoteError) as exc:
            await in_thread(Client(agent.state).trust_apply, env)
    assert "threshold" in exc.value.message or "sign" in exc.value.message
    assert OtaDir(agent.state).root_file.read_bytes() == before  # the old root stays in force
    assert agent.kinds("trust.rotated") == []
    (rejected,) = agent.kinds("trust.rejected")
    assert (rejected["reason"], rejected["size"], rejected["sha256"]) == (
        "root-threshold",
        len(env),
        hashlib.sha256(env).hexdigest(),
    )


def test_engine_recheck_interval_and_invalidate(agent):
    """With recheck_s the engine stats the pointer at most that often; invalidate() re-reads at once."""
    from kestrel.ota import apply_bundle
    from kestrel.policy import PolicyEngine

    owner = _owned(agent)
    apply_bundle(agent.state, _bundle(agent, owner, "actions: [a]\n", 1), ledger=agent.ledger, now=time.time())
    lazy = PolicyEngine(agent.state, agent.ledger, recheck_s=3600.0)
    eager = PolicyEngine(agent.state, agent.ledger)
    quick = PolicyEngine(agent.state, agent.ledger, recheck_s=0.05)
    for e in (lazy, eager, quick):
        assert e.decide("a").allowed
    apply_bundle(agent.state, _bundle(agent, owner, "actions: [b]\n", 2), ledger=agent.ledger, now=time.time())
    assert not eager.decide("a").allowed  # default: one stat per decision, exact
    assert lazy.decide("a").allowed  # not looked yet (the daemon calls invalidate after its applies)
    time.sleep(0.1)  # kept: the recheck interval (0.05 s) passing is what is tested
    assert quick.decide("b").allowed  # looked again after its interval
    lazy.invalidate()
    assert lazy.decide("b").allowed and not lazy.decide("a").allowed


async def test_record_hook_for_commands_that_record_while_the_daemon_runs(agent):
    """`recording_ledger` (for kestrel deploy / memory add) appends through the daemon, allowed kinds only."""
    from kestrel.cli.through import recording_ledger

    async with running(agent, GPIO_CONFIG):

        def use_hook() -> dict:
            with recording_ledger(agent.state) as ledger:
                return ledger.append("memory.added", {"id": 1, "digest": "ab" * 32, "model": "m", "evicted": []})

        r = await in_thread(use_hook)
        assert isinstance(r["seq"], int) and len(r["digest"]) == 64
        with pytest.raises(RemoteError) as bad:
            await in_thread(Client(agent.state).record, "ota.applied", {"counter": 99})
        assert bad.value.code == "bad_request"
        with pytest.raises(RemoteError):
            await in_thread(Client(agent.state).record, "memory.added", "not a mapping")
    assert [r["id"] for r in agent.kinds("memory.added")] == [1]
    assert agent.kinds("ota.applied") == []


async def test_kestrel_status_shows_retention_warnings_of_the_sync_status(agent, capsys):
    from kestrel.cli import main
    from kestrel.sync.state import SyncStatus, write_status

    write_status(
        agent.state,
        SyncStatus(
            agent=agent.signer.public_key.did,
            connected=False,
            acked=3,
            ledger_size=9,
            rate=0.0,
            updated=time.time(),
            warnings=("ledger uses 85% of 1000 bytes",),
        ),
    )
    async with running(agent, GPIO_CONFIG):
        rc = await in_thread(main, ["status", "--state", str(agent.state)])
    out = capsys.readouterr().out
    assert rc == 0 and "warning  ledger uses 85% of 1000 bytes" in out
    shown = re.search(r"ledger   (\d+) records, (\d+) covered by a signed checkpoint\n", out)
    assert shown and int(shown[2]) <= int(shown[1]) <= agent.ledger.size, out
    agent.ledger.append("test.mark", {})
    agent.ledger.flush()  # signed now: a daemon started next reports it covered
    async with running(agent, GPIO_CONFIG):
        led = (await in_thread(Client(agent.state).status))["ledger"]
    assert led["first_seq"] == 0 and 0 < led["signed"] <= led["size"], led
    (agent.state / "data" / "sync" / "status.json").write_text("{broken")
    async with running(agent, GPIO_CONFIG):
        rc = await in_thread(main, ["status", "--state", str(agent.state)])
    out = capsys.readouterr().out
    assert rc == 0 and "sync status" in out and "corrupt" in out  # reported, not a traceback
