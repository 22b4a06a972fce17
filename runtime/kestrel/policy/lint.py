"""Warnings about a policy that parses but cannot do what its author meant (pure).

:func:`parse_policy` decides whether a policy is well-formed; this module says
whether it fits the runtime: action names the runtime has no handler for
(``gpio.wrte``, ``set_pin``), argument keys an action never receives, and, given
the device config it is meant for (:class:`DeviceFacts`), actuators that do not
exist there and triggers or schedules whose actions the policy never allows.
Such a policy is not wrong to apply (default deny keeps it safe), so these are
warnings, each with the line and column of the node at fault and, where a known
name is close, a "did you mean".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import yaml

from .._internal.yamlnode import compose
from ..errors import ConfigError
from .catalog import KNOWN_ACTIONS, NETWORK_ARGS

__all__ = ["DeviceFacts", "LintWarning", "lint_policy"]


@dataclass(frozen=True)
class DeviceFacts:
    """What a device config offers a policy: actuators by name (-> type) and the actions it proposes."""

    source: str
    actuators: Mapping[str, str]
    proposals: tuple[tuple[str, str], ...] = ()  # (trigger or schedule name, action)


@dataclass(frozen=True)
class LintWarning:
    line: int  # 1-based
    column: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: warning: {self.message}"


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _at(node: yaml.Node, message: str) -> LintWarning:
    return LintWarning(node.start_mark.line + 1, node.start_mark.column + 1, message)


def _items(node: yaml.Node | None) -> list[tuple[yaml.Node, yaml.Node]]:
    return list(node.value) if isinstance(node, yaml.MappingNode) else []


def _get(node: yaml.Node | None, key: str) -> yaml.Node | None:
    return next((v for k, v in _items(node) if isinstance(k, yaml.ScalarNode) and k.value == key), None)


def _seq(node: yaml.Node | None) -> list[yaml.Node]:
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _scalar(node: yaml.Node | None) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) and isinstance(node.value, str) else None


def lint_policy(text: str | bytes, *, device: DeviceFacts | None = None) -> list[LintWarning]:
    """Warnings for a policy text, in file order (none for text that is not YAML: parse it first)."""
    try:
        root = compose(text.decode("utf-8") if isinstance(text, bytes) else text, source="<policy>")
    except (ConfigError, UnicodeDecodeError):
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    out: list[LintWarning] = []
    allowed: set[str] = set()
    for rule in _seq(_get(root, "actions")):
        name = _rule_action(rule)
        if name is not None:
            allowed.add(name[0])
        out += _check_rule(rule, name, device)
    for rule in _seq(_get(root, "deny")):
        out += _check_rule(rule, _rule_action(rule), device)
    network = _get(root, "network")
    for node in _seq(_get(network, "actions")):
        out += _check_name(node)
    for entry in _seq(_get(network, "allow")):
        for node in _seq(_get(entry, "actions")):
            out += _check_name(node)
    if device is not None:
        for who, action in device.proposals:
            if action not in allowed:
                out.append(
                    LintWarning(
                        1,
                        1,
                        f"{device.source}: {who} proposes {action}, which this policy never "
                        f"allows: every such proposal will be denied",
                    )
                )
    return sorted(out, key=lambda w: (w.line, w.column))


def _rule_action(rule: yaml.Node) -> tuple[str, yaml.Node] | None:
    if isinstance(rule, yaml.ScalarNode):
        return (rule.value, rule) if isinstance(rule.value, str) else None
    node = _get(rule, "action")
    value = _scalar(node)
    return (value, node) if value is not None and node is not None else None


def _check_name(node: yaml.Node) -> list[LintWarning]:
    name = _scalar(node)
    if name is None or name == "*" or name in KNOWN_ACTIONS:
        return []
    hint = _suggest(name, KNOWN_ACTIONS) or f" (the runtime's actions: {', '.join(KNOWN_ACTIONS)})"
    return [_at(node, f"unknown action {name!r}: the runtime never proposes it, so this rule never applies{hint}")]


def _check_rule(
    rule: yaml.Node, name: tuple[str, yaml.Node] | None, device: DeviceFacts | None
) -> Iterator[LintWarning]:
    if name is None:
        return
    action, node = name
    yield from _check_name(node)
    spec = KNOWN_ACTIONS.get(action)
    if spec is None and action != "*":
        return  # unknown action: its argument names cannot be checked
    keys = (
        spec.args + NETWORK_ARGS if spec else tuple({k for s in KNOWN_ACTIONS.values() for k in s.args}) + NETWORK_ARGS
    )
    for knode, vnode in _items(_get(rule, "args")):
        key = _scalar(knode)
        if key is None:
            continue
        if key not in keys:
            takes = f"it takes {', '.join(spec.args)}" if spec else "no action takes it"
            yield _at(
                knode,
                f"{action} has no argument {key!r}: this constraint can never be met; {takes}{_suggest(key, keys)}",
            )
        elif key == "actuator" and spec is not None and spec.actuator and device is not None:
            yield from _check_actuators(vnode, spec.actuator, device)


def _check_actuators(constraint: yaml.Node, kind: str, device: DeviceFacts) -> Iterator[LintWarning]:
    """The names an ``actuator`` constraint accepts (``enum``/``equals``) must be actuators of that type."""
    names: list[yaml.Node] = _seq(_get(constraint, "enum"))
    equals = _get(constraint, "equals")
    if equals is not None:
        names.append(equals)
    same = sorted(n for n, t in device.actuators.items() if t == kind)
    for node in names:
        name = _scalar(node)
        if name is None or device.actuators.get(name) == kind:
            continue
        have = f"its {kind} actuators: {', '.join(same)}" if same else f"it has no {kind} actuator"
        yield _at(node, f"{device.source} has no {kind} actuator {name!r} ({have}){_suggest(name, same)}")
