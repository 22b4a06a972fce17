"""The deterministic rule planner: goals matched by regular expressions, mapped to calls.

For boards too small for a language model, and as the fallback an LLM planner
hands goals to. Rules file (YAML, format in docs/planner.md)::

    rules:
      - id: fan-on
        when: "turn (?:on|up) the fan"          # re.search, case-insensitive
        action: gpio.write
        args: {pin: FAN, value: 1}
      - id: mail
        when: "email (?P<who>\\w+) about (?P<topic>\\w+)"
        action: send_email
        args: {to: "{who}@example.com", subject: "{topic}"}   # str.format with the groups

Every matching rule fires, in file order, through the same :class:`Actor` as
the LLM planner (schema check, policy decision, execution, ledger record).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from .._internal.linregex import LinearRegex, RegexError, compile_linear
from .._internal.yamlnode import Fields, Node, load
from .planner import Actor, Authorize, Budgets, Outcome, Step
from .tools import ProposalError, ToolCall, ToolRegistry, digest_of, parse_proposal

if TYPE_CHECKING:
    from ..ledger.recorder import Recorder

__all__ = ["Rule", "RulePlanner", "parse_rules"]

_RULE_KEYS = {"id", "when", "action", "args"}


@dataclass(frozen=True)
class Rule:
    id: str
    when: re.Pattern[str]  # for the capture groups, run only on goals ``gate`` matched
    action: str
    args: Mapping[str, Any]
    gate: LinearRegex  # the same pattern, matched in linear time: decides whether the rule fires

    def call_for(self, match: re.Match[str]) -> ToolCall:
        groups = {k: v or "" for k, v in match.groupdict().items()}
        positional = [g or "" for g in match.groups()]

        def fill(value: Any) -> Any:
            if isinstance(value, str):
                try:
                    return value.format(*positional, **groups)
                except (IndexError, KeyError, ValueError):
                    return value
            if isinstance(value, list):
                return [fill(v) for v in value]
            if isinstance(value, dict):
                return {k: fill(v) for k, v in value.items()}
            return value

        return ToolCall(self.action, fill(dict(self.args)))


def parse_rules(text: str, *, source: str = "<rules>") -> tuple[Rule, ...]:
    """Parse a rules file (pure). Raises ConfigError naming the file, line and key."""
    root = load(text, source=source)
    if not isinstance(root.raw, yaml.MappingNode) or set(root.mapping()) != {"rules"}:
        raise root.error("a rules file holds one key, 'rules', with a list")
    rules, seen = [], set()
    for item in root.mapping()["rules"].sequence():
        if not isinstance(item.raw, yaml.MappingNode) or not {"id", "when", "action"} <= set(item.mapping()):
            raise item.error(f"each rule has id, when, action and optional args; got {item.value()!r}"[:200])
        f = Fields(item, _RULE_KEYS)
        rid, when, action = (f.get(k, Node.as_str) for k in ("id", "when", "action"))
        args_node = f.node_of("args")
        args = args_node.value() if f.has("args") else {}
        if not isinstance(args, dict):
            raise args_node.error("args must be a mapping")
        if rid in seen:
            raise f.node_of("id").error(f"duplicate rule id {rid!r}")
        seen.add(rid)
        try:  # linear time: goals come from people and models, patterns from the rules file
            gate = compile_linear(when, mode="search", ignore_case=True)
            pattern = re.compile(when, re.IGNORECASE | re.ASCII)
        except (RegexError, re.error) as exc:
            raise f.node_of("when").error(
                f"bad pattern: {exc}",
                hint="patterns are matched in linear time: no backreferences or lookaround (docs/planner.md)",
            ) from None
        rules.append(Rule(rid, pattern, action, args, gate))
    return tuple(rules)


class RulePlanner:
    """Fires every rule whose pattern matches the goal, through the shared Actor."""

    def __init__(
        self,
        rules: Sequence[Rule],
        tools: ToolRegistry,
        *,
        authorize: Authorize,
        ledger: Recorder,
        budgets: Budgets = Budgets(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rules = tuple(rules)
        self.actor = Actor(tools, authorize=authorize, ledger=ledger)
        self.budgets = budgets
        self._clock = clock
        self.digest = "rules:" + digest_of(
            [{"id": r.id, "when": r.when.pattern, "action": r.action, "args": dict(r.args)} for r in self.rules]
        )

    def run(
        self,
        goal: str,
        *,
        cancel: threading.Event | None = None,
        first_index: int = 1,
        on_step: Callable[[Step], None] | None = None,
    ) -> Outcome:
        start = self._clock()
        steps: list[Step] = []
        fired = 0
        status = "no-rule"
        for rule in self.rules:
            match = rule.when.search(goal) if rule.gate.search(goal) else None
            if match is None:
                continue
            if cancel is not None and cancel.is_set():
                status = "cancelled"
                break
            if fired >= self.budgets.max_steps or self._clock() - start >= self.budgets.time_s:
                status = "steps" if fired >= self.budgets.max_steps else "time"
                break
            fired += 1
            step = Step(first_index + len(steps), "rules", rule.id)
            call = rule.call_for(match)
            try:
                checked = parse_proposal(call.to_json(), self.actor.tools.specs)
                step = self.actor.act(Step(step.index, "rules", rule.id, call=checked))  # type: ignore[arg-type]
            except ProposalError as exc:
                step = Step(step.index, "rules", rule.id, call=None, error=f"{exc.code}: {exc.message}")
            step = self.actor.record(step, goal=goal, model=self.digest, prompt=None, tokens=0)
            steps.append(step)
            if on_step is not None:
                on_step(step)
            status = "fired"
        if status == "fired":
            decided = [s.decision for s in steps if s.decision is not None]
            status = "done" if any(d.allowed for d in decided) else "refused" if decided else "invalid"
        return Outcome(goal, status, tuple(steps), None, 0, self._clock() - start)
