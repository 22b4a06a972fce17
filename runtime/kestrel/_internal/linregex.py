"""Regular expressions that match in linear time: compiled once to a DFA, never backtracking.

Policies, planner rules and tool schemas hold regular expressions written by one party and
matched against text written by another. Python's ``re`` backtracks, so ``(a+)+`` against
34 ``a``s and a ``!`` takes minutes; this module compiles a pattern to a deterministic
automaton when the pattern is loaded (bounded in size, refused with a reason and a
position when too big) and then matches in one table step per character, whatever the
pattern and the text.

The syntax is the common subset of Python's: literals and escapes (``\\.``, ``\\n``,
``\\t``, ``\\xhh``, ``\\uhhhh``), ``.`` (any character but a newline), classes
``[a-z_]``/``[^...]``, ``\\d \\w \\s`` and their negations (ASCII only, as with
``re.ASCII``), groups ``(...)``, ``(?:...)``, ``(?P<name>...)``, alternation ``|``,
quantifiers ``* + ? {n} {n,} {,m} {n,m}`` (a lazy ``?`` suffix is accepted: it does not
change what matches), and ``^``/``$`` (``\\A``/``\\Z``) at the very start and end.
Refused with a reason: backreferences, lookaround, atomic groups, inline flags, word
boundaries, anchors elsewhere, repetition counts above :data:`MAX_COUNT`.

Why not a library: google-re2 would do (and is faster), but it is a C++ extension with
abseil that a Pi Zero image would carry for a few patterns per policy; docs/decisions.md.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

__all__ = ["RegexError", "LinearRegex", "compile_linear", "MAX_COUNT", "MAX_DFA_STATES", "MAX_NFA_STATES"]

MAX_PATTERN = 4096
MAX_COUNT = 1000  # largest {n,m}
MAX_NFA_STATES = 20_000
MAX_DFA_STATES = 2_000
_TOP = 0x10FFFF

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, inclusive code point ranges


class RegexError(ValueError):
    """The pattern is malformed, uses a construct that cannot match in linear time, or is too big.

    ``pos`` is the 0-based offset in the pattern the problem was found at.
    """

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(f"{message} (at position {pos})")
        self.reason = message
        self.pos = pos


def _norm(ranges: list[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _negate(ranges: Ranges) -> Ranges:
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _TOP:
        out.append((nxt, _TOP))
    return tuple(out)


def _fold(ranges: Ranges) -> Ranges:
    """Add the other case of every ASCII letter and of other characters with one simple case pair."""
    extra: list[tuple[int, int]] = []
    for lo, hi in ranges:
        a, b = max(lo, 65), min(hi, 90)
        if a <= b:
            extra.append((a + 32, b + 32))
        a, b = max(lo, 97), min(hi, 122)
        if a <= b:
            extra.append((a - 32, b - 32))
        if hi >= 128:
            for o in range(max(lo, 128), min(hi, 0x24FF) + 1):  # Latin, Greek, Cyrillic, ... (bounded)
                for other in (chr(o).lower(), chr(o).upper()):
                    if len(other) == 1 and other != chr(o):
                        extra.append((ord(other), ord(other)))
    return _norm([*ranges, *extra])


DIGIT: Ranges = ((48, 57),)
WORD: Ranges = ((48, 57), (65, 90), (95, 95), (97, 122))
SPACE: Ranges = ((9, 13), (32, 32))
DOT: Ranges = ((0, 9), (11, _TOP))
ANY: Ranges = ((0, _TOP),)
_CLASSES = {"d": DIGIT, "D": _negate(DIGIT), "w": WORD, "W": _negate(WORD), "s": SPACE, "S": _negate(SPACE)}
_CONTROL = {"n": 10, "t": 9, "r": 13, "f": 12, "v": 11, "a": 7, "0": 0}


@dataclass(frozen=True)
class _Set:
    ranges: Ranges


@dataclass(frozen=True)
class _Cat:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Alt:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Rep:
    item: _Node
    lo: int
    hi: int | None  # None: unbounded


_Node = _Set | _Cat | _Alt | _Rep
_EMPTY = _Cat(())


class _Parser:
    def __init__(self, pattern: str, *, ignore_case: bool) -> None:
        self.p = pattern
        self.i = 0
        self.icase = ignore_case
        self.names: set[str] = set()

    def fail(self, message: str, pos: int | None = None) -> RegexError:
        return RegexError(message, self.i if pos is None else pos)

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def parse(self) -> tuple[_Node, bool, bool]:
        """(tree, anchored at the start, anchored at the end)."""
        start = end = False
        if self.p.startswith("^") or self.p.startswith("\\A"):
            start, self.i = True, (1 if self.p[0] == "^" else 2)
        body_end = len(self.p)
        if self.p.endswith("\\Z") and not self.p.endswith("\\\\Z"):
            end, body_end = True, len(self.p) - 2
        elif self.p.endswith("$") and not _escaped(self.p, len(self.p) - 1):
            end, body_end = True, len(self.p) - 1
        self.p = self.p[:body_end]
        node = self.alt()
        if self.i < len(self.p):
            raise self.fail("unbalanced ')'")
        return node, start, end

    def alt(self) -> _Node:
        items = [self.cat()]
        while self.peek() == "|":
            self.i += 1
            items.append(self.cat())
        return items[0] if len(items) == 1 else _Alt(tuple(items))

    def cat(self) -> _Node:
        items: list[_Node] = []
        while self.peek() and self.peek() not in "|)":
            items.append(self.repeat())
        return items[0] if len(items) == 1 else _Cat(tuple(items))

    def repeat(self) -> _Node:
        at = self.i
        node = self.atom()
        quantified = False
        while True:
            c = self.peek()
            if c in ("*", "+", "?"):
                self.i += 1
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            elif c == "{" and (bounds := self.counts()) is not None:
                lo, hi = bounds
            else:
                return node
            if self.peek() == "?":
                self.i += 1  # lazy: same language
            elif self.peek() == "+":
                raise self.fail("possessive quantifiers are not supported")
            if quantified:
                raise self.fail("a quantifier cannot directly follow another (use a group)", at)
            node, quantified = _Rep(node, lo, hi), True

    def counts(self) -> tuple[int, int | None] | None:
        close = self.p.find("}", self.i)
        inner = self.p[self.i + 1 : close] if close > 0 else ""
        lo_s, comma, hi_s = inner.partition(",")
        if (
            close < 0
            or not (lo_s.isdigit() or (comma and not lo_s))
            or (hi_s and not hi_s.isdigit())
            or not (lo_s.isascii() and hi_s.isascii())
        ):
            return None  # not a quantifier: '{' is a literal, as in Python
        lo = int(lo_s) if lo_s else 0
        hi = None if (comma and not hi_s) else int(hi_s) if hi_s else lo
        if lo > MAX_COUNT or (hi is not None and (hi > MAX_COUNT or hi < lo)):
            raise self.fail(f"repetition counts must be 0..{MAX_COUNT} with min <= max")
        self.i = close + 1
        return lo, hi

    def atom(self) -> _Node:
        c = self.peek()
        at = self.i
        if c == "(":
            self.i += 1
            if self.p.startswith("?", self.i):
                if self.p.startswith("?:", self.i):
                    self.i += 2
                elif self.p.startswith("?P<", self.i):
                    close = self.p.find(">", self.i)
                    name = self.p[self.i + 3 : close] if close > 0 else ""
                    if not name.isidentifier():
                        raise self.fail("bad group name")
                    if name in self.names:
                        raise self.fail(f"group name {name!r} is used twice")
                    self.names.add(name)
                    self.i = close + 1
                elif self.p[self.i : self.i + 3] in ("?=", "?!", "?<=", "?<!") or self.p[self.i : self.i + 2] in (
                    "?=",
                    "?!",
                ):
                    raise self.fail("lookahead and lookbehind are not supported (they cannot match in linear time)")
                elif self.p.startswith("?>", self.i):
                    raise self.fail("atomic groups are not supported")
                elif self.p.startswith("?P=", self.i) or self.p.startswith("?(", self.i):
                    raise self.fail("backreferences are not supported (they cannot match in linear time)")
                else:
                    raise self.fail("inline flags and other (?...) groups are not supported")
            node = self.alt()
            if self.peek() != ")":
                raise self.fail("missing ')'", at)
            self.i += 1
            return node
        if c == "[":
            return _Set(self.klass())
        if c == ".":
            self.i += 1
            return _Set(DOT)
        if c in ("*", "+", "?"):
            raise self.fail("nothing to repeat")
        if c in ("^", "$"):
            raise self.fail("anchors (^, $) are only allowed at the very start and end of a pattern")
        if c == "\\":
            return _Set(self.escape(in_class=False))
        self.i += 1
        return _Set(self.case(((ord(c), ord(c)),)))

    def case(self, ranges: Ranges) -> Ranges:
        return _fold(ranges) if self.icase else ranges

    def escape(self, *, in_class: bool) -> Ranges:
        at = self.i
        self.i += 1
        c = self.peek()
        if not c:
            raise self.fail("pattern ends with a backslash", at)
        self.i += 1
        if c in _CLASSES:
            return _CLASSES[c]
        if c in _CONTROL:
            return ((_CONTROL[c], _CONTROL[c]),)
        if c in ("x", "u", "U"):
            n = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.p[self.i : self.i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits) or int(digits, 16) > _TOP:
                raise self.fail(f"\\{c} needs {n} hex digits", at)
            self.i += n
            o = int(digits, 16)
            return self.case(((o, o),))
        if c.isdigit():
            raise self.fail("backreferences are not supported (they cannot match in linear time)", at)
        if c in "bBAZ" and not in_class:
            raise self.fail(f"\\{c} is not supported here (anchors only at the start or end)", at)
        if c.isascii() and c.isalpha():
            raise self.fail(f"unknown escape \\{c}", at)
        return self.case(((ord(c), ord(c)),))

    def klass(self) -> Ranges:
        at = self.i
        self.i += 1
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.peek()
            if not c:
                raise self.fail("unterminated character class", at)
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "[" and self.p.startswith("[:", self.i):
                raise self.fail("POSIX classes ([:alpha:]) are not supported; use \\w, \\d or ranges")
            lo_set = self.escape(in_class=True) if c == "\\" else None
            if lo_set is None:
                self.i += 1
                lo_set = ((ord(c), ord(c)),)
            if (
                self.peek() == "-"
                and self.p[self.i + 1 : self.i + 2] not in ("]", "")
                and len(lo_set) == 1
                and lo_set[0][0] == lo_set[0][1]
            ):
                self.i += 1
                h = self.peek()
                hi_set = self.escape(in_class=True) if h == "\\" else None
                if hi_set is None:
                    self.i += 1
                    hi_set = ((ord(h), ord(h)),)
                if len(hi_set) != 1 or hi_set[0][0] != hi_set[0][1] or hi_set[0][0] < lo_set[0][0]:
                    raise self.fail("bad character range", at)
                ranges.append((lo_set[0][0], hi_set[0][0]))
            else:
                ranges.extend(lo_set)
        out = self.case(_norm(ranges))
        return _negate(out) if negate else out


def _escaped(p: str, i: int) -> bool:
    n = 0
    while i - 1 - n >= 0 and p[i - 1 - n] == "\\":
        n += 1
    return n % 2 == 1


class _Nfa:
    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[Ranges, int]]] = []

    def new(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:
            raise RegexError(f"pattern is too big (more than {MAX_NFA_STATES} automaton states)", 0)
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, node: _Node) -> tuple[int, int]:
        if isinstance(node, _Set):
            s, e = self.new(), self.new()
            self.edges[s].append((node.ranges, e))
            return s, e
        if isinstance(node, _Cat):
            s = e = self.new()
            for item in node.items:
                a, b = self.build(item)
                self.eps[e].append(a)
                e = b
            return s, e
        if isinstance(node, _Alt):
            s, e = self.new(), self.new()
            for item in node.items:
                a, b = self.build(item)
                self.eps[s].append(a)
                self.eps[b].append(e)
            return s, e
        s = e = self.new()
        for _ in range(node.lo):
            a, b = self.build(node.item)
            self.eps[e].append(a)
            e = b
        if node.hi is None:
            a, b = self.build(node.item)
            loop = self.new()
            self.eps[e].append(loop)
            self.eps[loop] += [a]
            self.eps[b].append(loop)
            e = loop
        else:
            tail = self.new()
            for _ in range(node.hi - node.lo):
                a, b = self.build(node.item)
                self.eps[e] += [a, tail]
                e = b
            self.eps[e].append(tail)
            e = tail
        return s, e


class LinearRegex:
    """A compiled pattern: :meth:`fullmatch` and :meth:`search` answer a bool in O(len(text))."""

    __slots__ = ("pattern", "_points", "_ascii", "_trans", "_accept", "_mode")

    def __init__(self, pattern: str, points: list[int], trans: list[list[int]], accept: list[bool], mode: str) -> None:
        self.pattern = pattern
        self._points = points
        self._ascii = [bisect_right(points, o) - 1 for o in range(128)]
        self._trans = trans
        self._accept = accept
        self._mode = mode

    @property
    def states(self) -> int:
        return len(self._trans)

    def _run(self, text: str) -> bool:
        trans, ascii_, points = self._trans, self._ascii, self._points
        state = 0
        for ch in text:
            o = ord(ch)
            state = trans[state][ascii_[o] if o < 128 else bisect_right(points, o) - 1]
            if state < 0:
                return False
        return self._accept[state]

    def fullmatch(self, text: str) -> bool:
        """Whether the whole of ``text`` matches (for a pattern compiled with ``mode="full"``)."""
        if self._mode != "full":
            raise ValueError("compiled for search(): use search()")
        return self._run(text)

    def search(self, text: str) -> bool:
        """Whether the pattern matches somewhere in ``text`` (for a pattern compiled with ``mode="search"``)."""
        if self._mode != "search":
            raise ValueError("compiled for fullmatch(): use fullmatch()")
        return self._run(text)

    def __repr__(self) -> str:
        return f"LinearRegex({self.pattern!r}, {self._mode}, {self.states} states)"


def compile_linear(
    pattern: str, *, mode: str = "full", ignore_case: bool = False, max_states: int = MAX_DFA_STATES
) -> LinearRegex:
    """Compile ``pattern`` for ``fullmatch`` (``mode="full"``) or ``search`` (``mode="search"``).

    Raises :class:`RegexError` for a malformed or unsupported pattern, or one whose
    automaton would need more than ``max_states`` states.
    """
    if mode not in ("full", "search"):
        raise ValueError(mode)
    if len(pattern) > MAX_PATTERN:
        raise RegexError(f"pattern is longer than {MAX_PATTERN} characters", MAX_PATTERN)
    node, start, end = _Parser(pattern, ignore_case=ignore_case).parse()
    if mode == "search":
        node = _Cat(
            (
                (_EMPTY if start else _Rep(_Set(ANY), 0, None)),
                node,
                (_Rep(_Set(((10, 10),)), 0, 1) if end else _Rep(_Set(ANY), 0, None)),
            )
        )
    nfa = _Nfa()
    s, e = nfa.build(node)
    return _determinise(pattern, nfa, s, e, mode, max_states)


def _determinise(pattern: str, nfa: _Nfa, start: int, final: int, mode: str, max_states: int) -> LinearRegex:
    sets = {r for edges in nfa.edges for r, _ in edges}
    points = sorted({0} | {lo for r in sets for lo, _ in r} | {hi + 1 for r in sets for _, hi in r if hi < _TOP})
    width = len(points)
    classes_of = {
        r: [c for lo, hi in r for c in range(bisect_right(points, lo) - 1, bisect_right(points, hi))] for r in sets
    }

    def closure(states: set[int]) -> frozenset[int]:
        stack, seen = list(states), set(states)
        while stack:
            for t in nfa.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)

    first = closure({start})
    index = {first: 0}
    order = [first]
    trans: list[list[int]] = []
    for dstate in order:  # grows while iterating
        moves: dict[int, set[int]] = {}
        for n in dstate:
            for r, t in nfa.edges[n]:
                for c in classes_of[r]:
                    moves.setdefault(c, set()).add(t)
        row = [-1] * width
        for c, targets in moves.items():
            nxt = closure(targets)
            j = index.get(nxt)
            if j is None:
                if len(order) >= max_states:
                    raise RegexError(f"pattern is too complex (its automaton needs more than {max_states} states)", 0)
                j = index[nxt] = len(order)
                order.append(nxt)
            row[c] = j
        trans.append(row)
    return LinearRegex(pattern, points, trans, [final in d for d in order], mode)
