"""The quorum rule (parse, evaluate fail-closed) and the pure core of group decisions:
the canonical decision message, vote checks and the auditor's verification."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.policy import ActionRequest, PolicyError, PolicyState, args_digest, evaluate, parse_policy
from kestrel.policy.quorum import (
    DecisionRequest,
    Quorum,
    QuorumMessageError,
    check_vote,
    decision_message,
    parse_request,
    parse_vote,
    quorum_rule,
    verify_decision,
)

A, B, C = (SoftwareSigner.generate() for _ in range(3))
DIDS = [s.public_key.did for s in (A, B, C)]

POLICY = f"""\
actions:
  - read_sensor
  - action: open_valve
    args:
      valve: {{type: int, min: 1, max: 8}}
    quorum:
      of: [{DIDS[0]}, {DIDS[1]}, {DIDS[2]}]
      threshold: 2
"""


def test_quorum_rule_parses_and_never_allows_alone():
    policy = parse_policy(POLICY)
    rule = policy.allow["open_valve"][0]
    assert rule.quorum == Quorum(of=tuple(DIDS), threshold=2)
    d = evaluate(policy, ActionRequest("open_valve", {"valve": 3}), PolicyState(), time.time())
    assert not d.allowed and d.rule == "actions[1].quorum" and "2 of 3" in d.reason
    assert quorum_rule(policy, d) == rule.quorum
    # A request the rule itself refuses is an ordinary deny: no quorum is asked for.
    bad = evaluate(policy, ActionRequest("open_valve", {"valve": 99}), PolicyState(), time.time())
    assert not bad.allowed and bad.rule == "actions[1]" and quorum_rule(policy, bad) is None
    plain = evaluate(policy, ActionRequest("read_sensor", {}), PolicyState(), time.time())
    assert plain.allowed and quorum_rule(policy, plain) is None


@pytest.mark.parametrize(
    "body, where, words",
    [
        ("of: [did:key:zNOPE]\n      threshold: 1", (5, 12), "not an agent DID"),
        (f"of: [{DIDS[0]}, {DIDS[0]}]\n      threshold: 1", (5, 0), "twice"),
        (f"of: [{DIDS[0]}]\n      threshold: 2", (6, 18), "between 1 and 1"),
        (f"of: [{DIDS[0]}]\n      threshold: 0", (6, 18), "between 1 and 1"),
        (f"of: [{DIDS[0]}]\n      threshold: two", (6, 18), "must be an integer"),
        (f"of: [{DIDS[0]}]", (5, 7), "needs both"),
        ("of: []\n      threshold: 1", (5, 11), "at least one"),
        (f"of: [{DIDS[0]}]\n      threshold: 1\n      at_least: 1", (7, 7), "unknown key 'at_least'"),
    ],
)
def test_quorum_errors_have_line_and_column(body, where, words):
    text = f"actions:\n  - action: open_valve\n    reason: x\n    quorum:\n      {body}\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.yaml")
    issue = info.value.issues[0]
    assert words in issue.message, issue
    assert issue.line == where[0] and (where[1] == 0 or issue.column == where[1]), issue


def test_quorum_is_not_a_deny_rule_key():
    with pytest.raises(PolicyError, match="unknown key 'quorum'"):
        parse_policy(f"actions: [a]\ndeny:\n  - action: a\n    quorum: {{of: [{DIDS[0]}], threshold: 1}}\n")


def _request(**kw) -> DecisionRequest:
    base = dict(
        proposer=DIDS[0],
        action="open_valve",
        args_digest=args_digest({"valve": 3}),
        policy=hashlib.sha256(POLICY.encode()).hexdigest(),
        deadline_ms=1_800_000_000_000,
        nonce=bytes(range(16)),
        threshold=2,
        of=tuple(DIDS),
    )
    base.update(kw)
    return DecisionRequest(**base)


def test_decision_message_is_canonical_and_binds_every_field():
    r = _request()
    msg = decision_message(r)
    assert msg == decision_message(_request()) and msg.startswith(b"kestrel/quorum-decision/v1\x00")
    for change in (
        dict(action="close_valve"),
        dict(args_digest=args_digest({"valve": 4})),
        dict(policy="0" * 64),
        dict(deadline_ms=r.deadline_ms + 1),
        dict(nonce=bytes(16)),
        dict(threshold=3),
        dict(of=tuple(DIDS[:2])),
        dict(proposer=DIDS[1]),
    ):
        assert decision_message(_request(**change)) != msg, change


def test_decision_message_vector():
    """Documented in docs/quorum.md: anyone can rebuild these bytes."""
    r = DecisionRequest(
        proposer="did:key:z6MkA",
        action="open_valve",
        args_digest="11" * 32,
        policy="22" * 32,
        deadline_ms=1_800_000_000_000,
        nonce=bytes(range(16)),
        threshold=2,
        of=("did:key:z6MkA", "did:key:z6MkB"),
    )
    expected = (
        b"kestrel/quorum-decision/v1\x00"
        + b"\x00\x00\x00\x0ddid:key:z6MkA"
        + b"\x00\x00\x00\x0aopen_valve"
        + b"\x11" * 32
        + b"\x22" * 32
        + (1_800_000_000_000).to_bytes(8, "big")
        + bytes(range(16))
        + b"\x00\x02\x00\x02"
        + b"\x00\x00\x00\x0ddid:key:z6MkA"
        + b"\x00\x00\x00\x0ddid:key:z6MkB"
    )
    assert decision_message(r) == expected


def test_request_parsing_refuses_what_it_must():
    r = _request()
    body = {"t": "quorum.request", **r.to_body(), "args": {"valve": 3}}
    got, args = parse_request(body, sender=DIDS[0], me=DIDS[1])
    assert got == r and args == {"valve": 3}
    cases = {
        "args-mismatch": {**body, "args": {"valve": 4}},
        "not-a-member": body,  # parsed by an agent outside the quorum
        "malformed": {**body, "nonce": b"short"},
    }
    for reason, b in cases.items():
        with pytest.raises(QuorumMessageError) as info:
            parse_request(b, sender=DIDS[0], me=DIDS[1] if reason != "not-a-member" else "did:key:z6Mkother")
        assert info.value.reason == reason
    for junk in (
        None,
        [],
        {"t": "quorum.request"},
        {**body, "threshold": 4},
        {**body, "of": DIDS + DIDS[:1]},
        {**body, "deadline_ms": True},
        {**body, "args": {1: 2}},
        {**body, "policy": "X" * 64},
    ):
        with pytest.raises(QuorumMessageError):
            parse_request(junk, sender=DIDS[0], me=DIDS[1])


bls = pytest.importorskip("kestrel.identity.bls")


def _member(signer: SoftwareSigner, serial: int = 1):
    sk = bls.BLSSecretKey.generate()
    return sk, bls.issue_certificate(signer, sk, serial=serial, now=time.time())


def _approval(req, sk, cert):
    return parse_vote({"t": "quorum.vote", "id": req.id, "vote": "allow", "sig": sk.sign(req.message()), "cert": cert})


def test_votes_are_checked_against_the_request_and_the_voter():
    req = _request()
    sk_b, cert_b = _member(B)
    assert check_vote(req, _approval(req, sk_b, cert_b), voter=DIDS[1]).serial == 1
    other = _request(args_digest=args_digest({"valve": 4}))
    earlier = _request(nonce=os.urandom(16))
    cases = {
        "bad-signature": (
            req,
            parse_vote(
                {"t": "quorum.vote", "id": req.id, "vote": "allow", "sig": sk_b.sign(other.message()), "cert": cert_b}
            ),
            DIDS[1],
            0,
        ),
        "wrong-request": (req, _approval(earlier, sk_b, cert_b), DIDS[1], 0),  # a vote replayed from before
        "cert-wrong-agent": (req, _approval(req, sk_b, cert_b), DIDS[2], 0),  # B's certificate, C's message
        "cert-rotated": (req, _approval(req, sk_b, cert_b), DIDS[1], 2),
        "not-a-member": (_request(of=(DIDS[0], DIDS[2]), threshold=1), None, DIDS[1], 0),
    }
    for reason, (r, vote, voter, serial) in cases.items():
        vote = vote or _approval(r, sk_b, cert_b)
        with pytest.raises(QuorumMessageError) as info:
            check_vote(r, vote, voter=voter, min_serial=serial)
        assert info.value.reason == reason, (reason, info.value)
    for junk in (
        {"t": "quorum.vote", "id": req.id, "vote": "allow"},
        {"t": "quorum.vote", "id": 1, "vote": "deny"},
        {"t": "quorum.vote", "id": req.id, "vote": "maybe"},
        "x",
    ):
        with pytest.raises(QuorumMessageError):
            parse_vote(junk)


def _decided(req, members):
    sigs, certs, signers = [], [], []
    for signer, (sk, cert) in members:
        sigs.append(sk.sign(req.message()))
        certs.append(cert)
        signers.append(signer.public_key.did)
    return {**req.to_body(), "outcome": "allow", "signers": signers, "certs": certs, "aggregate": bls.aggregate(sigs)}


def test_auditor_verifies_a_decision_from_the_record_and_agent_ids_alone():
    req = _request()
    members = [(A, _member(A)), (C, _member(C))]
    body = _decided(req, members)
    got = verify_decision(body, members=DIDS)
    assert got.signers == (DIDS[0], DIDS[2]) and got.request == req
    tampered = {
        "bad-aggregate": {**body, "args_digest": args_digest({"valve": 4})},
        "below-threshold": {**_decided(req, members[:1])},
        "not-a-member": {**body, "signers": [DIDS[0], DIDS[0]]},
        "cert-wrong-agent": {**body, "signers": [DIDS[0], DIDS[1]]},
        "unknown-member": body,
    }
    for reason, b in tampered.items():
        with pytest.raises(QuorumMessageError) as info:
            verify_decision(b, members=DIDS if reason != "unknown-member" else DIDS[:2])
        assert info.value.reason == reason, (reason, info.value)


def test_decision_message_signature_vectors_in_the_docs():
    """docs/quorum.md pins the signature and proof of possession of the example message."""
    r = DecisionRequest(
        proposer="did:key:z6MkA",
        action="open_valve",
        args_digest="11" * 32,
        policy="22" * 32,
        deadline_ms=1_800_000_000_000,
        nonce=bytes(range(16)),
        threshold=2,
        of=("did:key:z6MkA", "did:key:z6MkB"),
    )
    assert (
        hashlib.sha256(decision_message(r)).hexdigest()
        == "cbc6617dd90aa81ff5e064512f24eb82e8623554647796df3e6336812fb1100d"
    )
    sk = bls.BLSSecretKey(bytes.fromhex("263dbd792f5b1be47ed85f8938c0f29586af0d3ac7b977f21c278fe1462040e3"))
    assert sk.sign(decision_message(r)).hex() == (
        "b73db91b7d235597652fcc665d8e52c38956148a1dda6aa406fd3d316bab36ab7f3c1741868ea0ce701dd6965b29250b"
        "000ec39f316117fa4067acc03930d75c754e086d13b31e207edbd5b9f903b87865e843b6ad95fd545db39fa083321874"
    )
    assert sk.prove_possession().hex() == (
        "b803eb0ed93ea10224a73b6b9c725796be9f5fefd215ef7a5b97234cc956cf6870db6127b7e4d824ec62276078e787db"
        "05584ce1adbf076bc0808ca0f15b73d59060254b25393d95dfc7abe3cda566842aaedf50bbb062aae1bbb6ef3b1f77e1"
    )
