"""The control method ``ask``: the planner hosted by the daemon (docs/planner.md, "Through the daemon").

The planner runs in its own one-thread executor (model time never blocks the loop).
Each call it proposes is decided by the daemon's policy engine (``policy.decision``)
on that thread, so the planner sees the decision; an allowed call is then handed to
the action pipeline already decided (:meth:`Pipeline.call_decided`), which executes it
in order with every other action and records ``action.result``. ``planner.step``
records go to the daemon's ledger. Each step is streamed to the caller as it happens.
One ``ask`` runs at a time; a second is refused (``busy``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import KestrelError, TransportError, UsageError
from .triggers import Proposal

if TYPE_CHECKING:
    from ..ledger.recorder import Recorder

__all__ = ["AskHost", "AskBusyError"]

log = logging.getLogger("kestrel.daemon.ask")

Emit = Callable[[dict[str, Any]], Awaitable[None]]


class AskBusyError(KestrelError):
    """Another ``ask`` is running on this daemon."""

    code = "failed"
    exit_code = 75


class _Dispatch:
    """The planner's ``authorize`` and tool ``executor``, called on the planner's thread."""

    def __init__(
        self, *, loop: asyncio.AbstractEventLoop, policy: Any, pipeline: Any, source: str, action_timeout: float
    ) -> None:
        self._loop, self._policy, self._pipeline = loop, policy, pipeline
        self._source, self._timeout = source, action_timeout
        self._decided: tuple[str, Any, Any, Any] | None = None

    def authorize(self, action: str, args: dict[str, Any]) -> Any:
        self.release()
        effects = getattr(self._pipeline, "effects", None)
        effect = effects.begin() if effects is not None else None  # before the decision: the in-doubt watermark
        decision = self._policy.decide(action, args)  # records policy.decision
        log_ = getattr(self._pipeline, "decision_log", None)
        record = log_.take_last() if log_ is not None else None
        self._decided = (action, decision, effect, record)
        if not decision.allowed:
            self.release()
        return decision

    def release(self) -> None:
        """An allowed decision that will not be executed (or a denied one) has no effect to wait for."""
        decided, self._decided = self._decided, None
        if decided is not None and decided[2] is not None:
            self._pipeline.effects.end(decided[2])

    def execute(self, action: str, args: dict[str, Any]) -> Any:
        decided, self._decided = self._decided, None
        if decided is None or decided[0] != action or not decided[1].allowed:
            if decided is not None:
                self._decided = decided
                self.release()
            raise UsageError(f"{action} was not allowed by the policy")  # the Actor never gets here
        _, decision, effect, record = decided
        seq = None
        if record is not None:  # write-ahead: wait (on the planner's thread) until the decision is on flash
            try:
                seq = getattr(record.result(self._timeout), "seq", None)
            except Exception as exc:
                self._pipeline.effects.end(effect)
                raise TransportError(
                    f"the decision could not be recorded, so {action} was not executed: {exc}"
                ) from None
        fut = asyncio.run_coroutine_threadsafe(
            self._pipeline.call_decided(
                Proposal(action, args, self._source), decision, effect=effect, decision_seq=seq
            ),
            self._loop,
        )
        try:
            return fut.result(self._timeout)
        except concurrent.futures.TimeoutError:
            raise TransportError(f"{action} did not finish within {self._timeout:.0f}s") from None


class _StepLedger:
    """The daemon's ledger as the planner's recorder: a durable append, then wake ``follow``."""

    def __init__(self, ledger: Recorder, loop: asyncio.AbstractEventLoop, appended: Callable[[], None]) -> None:
        self._ledger, self._loop, self._appended = ledger, loop, appended

    def append(self, kind: str, body: dict[str, Any]) -> Any:
        receipt = self._ledger.append(kind, body)
        self._loop.call_soon_threadsafe(self._appended)
        return receipt


class AskHost:
    def __init__(
        self,
        *,
        state_dir: Any,
        ledger: Recorder,
        policy: Any,
        pipeline: Any,
        appended: Callable[[], None],
        action_timeout: float = 120.0,
    ) -> None:
        self.state_dir = state_dir
        self.ledger, self.policy, self.pipeline = ledger, policy, pipeline
        self._appended = appended
        self._action_timeout = action_timeout
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._busy = False
        self.model: Any = None  # a LanguageModel to plan with instead of the registered one (tests, demos)
        self.runs = 0

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kestrel-ask")
        return self._pool

    async def run(self, params: dict[str, Any], *, source: str, emit: Emit) -> dict[str, Any]:
        """Plan ``params["goal"]``; ``emit`` each step; return the outcome (``outcome_event``)."""
        from ..agent.ask import AskOptions, outcome_event, step_event
        from ..agent.planner import run_async

        goal = params.get("goal")
        if not isinstance(goal, str) or not goal.strip() or len(goal) > 4096:
            raise UsageError('ask needs params {"goal": TEXT (1..4096 characters), "options": {...}}')
        options = AskOptions.from_params(params.get("options", {}))
        if self._busy:
            raise AskBusyError("another ask is running on this daemon", hint="wait for it to finish, then retry")
        self._busy = True
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        stack = contextlib.ExitStack()
        task: asyncio.Task[Any] | None = None
        dispatch: _Dispatch | None = None
        try:
            dispatch = _Dispatch(
                loop=loop,
                policy=self.policy,
                pipeline=self.pipeline,
                source=source,
                action_timeout=self._action_timeout,
            )
            planner = await loop.run_in_executor(self._executor(), self._build, options, dispatch, loop, stack)
            self.runs += 1

            def on_step(step: Any) -> None:  # on the planner's thread
                loop.call_soon_threadsafe(queue.put_nowait, step_event(step))

            task = loop.create_task(run_async(planner, goal, on_step=on_step, executor=self._executor()))
            while not task.done() or not queue.empty():
                if queue.empty():
                    getter = loop.create_task(queue.get())
                    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    await emit(getter.result())
                else:
                    await emit(queue.get_nowait())
            return outcome_event(task.result(), executed=True)
        finally:
            if dispatch is not None:
                dispatch.release()
            if task is not None and not task.done():
                task.cancel()  # the caller went away: the run stops at its next step
                await asyncio.wait([task])
            await loop.run_in_executor(self._executor(), stack.close)
            self._busy = False

    def _build(
        self, options: Any, dispatch: _Dispatch, loop: asyncio.AbstractEventLoop, stack: contextlib.ExitStack
    ) -> Any:
        from ..agent.ask import build_planner

        return build_planner(
            self.state_dir,
            options,
            authorize=dispatch.authorize,
            ledger=_StepLedger(self.ledger, loop, self._appended),
            executor=dispatch.execute,
            stack=stack,
            model=self.model,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
