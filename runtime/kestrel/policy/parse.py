"""Parse and compile a YAML policy (pure: text in, :class:`Policy` or :class:`PolicyError` out).

The YAML is composed into nodes (never constructed into Python objects by
PyYAML), so every problem is reported with the line and column of the node at
fault, and all problems are collected before raising. Anchors, aliases,
duplicate keys and unknown keys are errors. The format is in docs/policy.md.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from .._internal.yamlnode import ALIAS_MESSAGE, AliasError, YamlSyntaxError, compose
from ..errors import ConfigError

if TYPE_CHECKING:
    from .._internal.linregex import LinearRegex
from .canonical import MAX_INT, ArgsError, parse_domain
from .model import ArgConstraint, NetAllow, Policy, RateLimit, Rule, TimeWindow

__all__ = ["parse_policy", "PolicyError", "PolicyIssue", "MAX_POLICY_BYTES"]

MAX_POLICY_BYTES = 1 << 20
MAX_REGEX_LEN = 512
DEFAULT_NETWORK_ACTIONS = ("fetch_data",)
NO_NET = "no_external_network"
NO_NET_FORMS = (NO_NET, NO_NET + " unless explicitly permitted")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_DAYS = {d: i for i, d in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))}
_HHMM = re.compile(r"([01]\d|2[0-4]):([0-5]\d)")
_OFFSET = re.compile(r"([+-])([01]\d|2[0-3]):([0-5]\d)")
_DURATION = re.compile(r"(\d{1,9})\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_HOSTPORT = re.compile(r"[^:]+:\d+")
_TAG = "tag:yaml.org,2002:"


@dataclass(frozen=True)
class PolicyIssue:
    line: int  # 1-based
    column: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.message}"


class PolicyError(ConfigError):
    """A policy is malformed. ``issues`` lists every problem found, in file order."""

    def __init__(self, source: str, issues: list[PolicyIssue]) -> None:
        first = issues[0]
        more = "".join(f"\n  {source}:{i}" for i in issues[1:])
        super().__init__(
            first.message + more,
            path=source,
            line=first.line,
            column=first.column,
            hint="see docs/policy.md for the policy format; `kestrel policy check FILE` lists every error",
        )
        self.issues = issues


class _Ctx:
    def __init__(self) -> None:
        self.issues: list[PolicyIssue] = []

    def err(self, node: yaml.Node | None, msg: str) -> None:
        mark = node.start_mark if node is not None else None
        self.issues.append(PolicyIssue(mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, msg))

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"{what} must be a mapping")
            return None
        out: dict[str, yaml.Node] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            if not isinstance(key, str) or knode.tag != _TAG + "str":
                self.err(knode, f"{what}: keys must be strings")
            elif key in out:
                self.err(knode, f"{what}: duplicate key '{key}'")
            elif key not in allowed:
                self.err(knode, f"{what}: unknown key '{key}' (expected one of: {', '.join(allowed)})")
            else:
                out[key] = vnode
        return out

    def seq(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, f"{what} must be a list")
            return []
        return list(node.value)

    def scalar(self, node: yaml.Node, what: str, kinds: tuple[type, ...]) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.err(node, f"{what} must be a scalar value")
            return None
        try:
            value = _CONSTRUCTOR.construct_object(node)
        except yaml.YAMLError as exc:
            self.err(node, f"{what}: {exc}")
            return None
        except (ValueError, OverflowError):  # e.g. an integer of thousands of digits
            self.err(node, f"{what}: number out of range (integers are signed 64-bit)")
            return None
        if type(value) is float and not math.isfinite(value):
            self.err(node, f"{what} must be a finite number (.nan and .inf are not allowed)")
            return None
        if type(value) is int and not -MAX_INT - 1 <= value <= MAX_INT:
            self.err(node, f"{what}: integer out of range (signed 64-bit)")
            return None
        if isinstance(value, bool) and bool not in kinds:
            self.err(node, f"{what} must be {_kind_names(kinds)}, not a boolean")
            return None
        if not isinstance(value, kinds):
            self.err(node, f"{what} must be {_kind_names(kinds)}")
            return None
        return value

    def name(self, node: yaml.Node, what: str) -> str | None:
        v: str | None = self.scalar(node, what, (str,))
        if v is not None and not _NAME.fullmatch(v):
            self.err(node, f"{what} '{v}' is not a valid action name (letters, digits, _ . -)")
            return None
        return v


_CONSTRUCTOR = yaml.constructor.SafeConstructor()  # builds scalars only; we walk the nodes ourselves


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_policy(text: str | bytes, *, source: str = "<policy>") -> Policy:
    """Parse and compile a policy; raise :class:`PolicyError` listing every problem."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(source, [PolicyIssue(1, 1, f"policy is larger than {MAX_POLICY_BYTES} bytes")])
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(source, [PolicyIssue(1, 1, f"policy is not UTF-8 text ({exc.reason})")]) from None
    try:
        root = compose(decoded, source=source, label="YAML syntax")
    except AliasError as exc:
        raise PolicyError(
            source, [PolicyIssue(line, col, f"{ALIAS_MESSAGE} in a policy") for line, col in exc.positions]
        ) from None
    except YamlSyntaxError as exc:
        issue = PolicyIssue(exc.line or 1, exc.column or 1, f"YAML syntax: {exc.problem}")
        raise PolicyError(source, [issue]) from None
    ctx = _Ctx()
    if root is None:
        raise PolicyError(source, [PolicyIssue(1, 1, "policy is empty (it must be a mapping with 'actions')")])
    policy = _compile(ctx, root, hashlib.sha256(raw).hexdigest(), source)
    if ctx.issues:
        raise PolicyError(source, sorted(ctx.issues, key=lambda i: (i.line, i.column)))
    assert policy is not None
    return policy


