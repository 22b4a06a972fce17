"""Typed reading of a YAML document that remembers where every value came from.

``load(text, source=...)`` composes the YAML into :class:`Node` objects (PyYAML's
safe composer: no tags that build Python objects). Every accessor raises
:class:`~kestrel.errors.ConfigError` naming the file, line and dotted key, so a
parser built on it never shows a traceback for a bad file. Shared by the device
config (``kestrel.daemon.config``), the board profiles (``kestrel.io.boards``) and the
planner's rules files (``kestrel.agent.rules``).

:func:`compose` is the one way the project turns YAML text into nodes: libyaml when it is
there, anchors and aliases refused where they occur (an alias graph expands exponentially
when walked: "billion laughs"), syntax errors with their position. The policy parser
(``kestrel.policy.parse``) walks the same nodes with its own collect-every-issue checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import yaml

from ..errors import ConfigError
from .yamlerror import yaml_problem

__all__ = ["Node", "Fields", "load", "compose", "AliasError", "YamlSyntaxError", "ALIAS_MESSAGE"]

T = TypeVar("T")
_MISSING: Any = object()
_SCALAR = yaml.constructor.SafeConstructor()
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq"))


class Node:
    """One YAML value with its source position and dotted key path."""

    __slots__ = ("raw", "source", "key", "line", "column")

    def __init__(
        self, raw: yaml.Node | None, *, source: str, key: str, line: int | None = None, column: int | None = None
    ) -> None:
        self.raw = raw
        self.source = source
        self.key = key
        if raw is not None:
            line, column = raw.start_mark.line + 1, raw.start_mark.column + 1
        self.line, self.column = line, column
        if raw is not None and raw.tag not in _PLAIN_TAGS:
            raise self.error(
                f"YAML type {str(raw.tag).replace('tag:yaml.org,2002:', '!!')} is not allowed here",
                hint="use plain strings, numbers, booleans, lists and mappings; quote dates",
            )

    # -- errors -------------------------------------------------------------
    def error(self, message: str, *, hint: str | None = None, key: str | None = None) -> ConfigError:
        return ConfigError(
            message, path=self.source, line=self.line, column=self.column, key=key or self.key or None, hint=hint
        )

    # -- shapes -------------------------------------------------------------
    @property
    def is_null(self) -> bool:
        return self.raw is None or (isinstance(self.raw, yaml.ScalarNode) and self.raw.tag == "tag:yaml.org,2002:null")

    def _child(self, raw: yaml.Node, name: str) -> Node:
        key = f"{self.key}.{name}" if self.key else name
        return Node(raw, source=self.source, key=key)

    def mapping(self, *, allowed: set[str] | None = None) -> dict[str, Node]:
        """The mapping's entries as child nodes; unknown keys are an error when ``allowed`` is given."""
        if self.is_null:
            return {}
        if not isinstance(self.raw, yaml.MappingNode):
            raise self.error("expected a mapping (key: value lines)")
        out: dict[str, Node] = {}
        for knode, vnode in self.raw.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise Node(knode, source=self.source, key=self.key).error("keys must be plain strings")
            name = str(knode.value)
            child = self._child(vnode, name)
            if name in out:
                raise Node(knode, source=self.source, key=child.key).error("duplicate key")
            if allowed is not None and name not in allowed:
                raise Node(knode, source=self.source, key=child.key).error(
                    f"unknown key {name!r}", hint=f"allowed here: {', '.join(sorted(allowed))}"
                )
            out[name] = child
        return out

    def sequence(self) -> list[Node]:
        if self.is_null:
            return []
        if not isinstance(self.raw, yaml.SequenceNode):
            raise self.error("expected a list")
        return [Node(item, source=self.source, key=f"{self.key}[{i}]") for i, item in enumerate(self.raw.value)]

    def items(self) -> Iterator[tuple[str, Node]]:
        return iter(self.mapping().items())

    # -- values -------------------------------------------------------------
    def value(self) -> Any:
        """The plain Python value (dicts, lists, scalars) of this node."""
        if self.raw is None:
            return None
        if isinstance(self.raw, yaml.ScalarNode):
            try:
                return _SCALAR.construct_object(self.raw, deep=True)
            except yaml.YAMLError as exc:
                raise self.error(f"bad value: {exc}") from None
        if isinstance(self.raw, yaml.SequenceNode):
            return [n.value() for n in self.sequence()]
        return {k: n.value() for k, n in self.mapping().items()}

    def as_str(self, *, choices: tuple[str, ...] | None = None) -> str:
        v = self.value()
        if not isinstance(v, str) or not v:
            raise self.error(f"expected a non-empty string, got {_show(v)}")
        if choices is not None and v not in choices:
            raise self.error(f"{v!r} is not one of: {', '.join(choices)}")
        return v

    def as_int(self, *, min: int | None = None, max: int | None = None) -> int:
        v = self.value()
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(f"expected an integer, got {_show(v)}")
        _check_range(self, v, min, max)
        return v

    def as_float(self, *, min: float | None = None, max: float | None = None) -> float:
        v = self.value()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(f"expected a number, got {_show(v)}")
        _check_range(self, v, min, max)
        return float(v)

    def as_bool(self) -> bool:
        v = self.value()
        if not isinstance(v, bool):
            raise self.error(f"expected true or false, got {_show(v)}")
        return v


