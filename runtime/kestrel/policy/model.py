"""Policy values: the compiled policy, requests, decisions and rate-limit state.

Everything here is a frozen value. A :class:`Policy` is produced only by
:func:`kestrel.policy.parse_policy`; its rules are already compiled (regexes
built, names indexed) so that :func:`kestrel.policy.evaluate` does no parsing.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .canonical.address import parse_address
from .canonical.errors import ArgsError

if TYPE_CHECKING:  # compiled by the parser only when a policy has a regex
    from .._internal.linregex import LinearRegex

__all__ = [
    "ActionRequest",
    "ArgConstraint",
    "Decision",
    "NetAllow",
    "Policy",
    "PolicyState",
    "RateLimit",
    "Rule",
    "TimeWindow",
    "args_digest",
]


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
# The same encoding, called directly: ``_CANONICAL.encode`` builds this C encoder on every call.
# No circular-reference markers: a cycle ends in RecursionError, which falls back like the
# "Circular reference detected" ValueError did (same digest), and the encoder keeps no state.
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # the C accelerator; None on pure-Python builds
_ENCODE = (
    _C_ENCODER(None, repr, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    if _C_ENCODER is not None
    else None
)
_sha256 = hashlib.sha256


def args_digest(args: Mapping[str, Any]) -> str:
    """Hex sha256 of the canonical JSON of ``args`` (sorted keys, compact, UTF-8)."""
    try:
        text = "".join(_ENCODE(args, 0)) if _ENCODE is not None else _CANONICAL.encode(args)
    except (TypeError, ValueError, RecursionError):  # non-string keys, cycles: digest a stable repr
        text = _CANONICAL.encode(_plain(args, 0))
    return _sha256(text.encode("utf-8")).hexdigest()


def _plain(value: Any, depth: int) -> Any:
    if depth > 32:
        return "<too deep>"
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


@dataclass(frozen=True, slots=True)
class ActionRequest:
    action: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    action: str
    rule: str  # "default-deny", "actions[2]", "deny[0]", "restrictions[0]"
    reason: str
    policy_digest: str
    args_digest: str
    rate_key: str | None = None  # set on an allow that consumed a rate-limit slot
    # the canonical arguments that were evaluated, and that an allowed action executes
    args: Mapping[str, Any] | None = field(default=None, compare=False)


_new_object = object.__new__
_set_dict = Decision.__dict__["__dict__"].__set__


def make_decision(
    allowed: bool,
    action: str,
    rule: str,
    reason: str,
    policy_digest: str,
    args_digest: str,
    rate_key: str | None = None,
    args: Mapping[str, Any] | None = None,
) -> Decision:
    """Same as ``Decision(...)``, at a third of the cost: the frozen dataclass's ``__init__``
    calls ``object.__setattr__`` once per field; this sets the instance dict in one step."""
    d = _new_object(Decision)
    _set_dict(
        d,
        {
            "allowed": allowed,
            "action": action,
            "rule": rule,
            "reason": reason,
            "policy_digest": policy_digest,
            "args_digest": args_digest,
            "rate_key": rate_key,
            "args": args,
        },
    )
    return d


Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class ArgConstraint:
    """Constraint on one argument. A list value must satisfy it element by element.

    At construction the constraint is compiled into ``check_one``, one function of a
    single value that runs only the checks named, in the documented order.
    """

    name: str
    optional: bool = False
    type: str | None = None  # "str" | "int" | "number" | "bool"
    equals: Any = None
    has_equals: bool = False
    enum: frozenset[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    regex: LinearRegex | None = None  # matched with fullmatch, in linear time
    max_len: int = 256
    domains: frozenset[str] | None = None  # e-mail domains (exact, lower-case)
    check_one: Check = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "check_one", _compile(self))

    def check(self, value: Any) -> str | None:
        """Return None if ``value`` satisfies the constraint, else the reason."""
        one = self.check_one
        if not isinstance(value, (list, tuple)):
            return one(value)
        if not value:
            return f"argument '{self.name}' is empty"
        for item in value:
            why = one(item)
            if why:
                return why
        return None

    def matches_any(self, value: Any) -> bool:
        """The deny-rule sense: ``value`` passes, or ANY element of a list value does."""
        if not isinstance(value, (list, tuple)):
            return self.check_one(value) is None
        return any(self.check(item) is None for item in value)


def _compile(c: ArgConstraint) -> Check:
    """One closure for the constraint; unused checks cost a test of a constant each."""
    n, kind, equals, has_equals, enum = c.name, c.type, c.equals, c.has_equals, c.enum
    lo, hi, regex, max_len, domains = c.minimum, c.maximum, c.regex, c.max_len, c.domains
    if kind is not None and kind not in _TYPE_CHECKS:
        raise ValueError(f"argument '{n}': unknown type {kind!r} (str, int, number, bool)")
    type_ok = _TYPE_CHECKS[kind] if kind is not None else None
    ranged, stringy = lo is not None or hi is not None, regex is not None or domains is not None
    fullmatch = regex.fullmatch if regex is not None else None
    why_type = f"argument '{n}' must be of type {kind}"
    why_equals = f"argument '{n}' must equal {equals!r}"
    why_enum = f"argument '{n}' is not one of the permitted values"
    why_number = f"argument '{n}' must be a number"
    why_below = f"argument '{n}' is below {lo if lo is not None else 0:g}"
    why_above = f"argument '{n}' is above {hi if hi is not None else 0:g}"
    why_string = f"argument '{n}' must be a string of at most {max_len} characters"
    why_pattern = f"argument '{n}' does not match the permitted pattern"
    why_domain = f"argument '{n}' is not an address in a permitted domain"

    def check_one(v: Any) -> str | None:
        if type_ok is not None and not type_ok(v):
            return why_type
        if has_equals and v != equals:
            return why_equals
        if enum is not None:
            if isinstance(v, (dict, list)):
                return why_enum
            try:
                if v not in enum:
                    return why_enum
            except TypeError:  # unhashable (a set): not a permitted value
                return why_enum
        if ranged:
            t = type(v)
            num = v if t is int or t is float else _as_number(v)
            if num is None:
                return why_number
            if num - num != 0:  # NaN or an infinity: no range contains it (fail closed)
                return why_number
            if lo is not None and not num >= lo:
                return why_below
            if hi is not None and not num <= hi:
                return why_above
        if stringy:
            if not isinstance(v, str) or len(v) > max_len:
                return why_string
            if fullmatch is not None and not fullmatch(v):
                return why_pattern
            if domains is not None:
                domain = _address_domain(v)
                if domain is None or domain not in domains:
                    return why_domain
        return None

    return check_one


def _address_domain(v: str) -> str | None:
    """The canonical domain of ``v`` if it is exactly one bare address (the form send_email sends to)."""
    try:
        return parse_address(v).domain
    except ArgsError:
        return None


def _as_number(v: Any) -> float | None:
    """The finite number ``v`` is or spells; None for anything else (NaN and infinities included)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v if v - v == 0 else None
    if isinstance(v, str) and len(v) <= 64:
        try:
            num = float(v) if any(c in v for c in ".eE") else int(v, 10)
        except ValueError:
            return None
        return num if num - num == 0 else None
    return None


