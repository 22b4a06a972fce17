"""A small, safe expression language for trigger conditions (argument templates: daemon/template.py).

No ``eval()``: text is tokenised and parsed (precedence climbing) into a tree of
closures over a whitelist of operators and functions. Grammar (docs/device-config.md)::

    expr   := or ;  or := and ("or" and)* ;  and := not ("and" not)*
    not    := "not" not | cmp
    cmp    := sum (("=="|"!="|"<"|"<="|">"|">="|"in"|"not in") sum)?
    sum    := term (("+"|"-") term)* ;  term := unary (("*"|"/"|"%") unary)*
    unary  := "-" unary | atom ("[" expr "]")*
    atom   := NUMBER | STRING | true | false | null | NAME ("." NAME)* | FUNC "(" args ")"
            | "(" expr ")" | "[" args "]"

Names read sensor values (``door``, ``weather.temp``); a missing value is ``null``; a field
of a value that is not an object (``weather.temp`` when ``weather`` is ``21.5``) is an error
(the trigger counts a fault).
``null`` compared by order is false and ``null`` in arithmetic gives ``null``, so a
condition over a sensor that has not reported yet is simply not true.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..errors import DataError

__all__ = ["Expression", "ExpressionError", "compile_expression", "as_text", "MAX_LENGTH"]

MAX_LENGTH = 1024
MAX_DEPTH = 32

Evaluator = Callable[[Mapping[str, Any]], Any]


class ExpressionError(DataError):
    """An expression does not parse, or cannot be evaluated on the given values."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?|\.\d+)
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<op>==|!=|<=|>=|[-+*/%<>(),\[\]])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _arith(fn: Callable[[Any, Any], Any], sym: str) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        if _num(a) and _num(b):
            if sym in "/%" and b == 0:
                return None
            return fn(a, b)
        if sym == "+" and isinstance(a, str) and isinstance(b, str):
            return a + b
        raise ExpressionError(f"cannot apply {sym!r} to {type(a).__name__} and {type(b).__name__}")

    return apply


