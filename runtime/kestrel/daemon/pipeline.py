"""Every action's path: policy decision -> execution -> ``action.result`` in the ledger.

Decisions are asked for as soon as an action is proposed (in a small thread pool:
the policy engine appends ``policy.decision`` and waits for it to be durable, and
concurrent appends share one fsync), but actions are executed in the order they
were proposed. Fast actions (GPIO, serial) run inline on the loop; slow ones
(network, mail, files) run as their own tasks, at most ``action_workers`` at a
time. The queue is bounded: a flood of trigger proposals is dropped and counted,
never buffered without limit.

Write-ahead: an action runs only once its ``policy.decision`` is durable (in batched
mode the sequencer waits for the group commit that holds it, so decisions still share
fsyncs), and its ``action.result`` names that decision (``decision``: its seq). The one
exception is the reflex path, ``gpio.write`` in batched mode (:data:`WRITE_BEHIND`): the
pin is set at once and its result names the decision once that is durable. An
effect is registered with the :class:`~kestrel.daemon.effects.EffectTracker` before it
is decided and ends when its outcome is durable, so a crash leaves the daemon able to
say which allowed actions are in doubt (docs/state-dir.md, "In-doubt actions").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import KestrelError, TransportError
from ..policy.canonical import canonicalize
from ..policy.model import args_digest
from .actions import FAST_ACTIONS, Actions
from .effects import CURRENT_DECISION, Effect, EffectTracker
from .triggers import Proposal

if TYPE_CHECKING:
    from ..ledger.recorder import RecordLog

__all__ = ["Pipeline", "ActionDeniedError", "ActionFailedError", "QueuedAppends", "WRITE_BEHIND"]

# Batched mode runs these before their decision is on flash (a pin follows an edge in well under
# a millisecond; a durable write would triple that): a crash within one group commit can leave
# such a pin change unrecorded. Every other action waits (docs/device-config.md, audit.decisions).
WRITE_BEHIND = frozenset({"gpio.write"})

log = logging.getLogger("kestrel.daemon.actions")


class ActionDeniedError(KestrelError):
    """The policy refused the action; ``decision`` ({action, rule, reason}) goes on the wire with it."""

    code = "denied"
    exit_code = 5
    decision: dict[str, Any] | None = None


class ActionFailedError(KestrelError):
    """The policy allowed the action but it could not be carried out."""

    code = "failed"


class QueuedAppends:
    """The ledger as the daemon's policy engine sees it: the pipeline learns where each decision went.

    ``queued`` (``audit.decisions: batched``): ``append`` puts the record into the
    ledger's group commit and returns at once, so that the deciding thread is free
    while the commit's fsync is under way; the pipeline waits for that commit before
    the action runs. The record is ordered before the action's outcome (the ledger is
    FIFO); a failed commit is kept in ``error`` (the daemon turns unhealthy and stops
    feeding the watchdog). Not queued (``strict``): ``append`` is the ledger's durable
    append. Either way :meth:`take_last` hands the pipeline the append's future.
    """

    def __init__(self, ledger: RecordLog, *, queued: bool = True) -> None:
        self._ledger = ledger
        self._local = threading.local()
        self.error: str | None = None
        self.queued = queued

    def append(self, kind: str, body: dict[str, Any]) -> Any:
        if not self.queued:
            receipt = self._ledger.append(kind, body)
            done: concurrent.futures.Future = concurrent.futures.Future()
            done.set_result(receipt)
            self._local.last = done
            return receipt
        fut = self._ledger.submit(kind, body)
        fut.add_done_callback(self._done)
        self._local.last = fut
        return fut

    def take_last(self) -> concurrent.futures.Future | None:
        """The pending append this thread made last (the decision just recorded), once."""
        fut, self._local.last = getattr(self._local, "last", None), None
        return fut

    def _done(self, fut: concurrent.futures.Future) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.error = f"a policy decision could not be written to the ledger: {fut.exception()}"
            log.error("%s", self.error)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


@dataclass
class _Item:
    proposal: Proposal
    decision: asyncio.Future[Any]
    reply: asyncio.Future[dict[str, Any]] | None
    t0: float
    effect: Effect | None = None
    decision_seq: int | None = None  # known up front for call_decided


class Pipeline:
    def __init__(
        self,
        *,
        policy: Any,
        ledger: RecordLog,
        actions: Actions,
        queue_size: int,
        workers: int,
        on_recorded: Callable[[], None] | None = None,
        decision_log: QueuedAppends | None = None,
        effects: EffectTracker | None = None,
    ) -> None:
        self.policy = policy
        self.decision_log = decision_log
        self.inline_decisions = decision_log is not None and decision_log.queued
        self.ledger = ledger
        self.effects = effects or EffectTracker(lambda: ledger.size)
        self.actions = actions
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(queue_size)
        self._slow = asyncio.Semaphore(workers)
        self._decider = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(4, workers * 2), thread_name_prefix="kestrel-policy"
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        # async (proposal, decision) -> decision: asks the group when the policy answered
        # actions[i].quorum (kestrel.daemon.quorum); later actions wait, so the order is kept
        self.quorum: Any = None
        self._on_recorded = on_recorded or (lambda: None)
        self.stats = {
            "proposed": 0,
            "allowed": 0,
            "denied": 0,
            "succeeded": 0,
            "failed": 0,
            "dropped": 0,
            "caught_up": 0,
            "record_errors": 0,
        }
        self._shed: dict[str, Proposal] = {}
        self.ledger_error: str | None = None

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="action-pipeline")

    @property
    def alive(self) -> bool:
        return self._runner is not None and not self._runner.done()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def _decides_inline(self) -> bool:
        """Decide on the loop when that cannot block: decisions are only queued (batched audit) and the
        active policy has no rate limits (whose state the engine saves with an fsync)."""
        active = getattr(self.policy, "policy", None)
        return self.inline_decisions and active is not None and not getattr(active, "rate_windows", True)

    def _item(self, p: Proposal, reply: bool) -> _Item:
        loop = asyncio.get_running_loop()
        self.stats["proposed"] += 1
        effect = self.effects.begin()  # before the decision is appended: the journal's watermark stays below it
        if self._decides_inline():
            fut: asyncio.Future[Any] = loop.create_future()
            try:
                fut.set_result(self._decide(p.action, p.args))
            except Exception as exc:
                fut.set_exception(exc)
        else:
            fut = loop.run_in_executor(self._decider, self._decide, p.action, p.args)
        return _Item(p, fut, loop.create_future() if reply else None, time.perf_counter(), effect)

    def _decide(self, action: str, args: dict[str, Any]) -> tuple[Any, Any]:
        """(decision, pending append of its record or None) - on whichever thread decides."""
        decision = self.policy.decide(action, args)
        return decision, self.decision_log.take_last() if self.decision_log is not None else None

    def submit(self, p: Proposal) -> bool:
        """Queue a proposal without waiting (triggers, schedules); False if the queue is full.

        A shed proposal is not forgotten entirely: the newest one of each source (trigger or
        schedule) is kept aside and queued as soon as there is room, unless a newer proposal
        of that source got in first. So a flood is thinned out, but the last word of every
        trigger is acted on (a lamp that follows a button ends in the button's last state).
        """
        if self._queue.full():
            self.stats["dropped"] += 1
            if self.stats["dropped"] in (1, 10, 100, 1000) or self.stats["dropped"] % 10000 == 0:
                log.warning(
                    "action queue full: dropped %d proposals so far (latest %s from %s)",
                    self.stats["dropped"],
                    p.action,
                    p.source,
                )
            self._shed.pop(p.source, None)
            self._shed[p.source] = p  # bounded: one per trigger/schedule
            return False
        self._shed.pop(p.source, None)
        self._queue.put_nowait(self._item(p, reply=False))
        return True

    def _catch_up(self) -> None:
        while self._shed and not self._queue.full():
            source = next(iter(self._shed))
            self.stats["caught_up"] += 1
            self._queue.put_nowait(self._item(self._shed.pop(source), reply=False))

    async def call(self, p: Proposal) -> dict[str, Any]:
        """Queue a proposal (waiting for room) and return its result; raises ActionDeniedError etc."""
        item = self._item(p, reply=True)
        await self._queue.put(item)
        assert item.reply is not None
        return await item.reply

    async def call_decided(
        self, p: Proposal, decision: Any, *, effect: Effect | None = None, decision_seq: int | None = None
    ) -> dict[str, Any]:
        """Queue a proposal its caller has already had decided by this pipeline's policy engine
        (the planner, which must see the decision), then execute and record it like :meth:`call`.

        ``effect``: registered by the caller with :attr:`effects` before it asked for the decision;
        ``decision_seq``: where the decision was recorded (both for the in-doubt accounting)."""
        loop = asyncio.get_running_loop()
        self.stats["proposed"] += 1
        decided: asyncio.Future[Any] = loop.create_future()
        decided.set_result((decision, None))
        item = _Item(p, decided, loop.create_future(), time.perf_counter(), effect, decision_seq)
        await self._queue.put(item)
        assert item.reply is not None
        return await item.reply

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Finish what is queued (bounded by ``timeout``), then stop."""
        if self._runner is not None:
            await self._queue.put(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._runner), timeout)
            except TimeoutError:
                log.warning("stopping with %d actions still queued", self._queue.qsize())
                self._runner.cancel()
            self._runner = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        self._decider.shutdown(wait=True, cancel_futures=True)

    # -- the sequencer ----------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if self._shed:
                self._catch_up()
            try:
                decision, pending = await item.decision
            except Exception as exc:  # the policy could not decide (ledger down?): fail closed
                self.effects.end(item.effect)
                self.ledger_error = f"policy decision failed: {exc}"
                log.error("%s; %s from %s not executed", self.ledger_error, item.proposal.action, item.proposal.source)
                self._resolve(
                    item,
                    TransportError(
                        f"the policy could not decide: {exc}", hint="see the daemon's log; the ledger may be unwritable"
                    ),
                )
                continue
            if not decision.allowed and self.quorum is not None:
                decision = await self.quorum(item.proposal, decision)
            if not decision.allowed:
                self.effects.end(item.effect)
                self.stats["denied"] += 1
                if self.stats["denied"] <= 100 or self.stats["denied"] % 1000 == 0:  # all are in the ledger
                    log.info(
                        "denied %s from %s: %s (%s) [%d denials so far]",
                        item.proposal.action,
                        item.proposal.source,
                        decision.reason,
                        decision.rule,
                        self.stats["denied"],
                    )
                denied = ActionDeniedError(
                    f"policy denied {item.proposal.action}: {decision.reason} (rule {decision.rule})",
                    hint="the decision is in the ledger: kestrel audit log",
                )
                denied.decision = {"action": item.proposal.action, "rule": decision.rule, "reason": decision.reason}
                if item.reply is not None and pending is not None:
                    self._spawn(self._resolve_when_durable(item, pending, denied))
                else:
                    self._resolve(item, denied)
                continue
            seq, late = item.decision_seq, None
            if pending is not None and not pending.done() and item.proposal.action in WRITE_BEHIND:
                late = pending  # the reflex path: act now, name the decision when it is durable
            elif pending is not None:
                if not pending.done():  # write-ahead: the decision is on flash before the action runs
                    try:
                        await asyncio.shield(asyncio.wrap_future(pending))
                    except Exception:
                        pass
                failure = pending.exception() if not pending.cancelled() else asyncio.CancelledError()
                if failure is not None:
                    self.effects.end(item.effect)
                    self.ledger_error = f"a policy decision could not be written to the ledger: {failure}"
                    log.error(
                        "%s; %s from %s not executed", self.ledger_error, item.proposal.action, item.proposal.source
                    )
                    self._resolve(
                        item,
                        TransportError(
                            f"the decision could not be recorded, so the action was not executed: {failure}",
                            hint="see the daemon's log",
                        ),
                    )
                    continue
                seq = getattr(pending.result(), "seq", None)
            if seq is not None and item.effect is not None:
                self.effects.bind(item.effect, seq)
            self.stats["allowed"] += 1
            if item.proposal.action in FAST_ACTIONS:
                await self._execute(item, decision, seq, late=late)
            else:
                await self._slow.acquire()
                self._spawn(self._execute(item, decision, seq, release=True))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(
        self,
        item: _Item,
        decision: Any,
        seq: int | None,
        *,
        release: bool = False,
        late: concurrent.futures.Future | None = None,
    ) -> None:
        p = item.proposal
        body: dict[str, Any] = {
            "action": p.action,
            "source": p.source,
            "args_digest": getattr(decision, "args_digest", None) or args_digest(p.args),
        }
        if seq is not None:
            body["decision"] = seq
        result: Any
        current = CURRENT_DECISION.set(seq)
        try:
            # exactly what the policy evaluated: the canonical arguments the decision carries
            args = decision.args if getattr(decision, "args", None) is not None else canonicalize(p.action, p.args)
            outcome = await self.actions.run(p.action, dict(args))
        except KestrelError as exc:
            self.stats["failed"] += 1
            if self.stats["failed"] <= 100 or self.stats["failed"] % 1000 == 0:
                log.warning("%s from %s failed: %s", p.action, p.source, exc.message)
            body.update(ok=False, error={"type": type(exc).__name__, "message": exc.message[:500]})
            result = ActionFailedError(f"{p.action} failed: {exc.message}", hint=exc.hint)
        except Exception as exc:
            self.stats["failed"] += 1
            log.exception("%s from %s failed unexpectedly", p.action, p.source)
            body.update(ok=False, error={"type": type(exc).__name__, "message": str(exc)[:500]})
            result = ActionFailedError(f"{p.action} failed: {type(exc).__name__}: {exc}")
        else:
            self.stats["succeeded"] += 1
            body.update(ok=True, result=outcome.record)
            result = outcome.reply
        finally:
            CURRENT_DECISION.reset(current)
            if release:
                self._slow.release()
        body["ms"] = round((time.perf_counter() - item.t0) * 1000, 3)
        if item.reply is None:
            self._record_detached(body, item.effect, late)
        else:
            self._spawn(self._record(body, item, result, late=late))

    def _name_decision(self, body: dict[str, Any], effect: Effect | None, late: concurrent.futures.Future) -> None:
        """A write-behind action's decision is durable (or failed): its outcome names it."""
        seq = None if late.cancelled() or late.exception() is not None else getattr(late.result(), "seq", None)
        if seq is not None:
            body["decision"] = seq
            if effect is not None:
                self.effects.bind(effect, seq)

    def _record_detached(
        self, body: dict[str, Any], effect: Effect | None, late: concurrent.futures.Future | None = None
    ) -> None:
        """Queue an outcome nobody waits for: no task, no loop round trip; failures are noted by a callback."""
        if late is not None:  # after its decision's commit (the ledger's thread runs this callback)

            def then(fut: concurrent.futures.Future) -> None:
                self._name_decision(body, effect, fut)
                self._record_detached(body, effect)

            late.add_done_callback(then)
            return
        submit = getattr(self.ledger, "submit", None)
        if submit is None:
            self._spawn(self._record(body, None, None, effect))
            return
        try:
            submit("action.result", body).add_done_callback(lambda fut: self._recorded(fut, effect))
        except Exception as exc:
            self._record_failed(body, exc)

    def _recorded(self, fut: concurrent.futures.Future, effect: Effect | None) -> None:  # on the ledger's thread
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:  # the effect stays open: the next start reports it in doubt
            self.stats["record_errors"] += 1
            self.ledger_error = f"cannot append to the ledger: {exc}"
            log.error("could not record an action.result: %s", exc)
        else:
            self.effects.end(effect)

    def _record_failed(self, body: dict[str, Any], exc: BaseException) -> None:
        self.stats["record_errors"] += 1
        self.ledger_error = f"cannot append to the ledger: {exc}"
        log.error("could not record action.result for %s: %s", body.get("action"), exc)

    async def _record(
        self,
        body: dict[str, Any],
        item: _Item | None,
        result: Any,
        effect: Effect | None = None,
        late: concurrent.futures.Future | None = None,
    ) -> None:
        """Append the outcome, then answer the caller (so what it was told is in the ledger)."""
        if late is not None:
            try:
                await asyncio.shield(asyncio.wrap_future(late))
            except Exception:
                pass
            self._name_decision(body, item.effect if item is not None else effect, late)
        try:
            receipt = await asyncio.shield(self.ledger.append_async("action.result", body))
            self.effects.end(item.effect if item is not None else effect)
            if isinstance(result, dict):
                result = {**result, "ledger_seq": getattr(receipt, "seq", None)}
        except Exception as exc:
            self._record_failed(body, exc)
        self._on_recorded()
        if item is not None:
            self._resolve(item, result)

    async def _resolve_when_durable(self, item: _Item, pending: concurrent.futures.Future, result: Any) -> None:
        try:
            await asyncio.shield(asyncio.wrap_future(pending))
        except Exception:
            pass  # noted by QueuedAppends; the caller still learns the decision
        self._resolve(item, result)

    @staticmethod
    def _resolve(item: _Item, result: Any) -> None:
        if item.reply is None or item.reply.done():
            return
        if isinstance(result, BaseException):
            item.reply.set_exception(result)
        else:
            item.reply.set_result(result)
