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
from ._common import add_passphrase_file_arg, add_state_arg, state_from

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ask",
        help="run the planner once on a goal and print each step and its decision",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("goal", help="what the agent should do, in words")
    add_state_arg(p)
    p.add_argument("--rules", metavar="FILE", help="rules file (default STATE/agent/rules.yaml if present)")
    p.add_argument("--rules-only", action="store_true", help="plan with the rules alone, no language model")
    p.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible endpoint, e.g. http://10.0.0.5:8080/v1")
    p.add_argument("--llm", metavar="NAME", default="default", help="model name sent to the endpoint")
    p.add_argument("--api", choices=("completions", "chat"), default="completions")
    p.add_argument(
        "--tools",
        metavar="A,B",
        help="offer only these built-in actions to the planner "
        "(default: all of gpio.write, send_email, schedule_event, fetch_data, mqtt.publish)",
    )
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--time", type=float, default=60.0, metavar="SECONDS", help="time budget of the whole run")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--no-memory", action="store_true", help="plan without the vector memory (STATE/memory)")
    add_passphrase_file_arg(p)
    p.add_argument("--json", action="store_true", help="print the outcome as one JSON object at the end")
    p.set_defaults(func=_ask)


def _options(args: argparse.Namespace) -> Any:
    from ..agent.ask import MAX_RULES_TEXT, AskOptions, tool_specs
    from ..agent.planner import Budgets

    tools = tuple(n.strip() for n in args.tools.split(",") if n.strip()) if args.tools else ()
    if args.tools is not None and not tools:
        raise UsageError("--tools: no action named")
    tool_specs(tools)  # unknown names fail here, before anything is opened
    rules_text, rules_source = None, "<rules>"
    if args.rules:
        from .._internal.fsutil import read_bytes

        raw = read_bytes(Path(args.rules), what="rules file", max_size=MAX_RULES_TEXT)
        try:
            rules_text, rules_source = raw.decode("utf-8"), args.rules
        except UnicodeDecodeError:
            from ..errors import ConfigError

            raise ConfigError("not UTF-8 text", path=args.rules) from None
        from ..agent.rules import parse_rules

        parse_rules(rules_text, source=rules_source)  # a bad rules file fails here, with its line
    return AskOptions(
        rules_text=rules_text,
        rules_source=rules_source,
        rules_only=args.rules_only,
        endpoint=args.endpoint,
        llm=args.llm,
        api=args.api,
        tools=tools,
        budgets=Budgets(max_steps=args.max_steps, max_tokens=args.max_tokens, time_s=args.time),
        threads=args.threads,
        memory=not args.no_memory,
    )


def _not_executed(action: str, args: dict) -> Any:
    raise TransportError(
        "allowed, but not executed: no daemon runs on this state directory",
        hint="actions run inside `kestrel run`; this run recorded the decision only",
    )


def _ask(args: argparse.Namespace, extra: list[str]) -> int:
    from .through import daemon_client

    state = state_from(args)
    if not (state / "identity").is_dir():
        raise UsageError(f"no agent in {state}", hint="create one with `kestrel init-agent` or pass --state DIR")
    options = _options(args)
    client = daemon_client(state)
    if client is not None:
        with client:
            outcome = None
            for item in client.ask(args.goal, **options.to_params()):
                if item.get("type") == "step":
                    print(item.get("text"), flush=True)
                else:
                    outcome = item
        assert outcome is not None
    else:
        print(
            f"kestrel: no daemon runs on {state}: actions are decided and recorded, NOT executed "
            "(start `kestrel run` to have them executed)",
            file=sys.stderr,
            flush=True,
        )
        outcome = _ask_here(args, state, options)
    return _report(outcome, json_out=args.json)


def _ask_here(args: argparse.Namespace, state: Path, options: Any) -> dict[str, Any]:
    """No daemon: plan with the ledger opened here; allowed calls are recorded, not executed."""
    from ..agent.ask import build_planner, outcome_event
    from ..agent.core import Agent
    from ..ota.source import policy_source
    from ..policy import PolicyEngine

    passphrase = None
    if args.passphrase_file:
        from ..identity.secrets import read_passphrase_file

        passphrase = read_passphrase_file(args.passphrase_file)
    with contextlib.ExitStack() as stack:
        agent = stack.enter_context(Agent.open(state, passphrase=passphrase))
        engine = PolicyEngine(state, agent.ledger, source=policy_source(state))
        planner = build_planner(
            state, options, authorize=engine.decide, ledger=agent.ledger, executor=_not_executed, stack=stack
        )
        outcome = planner.run(args.goal, on_step=lambda step: print(step.describe(), flush=True))
    return outcome_event(outcome, executed=False)


def _report(outcome: dict[str, Any], *, json_out: bool) -> int:
    summary = f"outcome: {outcome['status']}" + (f" ({outcome['final']})" if outcome.get("final") else "")
    if outcome.get("error"):
        print(f"kestrel: {outcome['error']}", file=sys.stderr)
    print(
        f"{summary}; {outcome['steps']} steps, {outcome['tokens']} tokens, {outcome['elapsed_s']:.2f} s"
        + ("; handed to the rules" if outcome.get("handed_off") else "")
        + ("" if outcome.get("executed") else "; nothing executed (no daemon)")
    )
    if json_out:
        print(
            json.dumps(
                {
                    k: outcome.get(k)
                    for k in ("status", "final", "steps", "tokens", "handed_off", "error", "decisions", "executed")
                }
            )
        )
    return 0 if outcome["status"] == "done" else 1