_TYPE_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, str) and v.lstrip("-").isdigit() and len(v) <= 32)
    ),
    "number": lambda v: _as_number(v) is not None,
    "bool": lambda v: isinstance(v, bool) or v in ("true", "false"),
}


@dataclass(frozen=True)
class RateLimit:
    key: str  # state key; defaults to the action name so limits survive policy updates
    count: int
    per: float  # seconds (sliding window)


@functools.lru_cache(maxsize=256)
def tz_offset_min(tz: str, minute: int) -> int:
    """The UTC offset of IANA zone ``tz`` (minutes) at Unix minute ``minute``. Offsets change on
    whole minutes, so one computation per zone and minute serves every decision in it."""
    import datetime
    import zoneinfo

    when = datetime.datetime.fromtimestamp(minute * 60, datetime.UTC)
    offset = zoneinfo.ZoneInfo(tz).utcoffset(when)
    return int(offset.total_seconds() // 60) if offset is not None else 0


@dataclass(frozen=True)
class TimeWindow:
    """Permitted days and minutes of day, local to a fixed UTC offset or an IANA zone (``tz``)."""

    days: frozenset[int]  # 0 = Monday ... 6 = Sunday
    start_min: int  # minute of day, inclusive
    end_min: int  # minute of day, exclusive; < start_min wraps past midnight
    offset_min: int = 0
    tz: str | None = None  # IANA zone: the offset follows daylight saving time (offset_min unused)

    def contains(self, now: float) -> bool:
        t = int(now // 60)
        t += self.offset_min if self.tz is None else tz_offset_min(self.tz, t)  # minutes since epoch, local
        day = ((t // 1440) + 3) % 7  # 1970-01-01 was a Thursday (3)
        minute = t % 1440
        if self.start_min <= self.end_min:
            return day in self.days and self.start_min <= minute < self.end_min
        if minute >= self.start_min:
            return day in self.days
        return minute < self.end_min and (day - 1) % 7 in self.days


@dataclass(frozen=True)
class NetAllow:
    host: str  # exact host, or "*.example.com" for any sub-domain
    port: int | None  # None: any port
    actions: frozenset[str] | None = None  # None: any action

    def permits(self, action: str, host: str, port: int | None) -> bool:
        if self.actions is not None and action not in self.actions:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


@dataclass(frozen=True)
class Rule:
    """One allow (``actions[i]``) or deny (``deny[i]``) rule."""

    id: str
    action: str  # "*" matches any action (deny rules only)
    args: tuple[ArgConstraint, ...] = ()
    window: TimeWindow | None = None
    rate: RateLimit | None = None
    network: bool = False  # the action needs a network destination
    reason: str | None = None
    quorum: Any = None  # kestrel.policy.quorum.Quorum: the group decides (allow rules only)


@dataclass(frozen=True)
class Policy:
    """A parsed, compiled policy. ``digest`` is the sha256 of its exact source bytes."""

    digest: str
    allow: Mapping[str, tuple[Rule, ...]]  # action -> its allow rules, in file order
    deny: tuple[Rule, ...]
    deny_for: Mapping[str, tuple[Rule, ...]]  # action -> deny rules naming it or "*", in file order
    no_external_network: bool
    restriction_id: str | None  # "restrictions[i]" of no_external_network
    net_allow: tuple[NetAllow, ...]
    network_actions: frozenset[str]  # actions that always need a destination
    rate_windows: Mapping[str, float]  # rate key -> longest window (seconds)
    source: str = "<policy>"
    # action -> its evaluation plan (kestrel.policy.evaluate.ActionPlan); "*" for any other action
    plans: Mapping[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from .evaluate import compile_plans  # evaluate imports this module

        object.__setattr__(self, "plans", compile_plans(self))

    def deny_rules(self, action: str) -> tuple[Rule, ...]:
        found = self.deny_for.get(action)
        return found if found is not None else self.deny_for.get("*", ())


@dataclass(frozen=True)
class PolicyState:
    """Rate-limit history: key -> sorted tuple of allow times (seconds)."""

    hits: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    saturated_until: float = 0.0  # fail-closed: every rate limit counts as reached before this

    def count(self, key: str, since: float) -> int:
        times = self.hits.get(key, ())
        return len(times) - bisect.bisect_right(times, since)

    def record(self, decision: Decision, now: float, *, horizon: Mapping[str, float]) -> PolicyState:
        """The state after ``decision`` at ``now``; drops entries older than each key's window."""
        if not decision.allowed or decision.rate_key is None:
            return self
        key = decision.rate_key
        keep = horizon.get(key, 0.0)
        times = tuple(t for t in self.hits.get(key, ()) if t > now - keep) + (now,)
        return PolicyState({**self.hits, key: times}, self.saturated_until)
