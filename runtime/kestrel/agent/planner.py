"""Plan-Act-Verify: a model (or rules) proposes tool calls, the policy decides, the runtime acts.

Both planners go through one :class:`Actor`: validate (the registry's schemas),
ask the policy (``authorize(action, args) -> Decision``, normally
``PolicyEngine.decide``), execute only what was allowed, and append one
``planner.step`` record per step to the ledger (format in docs/planner.md).

* :class:`LLMPlanner` loops: render the prompt (goal, tools, memory that fits,
  history), generate one reply, parse it, act, feed the observation back. Step,
  token, time, repair and refusal budgets end the loop. A reply of
  ``{"handoff": "rules"}`` hands the goal to the rule planner.
* :class:`RulePlanner` (:mod:`kestrel.agent.rules`) maps goals to calls with
  deterministic rules, for boards too small for a model.

Nothing the model writes can widen what is allowed: the policy decides each call
on its own arguments, and the model's text is never parsed for anything but a proposal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .context import ContextSource
from .llm.base import EndpointError, EndpointRefusedError, GenerationOptions, LanguageModel, ModelLoadError
from .prompt import STOP, Turn, fit, observed_denial, observed_invalid, observed_result
from .tools import Final, Handoff, ProposalError, ToolCall, ToolRegistry, ToolResult, canonical_json, digest_of

if TYPE_CHECKING:
    from ..ledger.recorder import Recorder

__all__ = ["Budgets", "Step", "Outcome", "Actor", "LLMPlanner", "Authorize", "run_async"]

Authorize = Callable[[str, dict[str, Any]], Any]  # -> Decision (allowed, rule, reason, policy_digest)


@dataclass(frozen=True)
class Budgets:
    """Limits on one run. The run ends as soon as any is spent."""

    max_steps: int = 6  # model replies (valid or not) or rule firings
    max_tokens: int = 1024  # generated tokens over the whole run
    max_step_tokens: int = 128  # generated tokens per reply
    time_s: float = 60.0  # wall time of the whole run
    max_repairs: int = 2  # consecutive invalid replies answered with a repair request
    max_refusals: int = 2  # the run ends at this many policy refusals
    memory_k: int = 8  # memory items asked for (as many as fit are used)

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_tokens", "max_step_tokens", "max_refusals", "memory_k"):
            if getattr(self, name) < 1:
                raise UsageError(f"budget {name} must be >= 1")
        if self.max_repairs < 0 or self.time_s <= 0:
            raise UsageError("budget max_repairs must be >= 0 and time_s > 0")


@dataclass(frozen=True)
class Step:
    """One step of a run, as printed by `kestrel ask` and recorded in the ledger."""

    index: int
    planner: str  # "llm" | "rules"
    said: str  # the model's reply, or the rule id
    call: ToolCall | None = None
    error: str | None = None  # "code: message" for an invalid reply
    decision: Any = None  # the policy's Decision, when a call was proposed
    result: ToolResult | None = None  # only when the call was allowed
    final: str | None = None
    seq: int | None = None  # ledger sequence number of the planner.step record

    def describe(self) -> str:
        head = f"step {self.index} [{self.planner}]"
        if self.error is not None:
            return f"{head} invalid reply ({self.error})"
        if self.final is not None:
            return f"{head} final: {self.final}"
        if self.call is None:
            return f"{head} {self.said}"
        d = self.decision
        verdict = f"{'ALLOW' if d.allowed else 'DENY'} by {d.rule}: {d.reason}"
        out = f"{head} {self.call.to_json()} -> {verdict}"
        if self.result is not None:
            out += f"; {'ok' if self.result.ok else 'failed'}: {self.result.summary(120)}"
        return out


@dataclass(frozen=True)
class Outcome:
    goal: str
    status: str  # done refused invalid steps tokens time context cancelled model-error no-rule no-rules
    steps: tuple[Step, ...]
    final: str | None = None
    tokens: int = 0
    elapsed_s: float = 0.0
    handed_off: bool = False
    error: str | None = None  # why the model could not be used (status "model-error")


class Actor:
    """Policy-gated execution and ledger recording, shared by every planner."""

    def __init__(self, tools: ToolRegistry, *, authorize: Authorize, ledger: Recorder) -> None:
        self.tools = tools
        self._authorize = authorize
        self._ledger = ledger

    def act(self, step: Step) -> Step:
        """Decide ``step.call`` with the policy; execute it only if allowed."""
        assert step.call is not None
        decision = self._authorize(step.call.action, dict(step.call.args))
        call = step.call
        decided = getattr(decision, "args", None)  # the canonical arguments the policy evaluated
        if decision.allowed and decided is not None:
            call = ToolCall(call.action, dict(decided))
        result = self.tools.execute(call) if decision.allowed else None
        return replace(step, decision=decision, result=result)

    def record(self, step: Step, *, goal: str, model: str, prompt: str | None, tokens: int) -> Step:
        call, decision, result = step.call, step.decision, step.result
        body: dict[str, Any] = {
            "planner": step.planner,
            "step": step.index,
            "goal": digest_of(goal),
            "model": model,
            "prompt": digest_of(prompt) if prompt is not None else None,
            "output": digest_of(step.said),
            "call": {"action": call.action, "args": digest_of(canonical_json(dict(call.args)))} if call else None,
            "error": step.error,
            "decision": None
            if decision is None
            else {
                "allowed": bool(decision.allowed),
                "rule": decision.rule,
                "policy": decision.policy_digest,
            },
            "result": result.digest if result is not None else None,
            "ok": result.ok if result is not None else None,
            "final": digest_of(step.final) if step.final is not None else None,
            "tokens": tokens,
        }
        receipt = self._ledger.append("planner.step", body)
        return replace(step, seq=getattr(receipt, "seq", None))


class LLMPlanner:
    """The Plan-Act-Verify loop around a :class:`LanguageModel`."""

    def __init__(
        self,
        model: LanguageModel,
        tools: ToolRegistry,
        *,
        authorize: Authorize,
        ledger: Recorder,
        context: ContextSource | None = None,
        rules: Any = None,  # a RulePlanner to hand goals to
        budgets: Budgets = Budgets(),
        temperature: float = 0.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.actor = Actor(tools, authorize=authorize, ledger=ledger)
        self.context = context
        self.rules = rules
        self.budgets = budgets
        self._temperature = temperature
        self._seed = seed
        self._clock = clock

    def run(
        self, goal: str, *, cancel: threading.Event | None = None, on_step: Callable[[Step], None] | None = None
    ) -> Outcome:
        if not goal.strip():
            raise UsageError("the goal is empty")
        b, clock = self.budgets, self._clock
        start = clock()
        memory = list(self.context.search(goal, b.memory_k)) if self.context is not None else []
        tools_text = self.actor.tools.describe()
        history: list[Turn] = []
        steps: list[Step] = []
        tokens = repairs = refusals = 0
        status, final = "steps", None

        def done(step: Step, prompt: str | None, used: int) -> None:
            step = self.actor.record(step, goal=goal, model=self.model.digest, prompt=prompt, tokens=used)
            steps.append(step)
            if on_step is not None:
                on_step(step)

        for index in range(1, b.max_steps + 1):
            left_s = b.time_s - (clock() - start)
            if left_s <= 0:
                status = "time"
                break
            step_tokens = min(b.max_step_tokens, b.max_tokens - tokens)
            if step_tokens < 1:
                status = "tokens"
                break
            try:
                prompt, _, _ = fit(
                    tools=tools_text,
                    memory=memory,
                    goal=goal,
                    history=history,
                    budget=self.model.context_length - step_tokens,
                    count=self.model.count_tokens,
                )
            except ValueError:
                status = "context"
                break
            options = GenerationOptions(
                max_tokens=step_tokens,
                time_budget_s=left_s,
                stop=(STOP,),
                temperature=self._temperature,
                seed=None if self._seed is None else self._seed + index,
            )
            try:
                completion = self.model.generate(prompt, options=options, cancel=cancel).result
            except (EndpointError, EndpointRefusedError, ModelLoadError) as exc:
                return Outcome(goal, "model-error", tuple(steps), None, tokens, clock() - start, error=str(exc))
            tokens += completion.completion_tokens
            said = completion.text.strip()
            if completion.stop_reason == "cancelled":
                status = "cancelled"
                break
            step = Step(index, "llm", said)
            try:
                proposal = self.actor.tools.parse(said)
            except ProposalError as exc:
                done(replace(step, error=f"{exc.code}: {exc.message}"), prompt, completion.completion_tokens)
                history.append(Turn(said or "(empty reply)", observed_invalid(exc.code, exc.message)))
                repairs += 1
                if completion.stop_reason == "time":
                    status = "time"
                    break
                if repairs > b.max_repairs:
                    status = "invalid"
                    break
                continue
            repairs = 0
            if isinstance(proposal, Final):
                done(replace(step, final=proposal.text), prompt, completion.completion_tokens)
                status, final = "done", proposal.text
                break
            if isinstance(proposal, Handoff):
                done(step, prompt, completion.completion_tokens)
                return self._hand_off(goal, steps, tokens, start, cancel, on_step)
            step = self.actor.act(replace(step, call=proposal))
            done(step, prompt, completion.completion_tokens)
            d = step.decision
            if not d.allowed:
                refusals += 1
                history.append(Turn(said, observed_denial(d.rule, d.reason)))
                if refusals >= b.max_refusals:
                    status = "refused"
                    break
            else:
                assert step.result is not None
                history.append(Turn(said, observed_result(d.rule, step.result.ok, step.result.summary())))
        return Outcome(goal, status, tuple(steps), final, tokens, clock() - start)

    def _hand_off(
        self,
        goal: str,
        steps: list[Step],
        tokens: int,
        start: float,
        cancel: threading.Event | None,
        on_step: Callable[[Step], None] | None,
    ) -> Outcome:
        if self.rules is None:
            return Outcome(goal, "no-rules", tuple(steps), None, tokens, self._clock() - start, True)
        sub = self.rules.run(goal, cancel=cancel, first_index=len(steps) + 1, on_step=on_step)
        return Outcome(goal, sub.status, tuple(steps) + sub.steps, sub.final, tokens, self._clock() - start, True)


async def run_async(
    planner: Any, goal: str, *, on_step: Callable[[Step], None] | None = None, executor: Any = None
) -> Outcome:
    """Run either planner in an executor thread; cancelling the awaiting task cancels the run.

    ``on_step`` is called in the executor thread (use ``loop.call_soon_threadsafe`` to reach the loop).
    ``executor``: a ``concurrent.futures.Executor`` (default: the loop's default executor).
    """
    import asyncio
    import functools

    cancel = threading.Event()
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(executor, functools.partial(planner.run, goal, cancel=cancel, on_step=on_step))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        await asyncio.wait([future])  # the run ends at its next step boundary
        raise