def _compile(ctx: _Ctx, root: yaml.Node, digest: str, source: str) -> Policy | None:
    top = ctx.mapping(root, "policy", ("version", "actions", "restrictions", "network", "deny"))
    if top is None:
        return None
    if "version" in top:
        v = ctx.scalar(top["version"], "version", (int,))
        if v is not None and v != 1:
            ctx.err(top["version"], f"unsupported policy version {v} (this runtime reads version 1)")
    if "actions" not in top:
        ctx.err(root, "policy has no 'actions' list (default deny would refuse everything)")
    allow: dict[str, list[Rule]] = {}
    for i, node in enumerate(ctx.seq(top["actions"], "actions") if "actions" in top else ()):
        rule = _rule(ctx, node, f"actions[{i}]", deny=False)
        if rule is not None:
            allow.setdefault(rule.action, []).append(rule)
    deny = []
    for i, node in enumerate(ctx.seq(top["deny"], "deny") if "deny" in top else ()):
        rule = _rule(ctx, node, f"deny[{i}]", deny=True)
        if rule is not None:
            deny.append(rule)
    no_net, restriction_id = False, None
    for i, node in enumerate(ctx.seq(top["restrictions"], "restrictions") if "restrictions" in top else ()):
        text = ctx.scalar(node, f"restrictions[{i}]", (str,))
        if text is None:
            continue
        if " ".join(text.split()) in NO_NET_FORMS:
            no_net, restriction_id = True, restriction_id or f"restrictions[{i}]"
        else:
            ctx.err(node, f"unknown restriction '{text}' (known: '{NO_NET_FORMS[1]}')")
    net_allow, net_actions = _network(ctx, top.get("network"))
    net_actions |= {r.action for rules in allow.values() for r in rules if r.network}
    windows: dict[str, float] = {}
    for rules in allow.values():
        for r in rules:
            if r.rate is not None:
                windows[r.rate.key] = max(windows.get(r.rate.key, 0.0), r.rate.per)
    names = {r.action for r in deny} | set(allow)
    deny_for = {a: tuple(r for r in deny if r.action in (a, "*")) for a in names | {"*"}}
    return Policy(
        digest=digest,
        allow={k: tuple(v) for k, v in allow.items()},
        deny=tuple(deny),
        deny_for=deny_for,
        no_external_network=no_net,
        restriction_id=restriction_id,
        net_allow=net_allow,
        network_actions=frozenset(net_actions),
        rate_windows=windows,
        source=source,
    )


