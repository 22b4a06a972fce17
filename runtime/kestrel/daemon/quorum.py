"""Quorum-gated actions: the vote protocol over peer messages (the I/O shell; docs/quorum.md).

The proposer (the agent whose policy answered ``actions[i].quorum``) records ``quorum.proposed``,
sends a ``quorum.request`` to every other member over the signed peer messaging, and waits
until ``threshold`` approvals are in, until enough members refused that it cannot be met, or
until the deadline (an offline member's silence is a refusal: timeout -> deny). Each member
evaluates the same request against its own policy (``policy.decision`` in its ledger), records
``quorum.voted`` and answers: an approval carries its BLS signature over the canonical decision
message and its BLS key certificate. The proposer checks every vote on arrival (certificate,
proof of possession, rotation, signature), records each one durably (``quorum.vote``, accepted
or not, late ones too), aggregates K approvals into one signature, verifies it, records
``quorum.decided`` with the signer set, certificates and aggregate, and only then lets the
action run. The outcome is sent back to the members, who record ``quorum.outcome``.

Pure checks live in :mod:`kestrel.policy.quorum`; the BLS primitives in :mod:`kestrel.identity.bls`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._internal.fsutil import atomic_write, ensure_private_dir, read_bytes
from .._internal.paths import StateLayout
from ..errors import DataError, KestrelError
from ..identity.bls import VerifiedCertificate, aggregate, verify_aggregate
from ..identity.keys import SignatureError
from ..policy.quorum import (
    DecisionRequest,
    Quorum,
    QuorumMessageError,
    check_vote,
    parse_request,
    parse_vote,
    quorum_rule,
)

if TYPE_CHECKING:
    from ..ledger.recorder import RecordLog

__all__ = ["QuorumCoordinator", "QuorumOutcome", "PeerSerials", "DEFAULT_TIMEOUT_S"]

log = logging.getLogger("kestrel.daemon.quorum")
DEFAULT_TIMEOUT_S = 5.0
_MAX_OPEN = 64  # proposals waiting for votes at once
_MAX_REMEMBERED = 1024  # decided requests remembered (late votes), requests seen (replays)


class PeerSerials:
    """The highest BLS certificate serial seen from each peer (``STATE/data/quorum-serials.json``):
    a vote under an older certificate was signed by a rotated-away key and is refused."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self._path = StateLayout(Path(state_dir)).data / "quorum-serials.json"
        self._serials: dict[str, int] = {}
        if self._path.exists():
            try:
                doc = json.loads(read_bytes(self._path, what="quorum serials", max_size=1 << 20))
                self._serials = {str(k): int(v) for k, v in doc["serials"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise DataError(
                    f"{self._path} is corrupt: {exc}", hint="restore it from a backup; Kestrel will not overwrite it"
                ) from None

    def get(self, did: str) -> int:
        return self._serials.get(did, 0)

    def raise_to(self, did: str, serial: int) -> None:
        if serial <= self._serials.get(did, 0):
            return
        self._serials[did] = serial
        ensure_private_dir(self._path.parent)
        atomic_write(self._path, json.dumps({"version": 1, "serials": self._serials}, sort_keys=True).encode())


@dataclass(frozen=True)
class QuorumOutcome:
    allowed: bool
    reason: str
    request: DecisionRequest
    signers: tuple[str, ...] = ()
    aggregate: bytes | None = None


@dataclass
class _Open:
    request: DecisionRequest
    quorum: Quorum
    approvals: dict[str, tuple[bytes, VerifiedCertificate]] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class QuorumCoordinator:
    """Proposes quorum-gated actions and answers other agents' requests, over ``messenger``."""

    def __init__(
        self,
        *,
        messenger: Any,
        ledger: RecordLog,
        policy: Any,
        bls_key: Any,
        state_dir: str | os.PathLike[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.messenger, self.ledger, self.policy, self.bls_key = messenger, ledger, policy, bls_key
        self.did = messenger.did
        self.timeout_s = timeout_s
        self._clock = clock
        self._serials = PeerSerials(state_dir)
        self._open: dict[str, _Open] = {}
        self._decided: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._seen: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
        self._certs: collections.OrderedDict[str, VerifiedCertificate] = collections.OrderedDict()  # by sha256
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = {"proposed": 0, "met": 0, "not_met": 0, "votes_in": 0, "votes_refused": 0, "voted": 0}
        messenger.handlers.update(
            {"quorum.request": self._on_request, "quorum.vote": self._on_vote, "quorum.outcome": self._on_outcome}
        )

    def quorum_for(self, decision: Any) -> Quorum | None:
        """The quorum ``decision`` waits for (the policy answered ``actions[i].quorum``), else None."""
        return quorum_rule(getattr(self.policy, "policy", None), decision)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for op in self._open.values():
            op.changed.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- proposing ---------------------------------------------------------------------------
    async def gate(self, proposal: Any, decision: Any) -> Any:
        """The pipeline's view: the decision, now the group's (allowed only if the quorum was met and
        its aggregate is recorded). The arguments asked about are the ones the policy evaluated."""
        args = getattr(decision, "args", None)
        args = dict(args if args is not None else proposal.args)
        outcome = await self.propose(proposal.action, args, decision)
        return dataclasses.replace(decision, allowed=outcome.allowed, reason=outcome.reason)

    async def propose(
        self, action: str, args: dict[str, Any], decision: Any, quorum: Quorum | None = None
    ) -> QuorumOutcome:
        """Ask the group about an action the local policy sent to a quorum; return the outcome,
        recorded (``quorum.decided``) before this returns. Never raises for a refusal."""
        quorum = quorum or self.quorum_for(decision)
        if quorum is None:
            raise KestrelError(f"{action} is not waiting for a quorum (rule {decision.rule})")
        now = self._clock()
        req = DecisionRequest(
            proposer=self.did,
            action=action,
            args_digest=decision.args_digest,
            policy=decision.policy_digest,
            deadline_ms=int((now + self.timeout_s) * 1000),
            nonce=os.urandom(16),
            threshold=quorum.threshold,
            of=quorum.of,
        )
        self.stats["proposed"] += 1
        if len(self._open) >= _MAX_OPEN:
            return await self._finish(_Open(req, quorum), False, "too many proposals waiting for votes")
        op = _Open(req, quorum)
        self._open[req.id] = op
        try:
            self._record("quorum.proposed", {"id": req.id, **req.to_body()})  # durable before any request:
            # the ledger is FIFO and each request's peer.sent is awaited before it is published
            if self.did in quorum.of:
                self._own_vote(op)
            body = {"t": "quorum.request", **req.to_body(), "args": args}
            sends = [self._ask(op, did, body) for did in quorum.of if did != self.did]
            await asyncio.gather(*sends)
            return await self._wait(op)
        finally:
            self._open.pop(req.id, None)

    def _own_vote(self, op: _Open) -> None:
        if self.bls_key is None:
            op.refusals[self.did] = "this agent has no BLS key (kestrel identity bls --create)"
            return
        op.approvals[self.did] = (self.bls_key.secret.sign(op.request.message()), self.bls_key.certificate)

    async def _ask(self, op: _Open, did: str, body: dict[str, Any]) -> None:
        try:
            await self.messenger.send(did, body)
        except KestrelError as exc:  # not trusted, broker gone: that member cannot vote
            op.refusals[did] = f"request not sent: {exc.message}"
            await self.ledger.append_async(
                "quorum.vote",
                {"id": op.request.id, "from": did, "vote": "none", "accepted": False, "reason": op.refusals[did][:256]},
            )
            op.changed.set()

    async def _wait(self, op: _Open) -> QuorumOutcome:
        req, k, n = op.request, op.quorum.threshold, len(op.quorum.of)
        while True:
            if len(op.approvals) >= k:
                return await self._finish(op, True, f"quorum met: {len(op.approvals)} of {n} approved")
            if len(op.refusals) > n - k:
                return await self._finish(
                    op, False, f"quorum not met: {len(op.refusals)} of {n} refused (threshold {k})"
                )
            remaining = req.deadline_ms / 1000.0 - self._clock()
            if remaining <= 0:
                silent = n - len(op.approvals) - len(op.refusals)
                return await self._finish(
                    op,
                    False,
                    f"quorum not met by the deadline: {len(op.approvals)} of {k} "
                    f"approvals, {silent} member(s) did not answer",
                )
            op.changed.clear()
            try:
                await asyncio.wait_for(op.changed.wait(), remaining)
            except TimeoutError:
                pass

    async def _finish(self, op: _Open, met: bool, reason: str) -> QuorumOutcome:
        req = op.request
        body: dict[str, Any] = {"id": req.id, **req.to_body(), "outcome": "allow" if met else "deny", "reason": reason}
        signers: tuple[str, ...] = ()
        agg = None
        if met:
            chosen = sorted(op.approvals.items())[: op.quorum.threshold]  # exactly K, in DID order
            signers = tuple(did for did, _ in chosen)
            try:
                agg = aggregate([sig for _, (sig, _c) in chosen])
                verify_aggregate([c.key for _, (_s, c) in chosen], req.message(), agg)
            except (SignatureError, DataError) as exc:  # cannot happen for checked votes: fail closed
                met, reason, signers, agg = False, f"aggregate signature failed: {exc.message}", (), None
                body.update(outcome="deny", reason=reason)
            else:
                body.update(
                    signers=list(signers),
                    certs=[c.data for _, (_s, c) in chosen],
                    aggregate=agg,
                    serials=[c.serial for _, (_s, c) in chosen],
                )
        body["refusals"] = {d: r[:256] for d, r in sorted(op.refusals.items())}
        await self.ledger.append_async("quorum.decided", body)  # durable before anything executes
        self.stats["met" if met else "not_met"] += 1
        self._remember(self._decided, req.id, body["outcome"])
        outcome = {
            "t": "quorum.outcome",
            "id": req.id,
            "outcome": body["outcome"],
            "reason": reason[:256],
            "signers": list(signers),
        }
        for did in op.quorum.of:
            if did != self.did and not op.refusals.get(did, "").startswith("request not sent"):
                self._spawn(self._tell(did, outcome))
        return QuorumOutcome(met, reason, req, signers, agg)

    async def _tell(self, did: str, body: dict[str, Any]) -> None:
        try:
            await self.messenger.send(did, body)
        except KestrelError as exc:
            log.info("could not send the quorum outcome to %s: %s", did, exc.message)

    def _record(self, kind: str, body: dict[str, Any]) -> None:
        """Queue a record without waiting; a later awaited append (FIFO) covers its durability."""
        submit = getattr(self.ledger, "submit", None)
        if submit is None:
            self._spawn(self.ledger.append_async(kind, body))
            return
        submit(kind, body).add_done_callback(self._recorded)

    @staticmethod
    def _recorded(fut: Any) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            log.error("a quorum record could not be written to the ledger: %s", exc)

    @staticmethod
    def _remember(store: collections.OrderedDict[Any, Any], key: Any, value: Any) -> None:
        store[key] = value
        while len(store) > _MAX_REMEMBERED:
            store.popitem(last=False)

    # -- votes arriving at the proposer -------------------------------------------------------
    async def _on_vote(self, msg: Any) -> None:
        sender = msg.sender
        record: dict[str, Any] = {"from": sender, "digest": msg.digest}
        try:
            vote = parse_vote(msg.body)
        except QuorumMessageError as exc:
            await self._vote_refused({**record, "id": None, "vote": None}, exc.reason)
            return
        record.update(id=vote.id, vote="allow" if vote.approve else "deny")
        op = self._open.get(vote.id)
        if op is None:
            await self._vote_refused(record, "late" if vote.id in self._decided else "unknown-request")
            return
        if self._clock() * 1000 > op.request.deadline_ms:
            await self._vote_refused(record, "late")
            return
        if sender in op.approvals or sender in op.refusals:
            await self._vote_refused(record, "duplicate")
            return
        if sender not in op.quorum.of:
            await self._vote_refused(record, "not-a-member")
            return
        if not vote.approve:
            op.refusals[sender] = vote.reason or "refused"
            await self.ledger.append_async("quorum.vote", {**record, "accepted": True, "reason": vote.reason})
            self.stats["votes_in"] += 1
            op.changed.set()
            return
        try:
            cert = await asyncio.to_thread(
                check_vote, op.request, vote, voter=sender, min_serial=self._serials.get(sender), known=self._certs
            )
        except QuorumMessageError as exc:
            await self._vote_refused(record, exc.reason, exc.message)
            return
        self._remember(self._certs, cert.digest, cert)
        if vote.id not in self._open or sender in op.approvals or sender in op.refusals:
            await self._vote_refused(record, "duplicate" if vote.id in self._open else "late")
            return  # a second approval that raced the first through the check, or the decision came first
        if cert.serial > self._serials.get(sender):
            await asyncio.to_thread(self._serials.raise_to, sender, cert.serial)
        # Queued, not awaited: quorum.decided comes later in the same FIFO ledger and is awaited
        # before anything executes, so a vote that counts is durable before its decision is.
        self._record("quorum.vote", {**record, "accepted": True, "serial": cert.serial, "cert": cert.digest})
        op.approvals[sender] = (vote.signature or b"", cert)
        self.stats["votes_in"] += 1
        op.changed.set()

    async def _vote_refused(self, record: dict[str, Any], reason: str, detail: str = "") -> None:
        self.stats["votes_refused"] += 1
        (log.info if reason == "late" else log.warning)(
            "quorum vote from %s refused: %s %s", record.get("from"), reason, detail
        )
        await self.ledger.append_async(
            "quorum.vote", {**record, "accepted": False, "reason": reason, "detail": detail[:256]}
        )

    # -- requests arriving at a member ----------------------------------------------------------
    async def _on_request(self, msg: Any) -> None:
        sender = msg.sender
        try:
            req, args = parse_request(msg.body, sender=sender, me=self.did)
        except QuorumMessageError as exc:
            nonce = msg.body.get("nonce") if isinstance(msg.body, dict) else None
            rid = nonce.hex() if isinstance(nonce, bytes) else None
            await self.ledger.append_async(
                "quorum.voted",
                {"id": rid, "proposer": sender, "vote": "deny", "reason": exc.reason, "digest": msg.digest},
            )
            if rid is not None and len(rid) == 32:
                await self._answer(sender, rid, False, f"request refused: {exc.reason}")
            return
        if (sender, req.id) in self._seen:
            await self.ledger.append_async(
                "quorum.voted",
                {"id": req.id, "proposer": sender, "vote": "none", "reason": "replayed", "digest": msg.digest},
            )
            return
        self._remember(self._seen, (sender, req.id), req.deadline_ms)
        body: dict[str, Any] = {
            "id": req.id,
            "proposer": sender,
            "action": req.action,
            "args_digest": req.args_digest,
            "deadline_ms": req.deadline_ms,
            "digest": msg.digest,
        }
        if self._clock() * 1000 > req.deadline_ms:
            approve, reason = False, "the request's deadline has passed"
        else:
            decision = await asyncio.to_thread(self.policy.decide, req.action, args)  # recorded by the engine
            body["policy"] = decision.policy_digest
            body["rule"] = decision.rule
            approve = decision.allowed or self.quorum_for(decision) is not None
            reason = decision.reason if not approve else f"allowed by {decision.rule.removesuffix('.quorum')}"
            if approve and decision.args_digest != req.args_digest:
                approve, reason = False, "the arguments' canonical form differs from the request's"
            if approve and self.bls_key is None:
                approve, reason = False, "this agent has no BLS key"
        body.update(vote="allow" if approve else "deny", reason=reason[:256])
        self._record("quorum.voted", body)  # durable before the vote leaves: its peer.sent follows it (FIFO)
        self.stats["voted"] += 1
        await self._answer(sender, req.id, approve, reason, req)

    async def _answer(self, to: str, rid: str, approve: bool, reason: str, req: DecisionRequest | None = None) -> None:
        vote: dict[str, Any] = {
            "t": "quorum.vote",
            "id": rid,
            "vote": "allow" if approve else "deny",
            "reason": reason[:256],
        }
        if approve and req is not None:
            vote.update(sig=self.bls_key.secret.sign(req.message()), cert=self.bls_key.certificate.data)
        try:
            await self.messenger.send(to, vote)
        except KestrelError as exc:
            log.warning("could not send a quorum vote to %s: %s", to, exc.message)

    async def _on_outcome(self, msg: Any) -> None:
        b = msg.body if isinstance(msg.body, dict) else {}
        rid, outcome, signers = b.get("id"), b.get("outcome"), b.get("signers")
        if (
            not isinstance(rid, str)
            or outcome not in ("allow", "deny")
            or not isinstance(signers, list)
            or (msg.sender, rid) not in self._seen
        ):
            await self.ledger.append_async(
                "quorum.outcome",
                {
                    "id": rid if isinstance(rid, str) else None,
                    "from": msg.sender,
                    "accepted": False,
                    "digest": msg.digest,
                },
            )
            return
        await self.ledger.append_async(
            "quorum.outcome",
            {
                "id": rid,
                "from": msg.sender,
                "accepted": True,
                "outcome": outcome,
                "reason": str(b.get("reason", ""))[:256],
                "signers": [str(s) for s in signers][:64],
                "digest": msg.digest,
            },
        )
