"""The collector's verification logic over a :class:`CollectorStore` (no network, no clock of its own).

Records arrive as candidates (``pending``); they become *verified* only when a chain of them
from the agent's verified tip reaches a checkpoint signed by the agent's key: each record's
``seq`` must be its position, its ``prev`` the leaf hash of the record before, and the RFC 6962
root over all verified leaves must equal the checkpoint's root. Duplicates by (agent, seq) are
dropped; a record that contradicts a verified one, or is not on the verified chain, is refused
and reported; two signed checkpoints that disagree are kept as fork evidence.

An agent whose oldest records were pruned before they were synced sends its signed *base*
(frontier, prev hash and a checkpoint for exactly the pruned prefix, ``kestrel.ledger.base``):
when the verified prefix cannot reach the base's size otherwise, the collector accepts the base
and verifies on from it. Every step holds the agent (``CollectorStore.lock_agents``) so that
several collector processes sharing one database extend an agent's prefix one at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack

from ...identity.keys import PublicKey
from ...ledger.base import LogBase, verify_base
from ...ledger.checkpoint import CheckpointError, SignedCheckpoint, verify_checkpoint
from ...ledger.errors import LedgerVerificationError, RecordError
from ...ledger.merkle import Frontier, tree_root
from ...ledger.record import ZERO_HASH, decode_record
from ..wire import SyncFormatError, agent_from_topic, decode_batch
from .store import AgentState, CollectorStore, Fork, PendingRecord, Rejection

__all__ = ["CollectorCore", "Outcome", "frontier_of", "MAX_PENDING"]

MAX_PENDING = 1_000_000  # candidates held per agent before further records are refused
_MAX_BRANCHES = 64


@dataclass(frozen=True)
class Outcome:
    """What one message did."""

    did: str | None
    verified: int = 0  # records newly stored as verified
    duplicates: int = 0
    pending: int = 0  # records held until a checkpoint covers them
    refused: tuple[str, ...] = ()  # reason codes
    forks: int = 0
    based: int = 0  # size of a signed base accepted (0: none)


def frontier_of(state: AgentState) -> Frontier:
    """Rebuild the compact range of leaves [0, state.size) stored in ``state``."""
    return Frontier.from_hashes(state.size, state.frontier)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Acc:
    did: str
    verified: int = 0
    duplicates: int = 0
    pending: int = 0
    refused: list[str] = field(default_factory=list)
    forks: int = 0
    based: int = 0

    def done(self) -> Outcome:
        return Outcome(
            self.did, self.verified, self.duplicates, self.pending, tuple(self.refused), self.forks, self.based
        )


class CollectorCore:
    """Verify and store what arrives on ``kestrel/<did>/ledger/batch``."""

    def __init__(self, store: CollectorStore, *, clock: Callable[[], float], max_pending: int = MAX_PENDING) -> None:
        self.store = store
        self._clock = clock
        self._max_pending = max_pending

    def gap(self, did: str) -> tuple[int, int] | None:
        """Records ``(first, last)`` missing below the held ones, or None.

        A hole the agent does not fill after a resend request means it pruned those records
        before they were synced (retention ``drop-oldest``) or skipped one too large to send
        (its ``ledger.pruned`` / ``sync.skipped`` records say which): later records stay held,
        unverified, because nothing links them to the verified log (docs/collector.md).
        """
        tip = self.store.agent_state(did).size
        lowest, count = self.store.pending_sizes(did)
        return (tip, lowest - 1) if count and lowest > tip else None

    # -- entry points ----------------------------------------------------------------------------
    def handle_many(self, messages: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """Handle several messages in one transaction (one fsync): all of them are stored or none.

        The agents they name are locked first, all at once and in one global order."""
        with self.store.transaction():
            self.store.lock_agents([t.split("/")[1] for t, _ in messages if t.count("/") >= 2])
            return [self.handle(topic, payload) for topic, payload in messages]

    def handle(self, topic: str, payload: bytes) -> Outcome:
        now = self._clock()
        try:
            agent = agent_from_topic(topic)
        except SyncFormatError as exc:
            self.store.add_rejection(Rejection("?", None, "bad-topic", exc.message, _digest(payload), now))
            return Outcome(None, refused=("bad-topic",))
        acc = _Acc(agent.did)  # the DID string once: PublicKey.did encodes base58 each time
        try:
            batch = decode_batch(payload)
        except SyncFormatError as exc:
            self._refuse(acc, None, "malformed", exc.message, payload, now)
            return acc.done()
        with self.store.transaction():  # one message, one commit: all of its effects or none
            self.store.lock_agents([acc.did])
            base = self._verified_base(agent, batch.base, acc, now) if batch.base is not None else None
            if base is not None:
                self._take_checkpoint(agent, base.checkpoint, acc, now)
            cp = self._verified_note(agent, batch.checkpoint, acc, now) if batch.checkpoint is not None else None
            fresh = self._take_records(agent, batch.start, batch.records, acc, now)
            if cp is not None and fresh:
                fresh = self._fast_path(agent, fresh, cp, acc, now)
            if fresh:
                self._hold(agent, fresh, acc, now)
            if cp is not None:
                self._take_checkpoint(agent, cp, acc, now)
            self._advance(agent, acc, now)
            if base is not None and self._rebase(agent, base, acc, now):
                self._advance(agent, acc, now)
        return acc.done()

    def _refuse(self, acc: _Acc, seq: int | None, reason: str, detail: str, data: bytes, now: float) -> None:
        self.store.add_rejection(Rejection(acc.did, seq, reason, detail, _digest(data), now))
        acc.refused.append(reason)

    # -- records ---------------------------------------------------------------------------------
    def _take_records(
        self, agent: PublicKey, start: int, records: Sequence[bytes], acc: _Acc, now: float
    ) -> list[PendingRecord]:
        """Decode and check each record; drop duplicates, refuse conflicts; return the new ones."""
        state = self.store.agent_state(acc.did)
        fresh: list[PendingRecord] = []
        for i, raw in enumerate(records):
            seq = start + i
            try:
                rec = decode_record(raw)
            except RecordError as exc:
                self._refuse(acc, seq, "malformed-record", exc.message, raw, now)
                continue
            if rec.seq != seq:
                self._refuse(acc, seq, "wrong-seq", f"record says seq {rec.seq}, batch position is {seq}", raw, now)
                continue
            if seq < state.size:
                leaf = self.store.verified_leaf(acc.did, seq)
                if leaf == rec.digest:
                    acc.duplicates += 1
                elif leaf is None:
                    self._refuse(
                        acc,
                        seq,
                        "pruned-by-agent",
                        f"record {seq} lies in a range the agent's signed "
                        "base says it pruned before sync; nothing links it to the verified log",
                        raw,
                        now,
                    )
                else:
                    self._refuse(
                        acc,
                        seq,
                        "conflicts-with-verified",
                        f"record {seq} differs from the verified record {seq}",
                        raw,
                        now,
                    )
                continue
            fresh.append(PendingRecord(seq, bytes(raw), rec.digest, rec.prev, rec.kind, rec.time))
        return fresh

    def _hold(self, agent: PublicKey, fresh: list[PendingRecord], acc: _Acc, now: float) -> None:
        """Keep records as unverified candidates until a signed checkpoint covers them."""
        _, held = self.store.pending_sizes(acc.did)
        if held + len(fresh) > self._max_pending:
            for r in fresh:
                self._refuse(
                    acc,
                    r.seq,
                    "pending-limit",
                    f"more than {self._max_pending} unverified records held for this agent",
                    r.raw,
                    now,
                )
            return
        self.store.add_pending(acc.did, fresh, now=now)
        acc.pending += len(fresh)

    def _fast_path(
        self, agent: PublicKey, fresh: list[PendingRecord], cp: SignedCheckpoint, acc: _Acc, now: float
    ) -> list[PendingRecord]:
        """The common case, without the candidate table: the records from the verified tip to the
        checkpoint are this batch's (after at most one held run of single candidates, typically the
        previous batch's tail). Verify and store them directly; return the records left over."""
        state = self.store.agent_state(acc.did)
        first = fresh[0].seq
        n = cp.size - first
        if not (state.size <= first < cp.size and n <= len(fresh) and fresh[n - 1].seq == cp.size - 1):
            return fresh
        held = self.store.pending(acc.did, state.size, cp.size)
        if held.keys() != set(range(state.size, first)) or any(len(v) != 1 for v in held.values()):
            return fresh  # gaps below the batch, or competing candidates: the general path decides
        chain = [held[s][0] for s in range(state.size, first)] + fresh[:n]
        prev = self._tip(state)
        frontier = frontier_of(state)
        for r in chain:
            if r.prev != prev:
                return fresh
            frontier.append(r.leaf)
            prev = r.leaf
        if frontier.root() != cp.root:
            return fresh
        self.store.commit_verified(
            acc.did,
            chain,
            AgentState(acc.did, cp.size, frontier.hashes, cp.note, state.forked, chain[-1].leaf),
            now=now,
            drop_pending=bool(held),
        )
        acc.verified += len(chain)
        acc.pending = max(0, acc.pending - (first - state.size))
        self._check_passed(agent, state.size, cp.size, cp.note, acc, now)
        return fresh[n:]

    # -- checkpoints -----------------------------------------------------------------------------
    def _verified_note(self, agent: PublicKey, note: bytes, acc: _Acc, now: float) -> SignedCheckpoint | None:
        try:
            return verify_checkpoint(note, agent)
        except CheckpointError as exc:
            self._refuse(acc, None, "bad-checkpoint", exc.message, note, now)
            return None

    def _take_checkpoint(self, agent: PublicKey, cp: SignedCheckpoint, acc: _Acc, now: float) -> None:
        """Check a signature-verified checkpoint against the verified log and keep it."""
        state = self.store.agent_state(acc.did)
        for size, root, known_note in self.store.checkpoints(acc.did, min_size=cp.size):
            if size != cp.size:
                break
            if root == cp.root:
                return  # already known
            self._fork(acc, cp, known_note, "two signed checkpoints of the same size disagree", now)
            return
        if cp.size <= state.size:
            ours = frontier_of(state).root() if cp.size == state.size else self._root_at(acc.did, cp.size)
            if ours is not None and ours != cp.root:
                self._fork(acc, cp, state.checkpoint, f"checkpoint of size {cp.size} contradicts the verified log", now)
                return
        self.store.add_checkpoint(acc.did, cp.size, cp.root, cp.note, now=now)

    def _fork(self, acc: _Acc, cp: SignedCheckpoint, verified_note: bytes | None, detail: str, now: float) -> None:
        self.store.add_fork(Fork(acc.did, cp.size, verified_note, cp.note, detail, now))
        acc.forks += 1
        acc.refused.append("fork")

    # -- advancing the verified prefix -------------------------------------------------------------
    def _advance(self, agent: PublicKey, acc: _Acc, now: float) -> None:
        state = self.store.agent_state(acc.did)
        for size, root, note in self.store.checkpoints(acc.did, min_size=state.size + 1):
            if size <= state.size:
                continue
            if self.store.pending_count(acc.did, state.size, size) < size - state.size:
                break  # records still missing: wait for them
            cands = self.store.pending(acc.did, state.size, size)
            path = self._find_path(state, cands, size, root)
            if path is None:
                continue  # no chain reaches this checkpoint (yet); a later one may decide
            chosen, frontier = path
            new_state = AgentState(
                acc.did, size, frontier.hashes, note, state.forked, chosen[-1].leaf if chosen else state.tip
            )
            losers = [c for seq, group in cands.items() for c in group if c is not chosen[seq - state.size]]
            self.store.commit_verified(acc.did, chosen, new_state, now=now)
            acc.verified += len(chosen)
            acc.pending = max(0, acc.pending - len(chosen))
            for loser in losers:
                self._refuse(
                    acc,
                    loser.seq,
                    "not-on-signed-chain",
                    f"record {loser.seq} is not the one the signed checkpoint of size {size} commits to",
                    loser.raw,
                    now,
                )
            self._check_passed(agent, state.size, size, note, acc, now)
            state = new_state

    def _find_path(
        self, state: AgentState, cands: Mapping[int, list[PendingRecord]], size: int, root: bytes
    ) -> tuple[list[PendingRecord], Frontier] | None:
        """Depth-first search for a hash chain of candidates from the tip to ``size`` matching ``root``."""
        tip = self._tip(state)
        start = state.size
        stack: list[tuple[int, bytes, Frontier, list[PendingRecord]]] = [(start, tip, frontier_of(state), [])]
        branches = 0
        while stack:
            seq, prev, frontier, chosen = stack.pop()
            while seq < size:
                options = [c for c in cands.get(seq, ()) if c.prev == prev]
                if not options:
                    break
                for alt in options[1:]:
                    if branches >= _MAX_BRANCHES:
                        break
                    branches += 1
                    f2 = frontier.copy()
                    f2.append(alt.leaf)
                    stack.append((seq + 1, alt.leaf, f2, chosen + [alt]))
                frontier.append(options[0].leaf)
                chosen.append(options[0])
                prev, seq = options[0].leaf, seq + 1
            if seq == size and frontier.root() == root:
                return chosen, frontier
        return None

    def _check_passed(self, agent: PublicKey, old: int, new: int, note: bytes, acc: _Acc, now: float) -> None:
        """Signed checkpoints strictly between old and new sizes must agree with the verified log."""
        inner = [(s, r, n) for s, r, n in self.store.checkpoints(acc.did, min_size=old + 1) if s < new]
        if not inner:
            return
        for s, r, n in inner:
            ours = self._root_at(acc.did, s)
            if ours is not None and ours != r:
                self.store.add_fork(
                    Fork(
                        acc.did,
                        s,
                        note,
                        n,
                        f"signed checkpoint of size {s} contradicts the verified log of size {new}",
                        now,
                    )
                )
                acc.forks += 1
                acc.refused.append("fork")

    # -- pruned agents: signed bases ---------------------------------------------------------------
    def _verified_base(self, agent: PublicKey, payload: bytes, acc: _Acc, now: float) -> LogBase | None:
        try:
            return verify_base(payload, agent)
        except LedgerVerificationError as exc:
            self._refuse(acc, None, "bad-base", exc.message, payload, now)
            return None

    def _rebase(self, agent: PublicKey, base: LogBase, acc: _Acc, now: float) -> bool:
        """Accept ``base`` if the verified prefix stops below it (the agent pruned the records between
        before they were synced, so they can never come): verification goes on from the base."""
        state = self.store.agent_state(acc.did)
        if base.size <= state.size or state.forked and self.store.forks(acc.did):
            return False  # already verified past it; or a forked agent, whose bases prove nothing more
        self.store.add_base(
            acc.did,
            base.size,
            base.prev,
            base.payload,
            AgentState(acc.did, base.size, base.frontier_hashes, base.checkpoint.note, state.forked, base.prev),
            now=now,
        )
        acc.based = base.size
        return True

    def _tip(self, state: AgentState) -> bytes:
        """The leaf hash of record ``state.size - 1`` (the ``prev`` the next record must carry)."""
        if not state.size:
            return ZERO_HASH
        if state.tip is not None:
            return state.tip
        leaf = self.store.verified_leaf(state.did, state.size - 1)
        if leaf is None:
            leaf = self.store.base_prev(state.did, state.size)
        return leaf if leaf is not None else ZERO_HASH

    def _root_at(self, did: str, size: int) -> bytes | None:
        """The root of the agent's verified tree of ``size`` leaves, or None where records below
        ``size`` were pruned by the agent and the stored ones cannot rebuild it."""
        start, frontier = 0, Frontier()
        for bsize, payload in self.store.bases(did):
            if bsize > size:
                break
            start, frontier = bsize, Frontier.from_hashes(bsize, msgpack.unpackb(payload)["frontier"])
        leaves = self.store.verified_leaves(did, start, size)
        if len(leaves) != size - start:
            return None
        if not start:
            return tree_root(leaves)
        frontier.extend(leaves)
        return frontier.root()