def _rule(ctx: _Ctx, node: yaml.Node, rid: str, *, deny: bool) -> Rule | None:
    if isinstance(node, yaml.ScalarNode):
        short = ctx.name(node, rid)
        return Rule(id=rid, action=short) if short else None
    keys = ("action", "args", "window", "reason") + (() if deny else ("rate", "network", "quorum"))
    m = ctx.mapping(node, rid, keys)
    if m is None:
        return None
    if "action" not in m:
        ctx.err(node, f"{rid} has no 'action'")
        return None
    anode = m["action"]
    if deny and isinstance(anode, yaml.ScalarNode) and anode.value == "*":
        name: str | None = "*"
    else:
        name = ctx.name(anode, f"{rid}.action")
    args = tuple(_args(ctx, m["args"], rid)) if "args" in m else ()
    window = _window(ctx, m["window"], f"{rid}.window") if "window" in m else None
    rate = _rate(ctx, m["rate"], f"{rid}.rate", name or "") if "rate" in m else None
    network = bool(ctx.scalar(m["network"], f"{rid}.network", (bool,))) if "network" in m else False
    reason = ctx.scalar(m["reason"], f"{rid}.reason", (str,)) if "reason" in m else None
    quorum = _quorum(ctx, m["quorum"], f"{rid}.quorum") if "quorum" in m else None
    if name is None:
        return None
    return Rule(id=rid, action=name, args=args, window=window, rate=rate, network=network, reason=reason, quorum=quorum)


def _quorum(ctx: _Ctx, node: yaml.Node, what: str) -> Any:
    from .quorum import parse_quorum  # only policies with a quorum rule load it

    return parse_quorum(ctx, node, what)


_CONSTRAINT_KEYS = ("type", "equals", "enum", "min", "max", "regex", "max_len", "domain", "optional")


def _args(ctx: _Ctx, node: yaml.Node, rid: str) -> list[ArgConstraint]:
    m = ctx.mapping(node, f"{rid}.args", tuple(_arg_names(node)))
    out = []
    for name, cnode in (m or {}).items():
        what = f"{rid}.args.{name}"
        c = ctx.mapping(cnode, what, _CONSTRAINT_KEYS)
        if c is None:
            continue
        kw: dict[str, Any] = {"name": name}
        if not c:
            ctx.err(cnode, f"{what} has no constraint (use e.g. type, enum, min, max, regex, domain)")
        if "type" in c:
            t = ctx.scalar(c["type"], f"{what}.type", (str,))
            if t is not None and t not in ("str", "int", "number", "bool"):
                ctx.err(c["type"], f"{what}.type must be one of str, int, number, bool")
            else:
                kw["type"] = t
        if "equals" in c:
            kw.update(equals=ctx.scalar(c["equals"], f"{what}.equals", (str, int, float, bool)), has_equals=True)
        if "enum" in c:
            vals = [ctx.scalar(v, f"{what}.enum", (str, int, float, bool)) for v in ctx.seq(c["enum"], f"{what}.enum")]
            if not vals:
                ctx.err(c["enum"], f"{what}.enum must list at least one value")
            kw["enum"] = frozenset(vals) | frozenset(str(v) for v in vals if not isinstance(v, (str, bool)))
        for key, attr in (("min", "minimum"), ("max", "maximum")):
            if key in c:
                kw[attr] = ctx.scalar(c[key], f"{what}.{key}", (int, float))
        if kw.get("minimum") is not None and kw.get("maximum") is not None and kw["minimum"] > kw["maximum"]:
            ctx.err(c["min"], f"{what}: min is greater than max")
        if "max_len" in c:
            ml = ctx.scalar(c["max_len"], f"{what}.max_len", (int,))
            if ml is not None and not 1 <= ml <= 65536:
                ctx.err(c["max_len"], f"{what}.max_len must be between 1 and 65536")
            elif ml is not None:
                kw["max_len"] = ml
        if "regex" in c:
            kw["regex"] = _regex(ctx, c["regex"], f"{what}.regex")
        if "domain" in c:
            kw["domains"] = _domains(ctx, c["domain"], f"{what}.domain")
        if "optional" in c:
            kw["optional"] = bool(ctx.scalar(c["optional"], f"{what}.optional", (bool,)))
        out.append(ArgConstraint(**kw))
    return out


