"""Tools the planner may call: action schemas, parsing of the model's proposals, execution.

A :class:`ToolRegistry` holds one :class:`ToolSpec` per action (name, description,
argument schema, see :mod:`kestrel.agent.schema`) and an executor callback
``executor(action, args) -> result`` (the daemon's action dispatch, or any
function). The planner never executes anything the registry has not validated,
and never anything the policy has not allowed (that check is the planner's).

The model's reply is parsed by :func:`parse_proposal` into exactly one of
:class:`ToolCall`, :class:`Final` or :class:`Handoff`; anything else raises
:class:`ProposalError` with a code (``invalid-json``, ``bad-shape``,
``unknown-action``, ``bad-args``) and a message the repair prompt quotes back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, DataError, KestrelError
from .schema import check_schema, schema_errors

__all__ = [
    "ToolSpec",
    "ToolCall",
    "Final",
    "Handoff",
    "Proposal",
    "ToolResult",
    "ToolRegistry",
    "ProposalError",
    "parse_proposal",
    "canonical_json",
    "digest_of",
]

Executor = Callable[[str, dict[str, Any]], Any]


class ProposalError(DataError):
    """The model's reply is not a valid proposal. ``code`` says which way it is wrong."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, hint="the planner asks the model to repair its reply, within its budget")
        self.code = code


def canonical_json(value: Any) -> bytes:
    """Sorted-key compact JSON (the bytes that digests are taken over)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr).encode()


def digest_of(value: Any) -> str:
    data = value if isinstance(value, bytes) else value.encode() if isinstance(value, str) else canonical_json(value)
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "._-" for c in self.name):
            raise ConfigError(f"invalid action name {self.name!r}")
        check_schema(self.parameters, where=f"{self.name}.parameters")
        if self.parameters.get("type", "object") != "object":
            raise ConfigError("an action's parameters must be an object schema", key=self.name)

    def signature(self) -> str:
        """One line for the prompt: ``name {"arg": type, ...}: description``."""
        props = self.parameters.get("properties") or {}
        required = set(self.parameters.get("required") or ())
        parts = []
        for name, sub in props.items():
            kind = "|".join(map(json.dumps, sub["enum"])) if "enum" in sub else sub.get("type", "any")
            parts.append(f'"{name}"{"" if name in required else "?"}: {kind}')
        return f"{self.name} {{{', '.join(parts)}}}: {self.description}"


@dataclass(frozen=True)
class ToolCall:
    action: str
    args: Mapping[str, Any]

    def to_json(self) -> str:
        return canonical_json({"action": self.action, "args": dict(self.args)}).decode()


@dataclass(frozen=True)
class Final:
    text: str


@dataclass(frozen=True)
class Handoff:
    to: str = "rules"


Proposal = ToolCall | Final | Handoff


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    output: Any = None
    error: str | None = None

    @property
    def digest(self) -> str:
        return digest_of({"ok": self.ok, "output": self.output, "error": self.error})

    def summary(self, limit: int = 200) -> str:
        text = json.dumps(self.output, default=repr) if self.ok else str(self.error)
        return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ProposalError("invalid-json", f"duplicate key {key!r} in the JSON object")
        out[key] = value
    return out


def _first_object(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise ProposalError("invalid-json", "no JSON object in the reply")
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    try:
        value, _ = decoder.raw_decode(text, start)
    except ValueError as exc:
        raise ProposalError("invalid-json", f"invalid JSON: {exc}") from None
    return value


def parse_proposal(text: str, specs: Mapping[str, ToolSpec]) -> Proposal:
    """Parse and validate one reply of the model against the registered actions (pure)."""
    obj = _first_object(text)
    keys = set(obj)
    if keys == {"final"} and isinstance(obj["final"], str):
        return Final(obj["final"])
    if keys == {"handoff"} and obj["handoff"] == "rules":
        return Handoff("rules")
    if keys != {"action", "args"} and keys != {"action"}:
        raise ProposalError(
            "bad-shape",
            'expected {"action": NAME, "args": {...}}, {"final": TEXT} or {"handoff": "rules"}, '
            f"got keys {sorted(keys)}",
        )
    action, args = obj["action"], obj.get("args", {})
    if not isinstance(action, str) or action not in specs:
        raise ProposalError("unknown-action", f"unknown action {action!r}; known: {sorted(specs)}")
    if not isinstance(args, dict):
        raise ProposalError("bad-args", f"args must be an object, got {type(args).__name__}")
    errors = schema_errors(args, specs[action].parameters)
    if errors:
        raise ProposalError("bad-args", f"{action}: " + "; ".join(errors))
    return ToolCall(action, args)


class ToolRegistry:
    """Action schemas plus the callback that executes an allowed, validated call."""

    def __init__(self, specs: Iterable[ToolSpec] = (), *, executor: Executor | None = None) -> None:
        self._specs: dict[str, ToolSpec] = {}
        self._executors: dict[str, Executor] = {}
        self._default = executor
        for spec in specs:
            self.register(spec)

    def register(self, spec: ToolSpec, executor: Executor | None = None) -> None:
        if spec.name in self._specs:
            raise ConfigError(f"action {spec.name!r} is registered twice")
        self._specs[spec.name] = spec
        if executor is not None:
            self._executors[spec.name] = executor

    @property
    def specs(self) -> Mapping[str, ToolSpec]:
        return dict(self._specs)

    def parse(self, text: str) -> Proposal:
        return parse_proposal(text, self._specs)

    def describe(self) -> str:
        return "\n".join(f"- {spec.signature()}" for spec in self._specs.values())

    def execute(self, call: ToolCall) -> ToolResult:
        """Run a call; an executor's failure becomes a failed result, never an exception."""
        executor = self._executors.get(call.action, self._default)
        if executor is None:
            return ToolResult(False, error=f"no executor for {call.action}")
        try:
            return ToolResult(True, output=executor(call.action, dict(call.args)))
        except KestrelError as exc:
            return ToolResult(False, error=exc.message)
        except Exception as exc:  # an action handler's bug must not kill the planner
            return ToolResult(False, error=f"{type(exc).__name__}: {exc}")
