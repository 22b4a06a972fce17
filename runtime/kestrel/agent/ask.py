"""One ``ask`` run, as both hosts build it: the daemon (which executes allowed calls) and
``kestrel ask`` without a daemon (which only decides and records).

:class:`AskOptions` is what a caller chooses (rules, model, tools, budgets, memory);
its ``to_params`` / ``from_params`` are the ``ask`` control method's ``options``
(docs/control-protocol.md). :func:`build_planner` turns options plus the host's
``authorize``, ``ledger`` and action ``executor`` into an :class:`LLMPlanner` or a
:class:`RulePlanner`. :func:`step_event` and :func:`outcome_event` are the JSON the
daemon streams back, and what the CLI prints from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, UsageError
from .planner import Authorize, Budgets, Outcome, Step

if TYPE_CHECKING:
    from ..ledger.recorder import Recorder

__all__ = ["AskOptions", "tool_specs", "build_planner", "step_event", "outcome_event", "MAX_RULES_TEXT"]

MAX_RULES_TEXT = 128 * 1024  # rules sent over the control socket (one JSON line)
_BUDGET_CAPS = {"max_steps": 100, "max_tokens": 1 << 16, "time_s": 3600.0}


@dataclass(frozen=True)
class AskOptions:
    """How to plan one goal. ``rules_text`` None: ``STATE/agent/rules.yaml`` if it exists."""

    rules_text: str | None = None
    rules_source: str = "<rules>"
    rules_only: bool = False
    endpoint: str | None = None  # OpenAI-compatible endpoint; None: the registered local LLM, if any
    llm: str = "default"  # model name sent to the endpoint
    api: str = "completions"
    tools: tuple[str, ...] = ()  # built-in actions offered (empty: all)
    budgets: Budgets = field(default_factory=Budgets)
    threads: int | None = None  # onnxruntime intra-op threads of the local LLM
    memory: bool = True  # retrieve context from STATE/memory when it exists

    def to_params(self) -> dict[str, Any]:
        b = self.budgets
        return {
            "rules": self.rules_text,
            "rules_source": self.rules_source,
            "rules_only": self.rules_only,
            "endpoint": self.endpoint,
            "llm": self.llm,
            "api": self.api,
            "tools": list(self.tools),
            "budgets": {"max_steps": b.max_steps, "max_tokens": b.max_tokens, "time_s": b.time_s},
            "threads": self.threads,
            "memory": self.memory,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AskOptions:
        """Validate options that came over the wire; UsageError names the bad one."""
        known = {
            "rules",
            "rules_source",
            "rules_only",
            "endpoint",
            "llm",
            "api",
            "tools",
            "budgets",
            "threads",
            "memory",
        }
        if not isinstance(params, Mapping) or set(params) - known:
            raise UsageError(
                f"ask options: unknown key(s) {sorted(set(params) - known)}"
                if isinstance(params, Mapping)
                else "ask options must be an object",
                hint=f"known: {', '.join(sorted(known))}",
            )

        def get(key: str, kind: Any, default: Any) -> Any:
            value = params.get(key, default)
            if value is not default and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
                raise UsageError(f"ask option {key!r} has the wrong type ({type(value).__name__})")
            return value

        rules = get("rules", str, None)
        if rules is not None and len(rules.encode()) > MAX_RULES_TEXT:
            raise UsageError(f"ask option 'rules' is longer than {MAX_RULES_TEXT} bytes")
        tools = get("tools", list, [])
        if not all(isinstance(t, str) for t in tools):
            raise UsageError("ask option 'tools' must be a list of action names")
        raw = get("budgets", dict, {})
        budgets: dict[str, Any] = {}
        for key, cap in _BUDGET_CAPS.items():
            if key in raw:
                v = raw[key]
                if (
                    isinstance(v, bool)
                    or not isinstance(v, (int, float))
                    or (key != "time_s" and not isinstance(v, int))
                ):
                    raise UsageError(f"budget {key} must be a number")
                if v > cap:
                    raise UsageError(f"budget {key} must be <= {cap}")
                budgets[key] = float(v) if key == "time_s" else v
        if set(raw) - set(_BUDGET_CAPS):
            raise UsageError(
                f"unknown budget(s) {sorted(set(raw) - set(_BUDGET_CAPS))}",
                hint="budgets: max_steps, max_tokens, time_s",
            )
        threads = get("threads", int, None)
        if threads is not None and not 1 <= threads <= 64:
            raise UsageError("ask option 'threads' must be 1..64")
        api = get("api", str, "completions")
        if api not in ("completions", "chat"):
            raise UsageError("ask option 'api' must be 'completions' or 'chat'")
        return cls(
            rules_text=rules,
            rules_source=get("rules_source", str, "<rules>")[:200],
            rules_only=get("rules_only", bool, False),
            endpoint=get("endpoint", str, None),
            llm=get("llm", str, "default"),
            api=api,
            tools=tuple(tools),
            budgets=Budgets(**budgets),
            threads=threads,
            memory=get("memory", bool, True),
        )


def tool_specs(names: tuple[str, ...] | list[str]) -> Any:
    """The built-in action schemas called ``names`` (all when empty); UsageError on unknown names."""
    from .actions import BUILTIN_TOOLS, builtin

    if not names:
        return BUILTIN_TOOLS
    unknown = sorted(set(names) - {t.name for t in BUILTIN_TOOLS})
    if unknown:
        raise UsageError(
            f"--tools: unknown action(s) {', '.join(unknown)}",
            hint="choose from " + ", ".join(t.name for t in BUILTIN_TOOLS),
        )
    return builtin(*names)


def _rules(state: Path, options: AskOptions, tools: Any, authorize: Authorize, ledger: Recorder) -> Any:
    from .._internal.fsutil import read_bytes
    from .rules import RulePlanner, parse_rules

    text, source = options.rules_text, options.rules_source
    if text is None:
        path = state / "agent" / "rules.yaml"
        if not path.exists():
            if options.rules_only:
                raise UsageError("--rules-only needs rules", hint=f"write {path} or pass --rules FILE")
            return None
        try:
            text, source = read_bytes(path, what="rules file", max_size=1 << 20).decode("utf-8"), str(path)
        except UnicodeDecodeError:
            raise ConfigError("not UTF-8 text", path=str(path)) from None
    return RulePlanner(
        parse_rules(text, source=source), tools, authorize=authorize, ledger=ledger, budgets=options.budgets
    )


def build_planner(
    state: Path,
    options: AskOptions,
    *,
    authorize: Authorize,
    ledger: Recorder,
    executor: Callable[[str, dict[str, Any]], Any],
    stack: contextlib.ExitStack,
    model: Any = None,
) -> Any:
    """The planner for one run (blocking: it may load a model). ``model``: use this LanguageModel
    instead of the endpoint / registered LLM (hosts that keep one loaded; tests). Anything opened
    is closed by ``stack``. UsageError when there is nothing to plan with."""
    from .tools import ToolRegistry

    tools = ToolRegistry(tool_specs(options.tools), executor=executor)
    rules = _rules(state, options, tools, authorize, ledger)
    if options.rules_only:
        return rules
    if model is None:
        from .llm import OpenAIModel, open_local_llm, registered_llm

        if options.endpoint:
            model = OpenAIModel(
                options.endpoint,
                model=options.llm,
                authorize=authorize,
                api=options.api,
                timeout_s=min(30.0, options.budgets.time_s),
            )
        elif registered_llm(state) is not None:
            model = open_local_llm(state, threads=options.threads)
    if model is None:
        if rules is None:
            raise UsageError(
                "nothing to plan with: no LLM is registered and there are no rules",
                hint="kestrel deploy --model local:PATH, --endpoint URL, or --rules FILE",
            )
        return rules
    context = None
    if options.memory and (state / "memory").is_dir():
        from ..memory.text import TextMemory
        from .context import MemoryContext

        context = MemoryContext(stack.enter_context(TextMemory.open(state, read_only=True)))
    from .planner import LLMPlanner

    return LLMPlanner(
        model, tools, authorize=authorize, ledger=ledger, rules=rules, budgets=options.budgets, context=context
    )


def step_event(step: Step) -> dict[str, Any]:
    """A step as JSON (the daemon's ``ask`` event): what was said, proposed, decided and done."""
    d, r = step.decision, step.result
    return {
        "type": "step",
        "index": step.index,
        "planner": step.planner,
        "text": step.describe(),
        "call": {"action": step.call.action, "args": dict(step.call.args)} if step.call is not None else None,
        "error": step.error,
        "final": step.final,
        "seq": step.seq,
        "decision": None if d is None else {"allowed": bool(d.allowed), "rule": d.rule, "reason": d.reason},
        "result": None if r is None else {"ok": r.ok, "summary": r.summary(200)},
    }


def outcome_event(outcome: Outcome, *, executed: bool) -> dict[str, Any]:
    """The run's outcome as JSON (the ``ask`` result; ``kestrel ask --json`` prints it)."""
    return {
        "type": "outcome",
        "status": outcome.status,
        "final": outcome.final,
        "steps": len(outcome.steps),
        "tokens": outcome.tokens,
        "elapsed_s": round(outcome.elapsed_s, 3),
        "handed_off": outcome.handed_off,
        "error": outcome.error,
        "executed": executed,
        "decisions": [s.decision.allowed for s in outcome.steps if s.decision is not None],
    }