def _check_range(node: Node, v: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and v < lo:
        raise node.error(f"{v} is below the minimum {lo}")
    if hi is not None and v > hi:
        raise node.error(f"{v} is above the maximum {hi}")


def _show(v: Any) -> str:
    if v is None:
        return "nothing"
    return f"{type(v).__name__} {v!r}"[:80]


class Fields:
    """Keyed access to a mapping node with defaults: ``f.get("baud", Node.as_int, 9600, min=50)``."""

    def __init__(self, node: Node, allowed: set[str]) -> None:
        self.node = node
        self.entries = node.mapping(allowed=allowed)

    def has(self, name: str) -> bool:
        return name in self.entries and not self.entries[name].is_null

    def node_of(self, name: str) -> Node:
        if name in self.entries:
            return self.entries[name]
        key = f"{self.node.key}.{name}" if self.node.key else name
        return Node(None, source=self.node.source, key=key, line=self.node.line, column=self.node.column)

    def get(self, name: str, read: Callable[..., T], default: T = _MISSING, **opts: Any) -> T:
        if not self.has(name):
            if default is _MISSING:
                raise self.node_of(name).error("is required")
            return default
        return read(self.entries[name], **opts)


ALIAS_MESSAGE = "YAML anchors and aliases are not allowed"


class AliasError(ConfigError):
    """The text uses YAML aliases; ``positions`` holds each one's (line, column), 1-based."""

    def __init__(self, source: str, positions: list[tuple[int, int]]) -> None:
        line, column = positions[0]
        super().__init__(
            ALIAS_MESSAGE, path=source, line=line, column=column, hint="write each value out where it is used"
        )
        self.positions = positions


class YamlSyntaxError(ConfigError):
    """The text is not YAML; ``problem`` is what PyYAML found, without the position."""

    def __init__(
        self, problem: str, *, source: str, label: str, line: int | None = None, column: int | None = None
    ) -> None:
        super().__init__(f"{label}: {problem}", path=source, line=line, column=column)
        self.problem = problem


def compose(text: str, *, source: str, label: str = "not valid YAML") -> yaml.Node | None:
    """The node tree of ``text`` (None for an empty document), refusing aliases.

    Raises :class:`AliasError` (every alias's position) or :class:`YamlSyntaxError`
    (``label: problem`` at the syntax error's position; nesting too deep for the parser).
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        aliases = [
            (e.start_mark.line + 1, e.start_mark.column + 1)
            for e in yaml.parse(text, Loader=loader)
            if isinstance(e, yaml.AliasEvent) and e.start_mark
        ]
        if aliases:
            raise AliasError(source, aliases)
        return yaml.compose(text, Loader=loader)
    except yaml.YAMLError as exc:
        problem, line, column, _ = yaml_problem(exc)
        raise YamlSyntaxError(problem, source=source, label=label, line=line, column=column) from None
    except RecursionError:  # the pure-Python loader on absurd nesting (libyaml stops at depth 1000)
        raise YamlSyntaxError("nesting is too deep", source=source, label=label) from None


def load(text: str, *, source: str) -> Node:
    """Compose ``text`` into a root :class:`Node` (see :func:`compose`); errors are ConfigError."""
    return Node(compose(text, source=source), source=source, key="", line=1, column=1)