def _order(fn: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def apply(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False
        if (_num(a) and _num(b)) or (isinstance(a, str) and isinstance(b, str)):
            return fn(a, b)
        raise ExpressionError(f"cannot order {type(a).__name__} and {type(b).__name__}")

    return apply


def _contains(a: Any, b: Any) -> bool:
    if isinstance(b, (list, str, dict)):
        try:
            return a in b
        except TypeError:
            return False
    return False


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": _arith(operator.add, "+"),
    "-": _arith(operator.sub, "-"),
    "*": _arith(operator.mul, "*"),
    "/": _arith(operator.truediv, "/"),
    "%": _arith(operator.mod, "%"),
    "==": operator.eq,
    "!=": operator.ne,
    "<": _order(operator.lt),
    "<=": _order(operator.le),
    ">": _order(operator.gt),
    ">=": _order(operator.ge),
    "in": _contains,
    "not in": lambda a, b: not _contains(a, b),
}


def _fn_num(fn: Callable[..., Any]) -> Callable[..., Any]:
    def apply(*args: Any) -> Any:
        if any(a is None for a in args):
            return None
        if not all(_num(a) for a in args):
            raise ExpressionError(f"{fn.__name__}() takes numbers")
        return fn(*args)

    return apply


def _subscript(base: Any, index: Any) -> Any:
    if isinstance(base, (list, str)) and isinstance(index, int) and not isinstance(index, bool):
        return base[index] if -len(base) <= index < len(base) else None
    if isinstance(base, dict) and isinstance(index, str):
        return base.get(index)
    return None


def _len(x: Any) -> Any:
    return None if x is None else len(x) if isinstance(x, (str, list, dict)) else None


def as_text(x: Any) -> str:
    """How the language writes a value as text (``str()``): null, true, false, numbers, strings."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true" if x else "false"
    return str(x)


_FUNCS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "abs": (_fn_num(abs), 1, 1),
    "min": (_fn_num(min), 1, 16),
    "max": (_fn_num(max), 1, 16),
    "round": (_fn_num(round), 1, 2),
    "floor": (_fn_num(math.floor), 1, 1),
    "len": (_len, 1, 1),
    "str": (as_text, 1, 1),
}


@dataclass(frozen=True)
class Expression:
    """A compiled expression. ``names`` are the root sensor names it reads."""

    source: str
    names: frozenset[str]
    _fn: Evaluator = field(repr=False, compare=False)

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        try:
            return self._fn(values)
        except ExpressionError as exc:
            raise ExpressionError(f"{self.source!r}: {exc.message}") from None
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise ExpressionError(f"{self.source!r}: {exc}") from None

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Truth of the expression; raises ExpressionError on a type error."""
        return bool(self.evaluate(values))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, Any, int]] = []
        self.names: set[str] = set()
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                self.fail(f"unexpected character {text[pos:].lstrip()[:1]!r}", pos)
            kind = m.lastgroup or ""
            val: Any = m.group(kind)
            start = m.start(kind)
            if kind == "num":
                val = float(val) if any(c in val for c in ".eE") else int(val)
            elif kind == "str":
                val = re.sub(r"\\(.)", r"\1", val[1:-1])
            elif kind == "name" and val in _KEYWORDS:
                kind = "kw"
            self.tokens.append((kind, val, start))
            pos = m.end()
        self.i = 0
        self.depth = 0

    def fail(self, message: str, pos: int | None = None) -> NoReturn:
        if pos is None:
            pos = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)
        raise ExpressionError(f"{message} at column {pos + 1} of {self.text!r}")

    def peek(self) -> tuple[str, Any] | None:
        if self.i < len(self.tokens):
            return self.tokens[self.i][0], self.tokens[self.i][1]
        return None

    def accept(self, kind: str, val: Any = None) -> bool:
        tok = self.peek()
        if tok and tok[0] == kind and (val is None or tok[1] == val):
            self.i += 1
            return True
        return False

    def expect(self, kind: str, val: Any) -> None:
        if not self.accept(kind, val):
            self.fail(f"expected {val!r}")

    def parse(self) -> Evaluator:
        fn = self.or_()
        if self.i != len(self.tokens):
            self.fail("unexpected text")
        return fn

    def _nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail("expression nested too deeply")

    def or_(self) -> Evaluator:
        left = self.and_()
        while self.accept("kw", "or"):
            right = self.and_()
            left = (lambda a, b: lambda v: bool(a(v)) or bool(b(v)))(left, right)
        return left

    def and_(self) -> Evaluator:
        left = self.not_()
        while self.accept("kw", "and"):
            right = self.not_()
            left = (lambda a, b: lambda v: bool(a(v)) and bool(b(v)))(left, right)
        return left

    def not_(self) -> Evaluator:
        if self.accept("kw", "not"):
            self._nest()
            inner = self.not_()
            self.depth -= 1
            return lambda v: not inner(v)
        return self.cmp()

    def cmp(self) -> Evaluator:
        left = self.sum()
        tok = self.peek()
        if tok is None:
            return left
        if tok[0] == "op" and tok[1] in ("==", "!=", "<", "<=", ">", ">="):
            sym = tok[1]
            self.i += 1
        elif tok == ("kw", "in"):
            sym = "in"
            self.i += 1
        elif tok == ("kw", "not") and self.i + 1 < len(self.tokens) and self.tokens[self.i + 1][1] == "in":
            sym = "not in"
            self.i += 2
        else:
            return left
        return self._binary(sym, left, self.sum())

    @staticmethod
    def _binary(sym: str, a: Evaluator, b: Evaluator) -> Evaluator:
        op = _BINARY[sym]
        return lambda v: op(a(v), b(v))

    def sum(self) -> Evaluator:
        left = self.term()
        while (tok := self.peek()) and tok[0] == "op" and tok[1] in "+-" and len(tok[1]) == 1:
            self.i += 1
            left = self._binary(tok[1], left, self.term())
        return left

    def term(self) -> Evaluator:
        left = self.unary()
        while (tok := self.peek()) and tok[0] == "op" and tok[1] in ("*", "/", "%"):
            self.i += 1
            left = self._binary(tok[1], left, self.unary())
        return left

    def unary(self) -> Evaluator:
        if self.accept("op", "-"):
            self._nest()
            inner = self.unary()
            self.depth -= 1
            neg = _BINARY["-"]
            return lambda v: neg(0, inner(v))
        fn = self.atom()
        while self.accept("op", "["):  # subscript: fields[5], reading["temp"]
            self._nest()
            index = self.or_()
            self.expect("op", "]")
            self.depth -= 1
            fn = (lambda base, idx: lambda v: _subscript(base(v), idx(v)))(fn, index)
        return fn

    def args(self, close: str) -> list[Evaluator]:
        out: list[Evaluator] = []
        if self.accept("op", close):
            return out
        while True:
            out.append(self.or_())
            if self.accept("op", close):
                return out
            self.expect("op", ",")

    def atom(self) -> Evaluator:
        tok = self.peek()
        if tok is None:
            self.fail("expression ends too early")
        kind, val = tok
        self.i += 1
        if kind in ("num", "str"):
            return lambda v: val
        if kind == "kw" and val in ("true", "false", "null"):
            const = {"true": True, "false": False, "null": None}[val]
            return lambda v: const
        if kind == "name":
            if self.accept("op", "("):
                return self.call(val)
            return self.name(val)
        if kind == "op" and val in ("(", "["):
            self._nest()
            if val == "(":
                inner = self.or_()
                self.expect("op", ")")
            else:
                items = self.args("]")
                inner = lambda v: [f(v) for f in items]  # noqa: E731
            self.depth -= 1
            return inner
        self.i -= 1
        self.fail(f"unexpected {val!r}")
        raise AssertionError  # unreachable

    def call(self, name: str) -> Evaluator:
        if name not in _FUNCS:
            self.fail(f"unknown function {name}(); known: {', '.join(sorted(_FUNCS))}")
        fn, lo, hi = _FUNCS[name]
        self._nest()
        args = self.args(")")
        self.depth -= 1
        if not lo <= len(args) <= hi:
            self.fail(f"{name}() takes {lo}..{hi} arguments, got {len(args)}")
        return lambda v: fn(*(a(v) for a in args))

    def name(self, dotted: str) -> Evaluator:
        parts = dotted.split(".")
        root, rest = parts[0], parts[1:]
        self.names.add(root)
        if not rest:
            return lambda v: v.get(root)

        def lookup(v: Mapping[str, Any]) -> Any:
            cur, path = v.get(root), root
            for p in rest:
                if cur is None:
                    return None  # not reported yet, or no such field: null
                if not isinstance(cur, dict):
                    # e.g. a bare number on a JSON sensor's topic: a fault to count, not a silent null
                    raise ExpressionError(
                        f"{path} is {type(cur).__name__} {as_text(cur)[:40]}, not an object with a field {p!r}"
                    )
                cur, path = cur.get(p), f"{path}.{p}"
            return cur

        return lookup


def compile_expression(text: str) -> Expression:
    """Parse ``text``; raise ExpressionError (with the column) if it is not valid."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("an expression must be a non-empty string")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters")
    parser = _Parser(text)
    fn = parser.parse()
    return Expression(text, frozenset(parser.names), fn)


def __getattr__(name: str) -> Any:  # ``Template`` moved to .template; old imports keep working
    if name == "Template":
        from .template import Template

        return Template
    raise AttributeError(name)
