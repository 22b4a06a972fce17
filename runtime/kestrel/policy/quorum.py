"""Quorum rules and group decisions: the pure core (no I/O; format in docs/quorum.md).

A policy allow rule may carry ``quorum: {of: [DID, ...], threshold: K}``. Evaluation then never
allows the action by itself: it denies with the rule ``actions[i].quorum`` (so every caller that
does not know about quorums fails closed), and the daemon's quorum coordinator
(:mod:`kestrel.daemon.quorum`) asks the group. Every member that approves signs the same
canonical *decision message* with its BLS key; K signatures aggregate into one, which anyone
holding the members' AgentIDs verifies with :func:`verify_decision`.

Wire bodies (inside signed peer messages, docs/peer-messages.md) are parsed here too:
:func:`parse_request`, :func:`parse_vote`; each raises :class:`QuorumMessageError` with a
``reason`` code, never anything else.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DataError

if TYPE_CHECKING:  # the BLS library is imported only when a vote or decision is checked
    from ..identity.bls import VerifiedCertificate

__all__ = [
    "Quorum",
    "QUORUM_SUFFIX",
    "DECISION_DOMAIN",
    "MAX_MEMBERS",
    "DecisionRequest",
    "Vote",
    "VerifiedDecision",
    "QuorumMessageError",
    "parse_quorum",
    "quorum_rule",
    "decision_message",
    "parse_request",
    "parse_vote",
    "check_vote",
    "verify_decision",
]

QUORUM_SUFFIX = ".quorum"
DECISION_DOMAIN = b"kestrel/quorum-decision/v1\x00"
MAX_MEMBERS = 64
MAX_REASON = 256
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Quorum:
    """``threshold`` of the agents in ``of`` (did:key AgentIDs) must approve."""

    of: tuple[str, ...]
    threshold: int

    @property
    def reason(self) -> str:
        return f"needs a quorum: {self.threshold} of {len(self.of)} agents must approve"


def parse_quorum(ctx: Any, node: Any, what: str) -> Quorum | None:
    """Parse the ``quorum`` mapping of an allow rule (``ctx`` is the policy parser's context, so
    problems are reported with line:col like every other policy error)."""
    from ..identity.keys import KeyFormatError, PublicKey

    m = ctx.mapping(node, what, ("of", "threshold"))
    if m is None:
        return None
    if "of" not in m or "threshold" not in m:
        ctx.err(node, f"{what} needs both 'of' (a list of agent DIDs) and 'threshold'")
        return None
    members: list[str] = []
    entries = ctx.seq(m["of"], f"{what}.of")
    for n in entries:
        did = ctx.scalar(n, f"{what}.of", (str,))
        if did is None:
            continue
        try:
            PublicKey.from_did(did)
        except KeyFormatError:
            ctx.err(n, f"{what}.of: '{did}' is not an agent DID (did:key:z...; `kestrel identity show` prints it)")
            continue
        if did in members:
            ctx.err(n, f"{what}.of lists {did} twice")
            continue
        members.append(did)
    if len(members) > MAX_MEMBERS:
        ctx.err(m["of"], f"{what}.of lists {len(members)} agents; at most {MAX_MEMBERS}")
        return None
    threshold = ctx.scalar(m["threshold"], f"{what}.threshold", (int,))
    if threshold is not None and members and not 1 <= threshold <= len(members):
        ctx.err(m["threshold"], f"{what}.threshold must be between 1 and {len(members)} (the number of agents in 'of')")
        return None
    if not members:
        if not entries:
            ctx.err(m["of"], f"{what}.of must list at least one agent DID")
        return None
    if threshold is None:
        return None
    return Quorum(of=tuple(members), threshold=threshold)


def quorum_rule(policy: Any, decision: Any) -> Quorum | None:
    """The quorum a decision is waiting for (a deny by ``actions[i].quorum``), else None."""
    rule_id = getattr(decision, "rule", "")
    if policy is None or decision.allowed or not rule_id.endswith(QUORUM_SUFFIX):
        return None
    rid = rule_id[: -len(QUORUM_SUFFIX)]
    for rule in policy.allow.get(decision.action, ()):
        if rule.id == rid:
            return getattr(rule, "quorum", None)
    return None


# -- the decision message ------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionRequest:
    """What every approving member signs: the proposer's request, in canonical form."""

    proposer: str  # the proposing agent's did:key
    action: str
    args_digest: str  # hex sha256 of the canonical JSON of the arguments (kestrel.policy.args_digest)
    policy: str  # hex sha256 of the proposer's policy (the one holding the quorum rule)
    deadline_ms: int  # Unix ms; no vote counts after it
    nonce: bytes  # 16 random bytes, unique per request
    threshold: int
    of: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.nonce.hex()

    def message(self) -> bytes:
        return decision_message(self)

    def to_body(self) -> dict[str, Any]:
        return {
            "proposer": self.proposer,
            "action": self.action,
            "args_digest": self.args_digest,
            "policy": self.policy,
            "deadline_ms": self.deadline_ms,
            "nonce": self.nonce,
            "threshold": self.threshold,
            "of": list(self.of),
        }


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def decision_message(r: DecisionRequest) -> bytes:
    """``DECISION_DOMAIN || lp(proposer) || lp(action) || args_digest(32) || policy(32) ||
    u64(deadline_ms) || nonce(16) || u16(threshold) || u16(n) || lp(of[0]) .. lp(of[n-1])``,
    lp(x) = u32_be(len(x)) || x, strings UTF-8, digests raw (docs/quorum.md)."""
    return b"".join(
        [
            DECISION_DOMAIN,
            _lp(r.proposer.encode()),
            _lp(r.action.encode()),
            bytes.fromhex(r.args_digest),
            bytes.fromhex(r.policy),
            struct.pack(">Q", r.deadline_ms),
            r.nonce,
            struct.pack(">HH", r.threshold, len(r.of)),
            *(_lp(d.encode()) for d in r.of),
        ]
    )