def _arg_names(node: yaml.Node) -> list[str]:
    if not isinstance(node, yaml.MappingNode):
        return []
    return [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and _NAME.fullmatch(k.value)]


def _regex(ctx: _Ctx, node: yaml.Node, what: str) -> LinearRegex | None:
    """A pattern compiled to a DFA: matching is linear in the value's length, whatever the pattern."""
    from .._internal.linregex import RegexError, compile_linear

    pat = ctx.scalar(node, what, (str,))
    if pat is None:
        return None
    if len(pat) > MAX_REGEX_LEN:
        ctx.err(node, f"{what} is longer than {MAX_REGEX_LEN} characters")
        return None
    try:
        return compile_linear(pat, mode="full")
    except RegexError as exc:
        ctx.err(
            node,
            f"{what} is not a valid regular expression for a policy: {exc.reason} (pattern character "
            f"{exc.pos + 1}); policy patterns match in linear time: no backreferences, lookaround or "
            "inline flags (docs/policy.md)",
        )
        return None


def _domains(ctx: _Ctx, node: yaml.Node, what: str) -> frozenset[str] | None:
    nodes = ctx.seq(node, what) if isinstance(node, yaml.SequenceNode) else [node]
    out = set()
    for n in nodes:
        d = ctx.scalar(n, what, (str,))
        if d is None:
            continue
        try:
            out.add(parse_domain(d, where=f"{what} '{d}'"))  # the form canonical addresses have
        except ArgsError:
            ctx.err(n, f"{what} '{d}' is not a domain name")
    return frozenset(out) if out else None


def _window(ctx: _Ctx, node: yaml.Node, what: str) -> TimeWindow | None:
    m = ctx.mapping(node, what, ("days", "hours", "utc_offset", "tz"))
    if m is None:
        return None
    days = frozenset(range(7))
    if "days" in m:
        found = set()
        for n in ctx.seq(m["days"], f"{what}.days"):
            d = ctx.scalar(n, f"{what}.days", (str,))
            if d is not None and d.lower()[:3] not in _DAYS:
                ctx.err(n, f"{what}.days: unknown day '{d}' (use mon, tue, wed, thu, fri, sat, sun)")
            elif d is not None:
                found.add(_DAYS[d.lower()[:3]])
        days = frozenset(found)
    start, end = 0, 1440
    if "hours" in m:
        h = ctx.scalar(m["hours"], f"{what}.hours", (str,))
        parts = [p.strip() for p in h.split("-")] if h else []
        ms = [_HHMM.fullmatch(p) for p in parts]
        if h is not None and (len(parts) != 2 or not all(ms)):
            ctx.err(m["hours"], f"{what}.hours must look like '08:00-18:00'")
        elif h is not None:
            start, end = (int(x.group(1)) * 60 + int(x.group(2)) for x in ms)  # type: ignore[union-attr]
            if start > 1440 or end > 1440 or start == end:
                ctx.err(m["hours"], f"{what}.hours is not a valid range")
    offset = 0
    if "utc_offset" in m:
        o = ctx.scalar(m["utc_offset"], f"{what}.utc_offset", (str,))
        mo = _OFFSET.fullmatch(o) if o is not None else None
        if o is not None and mo is None:
            ctx.err(m["utc_offset"], f"{what}.utc_offset must look like '+01:00' or '-05:30'")
        elif mo is not None:
            offset = (1 if mo.group(1) == "+" else -1) * (int(mo.group(2)) * 60 + int(mo.group(3)))
    tz = None
    if "tz" in m:
        tz = ctx.scalar(m["tz"], f"{what}.tz", (str,))
        if "utc_offset" in m:
            ctx.err(m["tz"], f"{what}: give tz or utc_offset, not both")
        elif tz is not None and not _known_zone(tz):
            ctx.err(
                m["tz"],
                f"{what}.tz: unknown time zone {tz!r} (an IANA name such as 'Europe/Berlin'; "
                "this machine's time-zone database has no such zone)",
            )
    return TimeWindow(days=days, start_min=start, end_min=end, offset_min=offset, tz=tz)


