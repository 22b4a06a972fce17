"""Outgoing peer sequence numbers: reserved durably in blocks, never reused after a restart, and
concurrent sends to one peer reach it in order (none refused as a replay)."""

from __future__ import annotations

import asyncio
import json

import pytest

from kestrel.sync.peers.trust import SEQ_BLOCK, PeerSeqStore, add_peer

from .test_peers import Node, _messenger


def test_numbers_increase_across_restarts_and_the_file_is_written_once_per_block(tmp_path):
    store = PeerSeqStore(tmp_path)
    path = tmp_path / "data" / "peer-seq.json"
    got = [store.next_outgoing("did:key:zA") for _ in range(SEQ_BLOCK)]
    assert got == list(range(1, SEQ_BLOCK + 1))
    assert json.loads(path.read_text())["sent"]["did:key:zA"] == SEQ_BLOCK  # one reservation so far
    first_write = path.stat().st_mtime_ns
    assert store.next_outgoing("did:key:zA") == SEQ_BLOCK + 1  # a new block: written again
    assert path.stat().st_mtime_ns >= first_write
    again = PeerSeqStore(tmp_path)  # a restart (or a crash) in the middle of the second block
    assert again.next_outgoing("did:key:zA") == 2 * SEQ_BLOCK + 1  # the rest of the block is skipped
    assert again.next_outgoing("did:key:zB") == 1


@pytest.mark.mosquitto
def test_concurrent_sends_to_one_peer_all_accepted(tmp_path, mosquitto):
    alice, bob = Node(tmp_path, "alice"), Node(tmp_path, "bob")
    add_peer(alice.state, bob.did)
    add_peer(bob.state, alice.did)

    async def go():
        ab, am = await _messenger(alice, mosquitto)
        bb, bm = await _messenger(bob, mosquitto)
        try:
            sent = await asyncio.gather(*(am.send(bob.did, {"n": i}) for i in range(20)))
            got = [await bm.receive(10) for _ in range(20)]
            return sent, got, dict(bm.refused)
        finally:
            for m, b in ((am, ab), (bm, bb)):
                await m.stop()
                await b.aclose()

    try:
        sent, got, refused = asyncio.run(go())
    finally:
        alice.ledger.close()
        bob.ledger.close()
    assert refused == {}
    assert [m.seq for m in got] == sorted(s.seq for s in sent)
    assert sorted(m.body["n"] for m in got) == list(range(20))