class QuorumMessageError(DataError):
    """A quorum request, vote or decision record was refused. ``reason`` is a short code."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"quorum message refused ({reason}): {message}", hint=hint)
        self.reason = reason


def _request_fields(body: Mapping[str, Any], *, proposer: str) -> DecisionRequest:
    def bad(why: str) -> QuorumMessageError:
        return QuorumMessageError("malformed", why)

    try:
        action, adig, pol = body["action"], body["args_digest"], body["policy"]
        deadline, nonce, threshold, of = body["deadline_ms"], body["nonce"], body["threshold"], body["of"]
    except (KeyError, TypeError):
        raise bad("a field is missing") from None
    if not isinstance(action, str) or not 0 < len(action) <= 64:
        raise bad("'action' must be an action name")
    if not isinstance(adig, str) or not _HEX64.fullmatch(adig) or not isinstance(pol, str) or not _HEX64.fullmatch(pol):
        raise bad("'args_digest' and 'policy' must be 64 lower-case hex digits")
    if type(deadline) is not int or not 0 < deadline < 1 << 63:
        raise bad("'deadline_ms' must be a positive integer")
    if not isinstance(nonce, bytes) or len(nonce) != 16:
        raise bad("'nonce' must be 16 bytes")
    if (
        not isinstance(of, list)
        or not 0 < len(of) <= MAX_MEMBERS
        or not all(isinstance(d, str) for d in of)
        or len(set(of)) != len(of)
    ):
        raise bad(f"'of' must list 1 to {MAX_MEMBERS} distinct DIDs")
    if type(threshold) is not int or not 1 <= threshold <= len(of):
        raise bad("'threshold' must be between 1 and the number of members")
    return DecisionRequest(
        proposer=proposer,
        action=action,
        args_digest=adig,
        policy=pol,
        deadline_ms=deadline,
        nonce=nonce,
        threshold=threshold,
        of=tuple(of),
    )


def parse_request(body: Any, *, sender: str, me: str) -> tuple[DecisionRequest, dict[str, Any]]:
    """A ``quorum.request`` body from ``sender`` -> (request, arguments). Checks that the arguments
    hash to the signed ``args_digest`` and that ``me`` is a member."""
    from .model import args_digest

    if not isinstance(body, dict) or body.get("t") != "quorum.request":
        raise QuorumMessageError("malformed", "not a quorum.request")
    req = _request_fields(body, proposer=sender)
    args = body.get("args")
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise QuorumMessageError("malformed", "'args' must be a map with string keys")
    if args_digest(args) != req.args_digest:
        raise QuorumMessageError("args-mismatch", "the arguments do not hash to the request's args_digest")
    if me not in req.of:
        raise QuorumMessageError("not-a-member", f"{me} is not one of the request's {len(req.of)} members")
    return req, args


@dataclass(frozen=True)
class Vote:
    """A vote as received (not yet checked against a request)."""

    id: str
    approve: bool
    reason: str
    signature: bytes | None  # BLS over the decision message (approvals only)
    certificate: bytes | None  # the voter's BLS key certificate (approvals only)


def parse_vote(body: Any) -> Vote:
    if not isinstance(body, dict) or body.get("t") != "quorum.vote":
        raise QuorumMessageError("malformed", "not a quorum.vote")
    vid, vote, reason = body.get("id"), body.get("vote"), body.get("reason", "")
    if not isinstance(vid, str) or len(vid) != 32 or vote not in ("allow", "deny") or not isinstance(reason, str):
        raise QuorumMessageError("malformed", "'id', 'vote' (allow/deny) or 'reason' has the wrong type")
    sig, cert = body.get("sig"), body.get("cert")
    if vote == "allow" and (not isinstance(sig, bytes) or not isinstance(cert, bytes)):
        raise QuorumMessageError("malformed", "an approval carries 'sig' and 'cert' (bytes)")
    return Vote(
        vid, vote == "allow", reason[:MAX_REASON], sig if vote == "allow" else None, cert if vote == "allow" else None
    )


def check_vote(
    request: DecisionRequest,
    vote: Vote,
    *,
    voter: str,
    min_serial: int = 0,
    known: Mapping[str, VerifiedCertificate] | None = None,
) -> VerifiedCertificate:
    """Verify an approval from ``voter`` for ``request``: its certificate (identity signature, proof
    of possession, serial not below ``min_serial``, the last one seen from the voter) and its BLS
    signature over the request's decision message. Returns the voter's verified certificate.

    ``known``: certificates verified before, by the SHA-256 of their bytes (a proposer checks each
    certificate's signature and proof of possession once, not on every vote)."""
    import hashlib

    from ..identity.bls import BLSCertificateError, verify_certificate
    from ..identity.keys import SignatureError

    if vote.id != request.id:
        raise QuorumMessageError("wrong-request", f"the vote is for request {vote.id}, not {request.id}")
    if voter not in request.of:
        raise QuorumMessageError("not-a-member", f"{voter} is not a member of this quorum")
    if not vote.approve or vote.signature is None or vote.certificate is None:
        raise QuorumMessageError("malformed", "only approvals carry a signature to check")
    cert = known.get(hashlib.sha256(vote.certificate).hexdigest()) if known is not None else None
    if cert is not None and cert.agent != voter:
        raise QuorumMessageError("cert-wrong-agent", f"certificate is for {cert.agent}, expected {voter}")
    if cert is None:
        try:
            cert = verify_certificate(vote.certificate, agent=voter)
        except BLSCertificateError as exc:
            raise QuorumMessageError(f"cert-{exc.reason}", exc.message) from None
    if cert.serial < min_serial:
        raise QuorumMessageError(
            "cert-rotated", f"{voter}'s BLS key {cert.serial} was rotated away (serial {min_serial} seen since)"
        )
    try:
        cert.public_key.verify(vote.signature, request.message())
    except SignatureError:
        raise QuorumMessageError(
            "bad-signature",
            f"{voter}'s BLS signature is not over this request's "
            "decision message (other arguments, nonce or deadline?)",
        ) from None
    return cert


# -- the decision, as recorded and audited --------------------------------------------------------


@dataclass(frozen=True)
class VerifiedDecision:
    request: DecisionRequest
    signers: tuple[str, ...]
    serials: tuple[int, ...]


def verify_decision(body: Mapping[str, Any], *, members: Sequence[str] | None = None) -> VerifiedDecision:
    """Verify a ``quorum.decided`` record body with outcome ``allow`` (the auditor's check).

    Needs nothing but the body and, optionally, the AgentIDs the auditor expects as members:
    each signer's certificate is checked against the signer's AgentID (its identity key signed
    it) and its proof of possession, then the aggregate against the decision message.
    """
    from ..identity.bls import BLSCertificateError, verify_aggregate, verify_certificate
    from ..identity.keys import SignatureError

    if not isinstance(body, Mapping) or body.get("outcome") != "allow":
        raise QuorumMessageError("not-an-approval", "only an allow decision carries an aggregate signature")
    proposer = body.get("proposer")
    if not isinstance(proposer, str):
        raise QuorumMessageError("malformed", "'proposer' is missing")
    req = _request_fields(body, proposer=proposer)
    signers, certs, agg = body.get("signers"), body.get("certs"), body.get("aggregate")
    if (
        not isinstance(signers, list)
        or not isinstance(certs, list)
        or len(signers) != len(certs)
        or not isinstance(agg, bytes)
    ):
        raise QuorumMessageError("malformed", "'signers', 'certs' and 'aggregate' do not fit together")
    if len(set(signers)) != len(signers) or not set(signers) <= set(req.of):
        raise QuorumMessageError("not-a-member", "a signer is repeated or not a member of the quorum")
    if len(signers) < req.threshold:
        raise QuorumMessageError("below-threshold", f"{len(signers)} signers, threshold {req.threshold}")
    if members is not None and set(req.of) - set(members):
        raise QuorumMessageError(
            "unknown-member",
            "the quorum names agents the auditor does not know: " + ", ".join(sorted(set(req.of) - set(members))),
        )
    keys, serials = [], []
    for did, cert_bytes in zip(signers, certs, strict=False):
        try:
            cert = verify_certificate(cert_bytes, agent=did)
        except BLSCertificateError as exc:
            raise QuorumMessageError(f"cert-{exc.reason}", exc.message) from None
        keys.append(cert.key)
        serials.append(cert.serial)
    try:
        verify_aggregate(keys, req.message(), agg)
    except SignatureError as exc:
        raise QuorumMessageError("bad-aggregate", exc.message) from None
    return VerifiedDecision(req, tuple(signers), tuple(serials))