def _known_zone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # ValueError: a path-like or malformed key
        return False
    return True


def _duration(ctx: _Ctx, node: yaml.Node, what: str) -> float | None:
    v = ctx.scalar(node, what, (int, str))
    if isinstance(v, int):
        secs = v
    elif isinstance(v, str) and (mm := _DURATION.fullmatch(v.strip())):
        secs = int(mm.group(1)) * _UNITS[mm.group(2)]
    else:
        if v is not None:
            ctx.err(node, f"{what} must be seconds or a duration like '30s', '5m', '1h', '1d'")
        return None
    if not 1 <= secs <= 366 * 86400:
        ctx.err(node, f"{what} must be between 1 second and 366 days")
        return None
    return float(secs)


def _rate(ctx: _Ctx, node: yaml.Node, what: str, action: str) -> RateLimit | None:
    m = ctx.mapping(node, what, ("count", "per", "key"))
    if m is None:
        return None
    count = ctx.scalar(m["count"], f"{what}.count", (int,)) if "count" in m else None
    if "count" not in m or "per" not in m:
        ctx.err(node, f"{what} needs both 'count' and 'per'")
    if count is not None and not 1 <= count <= 100_000:
        ctx.err(m["count"], f"{what}.count must be between 1 and 100000")
    per = _duration(ctx, m["per"], f"{what}.per") if "per" in m else None
    key = ctx.name(m["key"], f"{what}.key") if "key" in m else action
    if count is None or per is None or key is None:
        return None
    return RateLimit(key=key, count=count, per=per)


def _network(ctx: _Ctx, node: yaml.Node | None) -> tuple[tuple[NetAllow, ...], set[str]]:
    actions = set(DEFAULT_NETWORK_ACTIONS)
    if node is None:
        return (), actions
    m = ctx.mapping(node, "network", ("allow", "actions")) or {}
    for n in ctx.seq(m["actions"], "network.actions") if "actions" in m else ():
        name = ctx.name(n, "network.actions")
        if name:
            actions.add(name)
    out = []
    for i, n in enumerate(ctx.seq(m["allow"], "network.allow") if "allow" in m else ()):
        what = f"network.allow[{i}]"
        e = ctx.mapping(n, what, ("host", "port", "actions"))
        if e is None:
            continue
        if "host" not in e:
            ctx.err(n, f"{what} needs a 'host'")
            continue
        host = ctx.scalar(e["host"], f"{what}.host", (str,))
        port = ctx.scalar(e["port"], f"{what}.port", (int,)) if "port" in e else None
        if port is not None and not 1 <= port <= 65535:
            ctx.err(e["port"], f"{what}.port must be between 1 and 65535")
        if host is not None and (not host or any(c in host for c in "/@ ") or _HOSTPORT.fullmatch(host)):
            ctx.err(e["host"], f"{what}.host must be a host name or address, not a URL")
            host = None
        acts = None
        if "actions" in e:
            names = (ctx.name(x, f"{what}.actions") for x in ctx.seq(e["actions"], f"{what}.actions"))
            acts = frozenset(a for a in names if a)
        if host is not None:
            out.append(NetAllow(host=host.lower(), port=port, actions=acts))
    return tuple(out), actions
