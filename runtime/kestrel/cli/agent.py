"""``kestrel ask "GOAL"``: run the planner once, printing each step and the policy's decision on it.

The planner is the registered local LLM (``kestrel deploy --model local:PATH``),
an OpenAI-compatible endpoint (``--endpoint URL --llm NAME``), or the rules alone
(``--rules FILE``, default ``STATE/agent/rules.yaml``, which is also where an LLM
hands goals it gives up on). Decisions and steps go to the agent's ledger.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import TransportError, UsageError

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("ask", help="run the planner once on a goal and print each step and its decision",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("goal", help="what the agent should do, in words")
    p.add_argument("--state", metavar="DIR", help="state directory (default $KESTREL_STATE or ~/.local/state/kestrel)")
    p.add_argument("--rules", metavar="FILE", help="rules file (default STATE/agent/rules.yaml if present)")
    p.add_argument("--rules-only", action="store_true", help="plan with the rules alone, no language model")
    p.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible endpoint, e.g. http://10.0.0.5:8080/v1")
    p.add_argument("--llm", metavar="NAME", default="default", help="model name sent to the endpoint")
    p.add_argument("--api", choices=("completions", "chat"), default="completions")
    p.add_argument("--tools", metavar="A,B", help="offer only these built-in actions to the planner "
                   "(default: all of gpio.write, send_email, schedule_event, fetch_data, mqtt.publish)")
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--time", type=float, default=60.0, metavar="SECONDS", help="time budget of the whole run")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--no-memory", action="store_true", help="plan without the vector memory (STATE/memory)")
    p.add_argument("--passphrase-file", help="file holding the agent keystore's passphrase")
    p.add_argument("--json", action="store_true", help="print the outcome as one JSON object at the end")
    p.set_defaults(func=_ask)


def _daemon_running(state: Path) -> bool:
    import socket

    from .._internal.paths import StateLayout

    path = StateLayout(state).run / "control.sock"
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _not_executed(action: str, args: dict) -> Any:
    raise TransportError("allowed, but not executed: the daemon is not running here",
                         hint="actions run inside `kestrel run`; this run recorded the decision only")


def _ask(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.paths import resolve_state_dir
    from ..agent.core import Agent
    from ..agent.planner import Budgets
    from ..agent.tools import ToolRegistry

    state = resolve_state_dir(args.state)
    if not (state / "identity").is_dir():
        raise UsageError(f"no agent in {state}", hint="create one with `kestrel init-agent` or pass --state DIR")
    if _daemon_running(state):
        raise UsageError(
            f"the daemon is running on {state} and owns its ledger",
            hint="stop it (or run `kestrel ask` on a state directory no daemon uses); see docs/planner.md",
        )
    budgets = Budgets(max_steps=args.max_steps, max_tokens=args.max_tokens, time_s=args.time)
    passphrase = None
    if args.passphrase_file:
        from ..identity.secrets import read_passphrase_file

        passphrase = read_passphrase_file(args.passphrase_file)
    with contextlib.ExitStack() as stack:
        from ..policy import PolicyEngine

        agent = stack.enter_context(Agent.open(state, passphrase=passphrase))
        engine = PolicyEngine(state, agent.ledger)
        tools = ToolRegistry(_tool_specs(args.tools), executor=_not_executed)
        rules = _rules(args, state, tools, engine, agent.ledger, budgets)
        planner = rules if args.rules_only else _llm_planner(args, state, tools, engine, agent, rules, budgets, stack)
        if planner is None:
            raise UsageError("nothing to plan with: no LLM is registered and there are no rules",
                             hint="kestrel deploy --model local:PATH, --endpoint URL, or --rules FILE")
        outcome = planner.run(args.goal, on_step=lambda step: print(step.describe(), flush=True))
    summary = f"outcome: {outcome.status}" + (f" ({outcome.final})" if outcome.final else "")
    if outcome.error:
        print(f"kestrel: {outcome.error}", file=sys.stderr)
    print(f"{summary}; {len(outcome.steps)} steps, {outcome.tokens} tokens, {outcome.elapsed_s:.2f} s"
          + ("; handed to the rules" if outcome.handed_off else ""))
    if args.json:
        print(json.dumps({"status": outcome.status, "final": outcome.final, "steps": len(outcome.steps),
                          "tokens": outcome.tokens, "handed_off": outcome.handed_off, "error": outcome.error,
                          "decisions": [s.decision.allowed for s in outcome.steps if s.decision is not None]}))
    return 0 if outcome.status == "done" else 1


def _tool_specs(names: str | None) -> Any:
    from ..agent.actions import BUILTIN_TOOLS, builtin

    if not names:
        return BUILTIN_TOOLS
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {t.name for t in BUILTIN_TOOLS})
    if unknown or not wanted:
        raise UsageError(f"--tools: unknown action(s) {', '.join(unknown) or '(none given)'}",
                         hint="choose from " + ", ".join(t.name for t in BUILTIN_TOOLS))
    return builtin(*wanted)


def _rules(args: argparse.Namespace, state: Path, tools: Any, engine: Any, ledger: Any, budgets: Any) -> Any:
    from .._internal.fsutil import read_bytes
    from ..agent.rules import RulePlanner, parse_rules

    path = Path(args.rules) if args.rules else state / "agent" / "rules.yaml"
    if not args.rules and not path.exists():
        if args.rules_only:
            raise UsageError("--rules-only needs rules", hint=f"write {path} or pass --rules FILE")
        return None
    raw = read_bytes(path, what="rules file", max_size=1 << 20)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        from ..errors import ConfigError

        raise ConfigError("not UTF-8 text", path=str(path)) from None
    return RulePlanner(parse_rules(text, source=str(path)), tools, authorize=engine.decide, ledger=ledger,
                       budgets=budgets)


def _llm_planner(args: argparse.Namespace, state: Path, tools: Any, engine: Any, agent: Any, rules: Any,
                 budgets: Any, stack: contextlib.ExitStack) -> Any:
    from ..agent.llm import OpenAIModel, open_local_llm, registered_llm
    from ..agent.planner import LLMPlanner

    if args.endpoint:
        model: Any = OpenAIModel(args.endpoint, model=args.llm, authorize=engine.decide, api=args.api,
                                 timeout_s=min(30.0, args.time))
    elif registered_llm(state) is not None:
        model = open_local_llm(state, threads=args.threads)
    else:
        return rules
    context = None
    if not args.no_memory and (state / "memory").is_dir():
        from ..agent.context import MemoryContext
        from ..memory.text import TextMemory

        context = MemoryContext(stack.enter_context(TextMemory.open(state, read_only=True)))
    return LLMPlanner(model, tools, authorize=engine.decide, ledger=agent.ledger, rules=rules, budgets=budgets,
                      context=context)
