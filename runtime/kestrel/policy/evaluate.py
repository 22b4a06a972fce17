"""Pure, deterministic policy evaluation: same policy + request + state + now = same decision.

Order (docs/policy.md): deny rules first (a match denies, whatever allows);
then the action must be named by an allow rule (else ``default-deny``); then
the network restriction; then the action's allow rules in file order, the
first whose arguments, time window and rate limit all pass allows.

A :class:`Policy` compiles itself, once, into one :class:`ActionPlan` per action
it names (:func:`compile_plans`): only the deny rules that can match the action
and its own allow rules, with argument checks as prebuilt functions, reason
texts formatted, and the network allow-list entries that apply to the action
indexed by host. :func:`evaluate` then walks that plan; per decision it builds
little more than the args digest and the :class:`Decision`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .canonical.errors import ArgsError
from .canonical.url import parse_host, parse_url
from .model import ActionRequest, Check, Decision, Policy, PolicyState, Rule, TimeWindow, args_digest, make_decision

__all__ = [
    "evaluate",
    "destination",
    "compile_plans",
    "ActionPlan",
    "NO_POLICY_DIGEST",
    "POLICY_TIMEOUT",
    "INVALID_ARGS",
]

NO_POLICY_DIGEST = "0" * 64
POLICY_TIMEOUT = "policy_timeout"  # the rule (and reason code) of a decision that ran out of time
INVALID_ARGS = "invalid-args"  # the rule of a request whose arguments have no canonical form
_DEFAULT_PORTS = {
    "http": 80,
    "https": 443,
    "ws": 80,
    "wss": 443,
    "smtp": 25,
    "smtps": 465,
    "submission": 587,
    "mqtt": 1883,
    "mqtts": 8883,
}
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "::1"})
_OUTSIDE_WINDOW = "outside the permitted time window"


class DenyStep(NamedTuple):
    order: int  # position in the policy's deny list
    id: str
    reason: str
    window: TimeWindow | None
    conds: tuple[tuple[str, Check, Callable[[Any], bool]], ...]  # (argument, check_one, matches_any)


class AllowStep(NamedTuple):
    id: str
    reason: str
    window: TimeWindow | None
    conds: tuple[tuple[str, bool, Check, Check, str], ...]  # (argument, optional, check_one, check, "required")
    rate_key: str | None
    rate_count: int
    rate_per: float
    rate_reason: str
    quorum: Any = None  # kestrel.policy.quorum.Quorum of the rule, if the group decides


class ActionPlan(NamedTuple):
    """What :func:`evaluate` looks at for one action, in evaluation order."""

    deny_always: tuple[DenyStep, ...]  # deny steps that name no argument (a window, or nothing)
    deny_names: frozenset[str]  # first argument named by each other deny step
    deny_by_name: Mapping[str, tuple[DenyStep, ...]]  # name -> its steps and deny_always, in file order
    allow: tuple[AllowStep, ...]  # empty: the action is not permitted (default deny)
    needs_destination: bool  # a network action: its arguments must name a destination
    net_exact: Mapping[str, frozenset[int | None]]  # allow-list host -> ports (None: any) for this action
    net_wild: tuple[tuple[str, int | None], ...]  # (".suffix", port or None) for this action


def compile_plans(policy: Policy) -> dict[str, ActionPlan]:
    """One plan per action the policy names, and ``"*"`` for every other action."""
    names = set(policy.allow) | {r.action for r in policy.deny}
    return {name: _plan(policy, name) for name in names | {"*"}}


def _plan(policy: Policy, action: str) -> ActionPlan:
    deny = [
        DenyStep(
            i,
            r.id,
            r.reason or f"denied by {r.id}",
            r.window,
            tuple((c.name, c.check_one, c.matches_any) for c in r.args),
        )
        for i, r in enumerate(policy.deny)
        if r.action in (action, "*")
    ]
    always = tuple(d for d in deny if not d.conds)
    by_name = {}
    for name in {d.conds[0][0] for d in deny if d.conds}:
        by_name[name] = tuple(d for d in deny if not d.conds or d.conds[0][0] == name)
    allow = tuple(_allow_step(r) for r in policy.allow.get(action, ()) if action != "*")
    exact: dict[str, set[int | None]] = {}
    wild = []
    for a in policy.net_allow:
        if a.actions is not None and action not in a.actions:
            continue
        if a.host.startswith("*."):
            wild.append((a.host[1:], a.port))
        else:
            exact.setdefault(a.host, set()).add(a.port)
    return ActionPlan(
        always,
        frozenset(by_name),
        by_name,
        allow,
        action in policy.network_actions,
        {h: frozenset(p) for h, p in exact.items()},
        tuple(wild),
    )


def _deny_steps(plan: ActionPlan, named: set[str]) -> tuple[DenyStep, ...]:
    """The deny steps that can match arguments with these ``named`` ones, in file order."""
    if len(named) == 1:
        return plan.deny_by_name[next(iter(named))]
    by_name = plan.deny_by_name
    return tuple(sorted({d for n in named for d in by_name[n]}, key=lambda d: d.order))


def _allow_step(r: Rule) -> AllowStep:
    conds = tuple((c.name, c.optional, c.check_one, c.check, f"argument '{c.name}' is required") for c in r.args)
    rate = r.rate
    if rate is None:
        return AllowStep(r.id, r.reason or f"allowed by {r.id}", r.window, conds, None, 0, 0.0, "", r.quorum)
    return AllowStep(
        r.id,
        r.reason or f"allowed by {r.id}",
        r.window,
        conds,
        rate.key,
        rate.count,
        rate.per,
        f"rate limit reached ({rate.count} per {rate.per:g} s)",
        r.quorum,
    )


def evaluate(
    policy: Policy | None,
    request: ActionRequest,
    state: PolicyState,
    now: float,
    *,
    expired: Callable[[], bool] | None = None,
) -> Decision:
    """Decide ``request`` under ``policy`` (None: no policy installed, deny everything).

    ``expired`` (optional) is asked before each rule is tried; once it answers True the
    decision is a deny by :data:`POLICY_TIMEOUT` (a decision never outlives its budget).
    The request's arguments are evaluated as given: :class:`~kestrel.policy.engine.PolicyEngine`
    puts them in canonical form first (:func:`kestrel.policy.canonical.canonicalize`).
    """
    action, args = request.action, request.args
    digest = args_digest(args)
    if policy is None:
        return make_decision(
            False, action, "default-deny", "no policy is installed", NO_POLICY_DIGEST, digest, None, args
        )
    plans = policy.plans
    plan = plans.get(action) or plans["*"]
    pdigest = policy.digest
    # Only deny steps whose first argument is present (or that name none) can match.
    named = plan.deny_names.intersection(args) if plan.deny_names else None
    for _, rid, reason, window, conds in _deny_steps(plan, named) if named else plan.deny_always:
        if expired is not None and expired():
            return _timed_out(action, pdigest, digest, args)
        if window is not None and not window.contains(now):
            continue
        for name, one, matches_any in conds:
            if name not in args:
                break
            v = args[name]
            if not (matches_any(v) if isinstance(v, (list, tuple)) else one(v) is None):
                break
        else:
            return make_decision(False, action, rid, reason, pdigest, digest, None, args)
    if not plan.allow:
        return make_decision(
            False,
            action,
            "default-deny",
            f"action '{action}' is not permitted by the policy",
            pdigest,
            digest,
            None,
            args,
        )
    if "url" in args or "host" in args:
        refused = _network_refusal(policy, plan, action, args)
        if refused is not None:
            return make_decision(False, action, refused[0], refused[1], pdigest, digest, None, args)
    elif plan.needs_destination:
        return make_decision(False, action, "network", _no_destination(action), pdigest, digest, None, args)
    first: tuple[str, str] | None = None
    for rid, reason, window, conds, rate_key, rate_count, rate_per, rate_reason, quorum in plan.allow:
        fail: str | None = None
        if expired is not None and expired():
            return _timed_out(action, pdigest, digest, args)
        if window is not None and not window.contains(now):
            fail = _OUTSIDE_WINDOW
        else:
            for name, optional, one, check, missing in conds:
                if name in args:
                    v = args[name]
                    fail = check(v) if isinstance(v, (list, tuple)) else one(v)
                    if fail is not None:
                        break
                elif not optional:
                    fail = missing
                    break
            if fail is None and rate_key is not None:
                times = state.hits.get(rate_key)
                if now < state.saturated_until or (
                    (len(times) - bisect_right(times, now - rate_per) if times else 0) >= rate_count
                ):
                    fail = rate_reason
        if fail is None and quorum is not None:  # never allowed alone: kestrel.policy.quorum asks the group
            return make_decision(False, action, rid + ".quorum", quorum.reason, pdigest, digest)
        if fail is None:
            return make_decision(True, action, rid, reason, pdigest, digest, rate_key, args)
        if first is None:
            first = (rid, fail)
    assert first is not None
    return make_decision(False, action, first[0], first[1], pdigest, digest, None, args)


def _timed_out(action: str, pdigest: str, digest: str, args: Mapping[str, Any]) -> Decision:
    return make_decision(
        False,
        action,
        POLICY_TIMEOUT,
        f"{POLICY_TIMEOUT}: the decision ran out of its time budget",
        pdigest,
        digest,
        None,
        args,
    )


def _no_destination(action: str) -> str:
    return f"'{action}' is a network action; give its destination as 'url' or 'host'"


def destination(args: Mapping[str, Any]) -> tuple[str, int | None] | None:
    """The (host, port) an action's arguments name (``url`` or ``host``/``port``), or None.

    Raises ValueError when they name one malformedly.
    """
    url = args.get("url")
    if url is not None:
        if not isinstance(url, str) or len(url) > 2048:
            raise ValueError("argument 'url' must be a URL string")
        return _url_destination(url)
    host = args.get("host")
    if host is None:
        return None
    if not isinstance(host, str) or not host or len(host) > 253 or any(c in host for c in "/@ "):
        raise ValueError("argument 'host' must be a host name or address")
    host = _canonical_host(host)
    port = args.get("port")
    if port is None:
        return host, None
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError("argument 'port' must be an integer") from None
    if not 1 <= port <= 65535 or isinstance(args.get("port"), bool):
        raise ValueError("argument 'port' must be between 1 and 65535")
    return host, port


@lru_cache(maxsize=1024)
def _canonical_host(host: str) -> str:
    """The host as a URL's host is read (kestrel.policy.canonical.parse_host); ValueError if it is none."""
    try:
        return parse_host(host, where="argument 'host'")[0]
    except ArgsError as exc:
        raise ValueError(exc.message) from None


@lru_cache(maxsize=1024)
def _url_destination(url: str) -> tuple[str, int | None]:
    """(host, port) of a URL, parsed as fetch_data parses it; cached, as agents call the same few
    endpoints again and again. Any other scheme is read as ``scheme://host[:port]``."""
    if url[:7].lower() == "http://" or url[:8].lower() == "https://":
        try:
            u = parse_url(url, where="argument 'url'")
        except ArgsError as exc:
            raise ValueError(exc.message) from None
        return u.host, u.port
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise ValueError("argument 'url' has no scheme or host")
    if "@" in parts.netloc or "\\" in url:
        raise ValueError("argument 'url' has user information or a backslash")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("argument 'url' has an invalid port") from None
    return _canonical_host(parts.hostname), port or _DEFAULT_PORTS.get(parts.scheme.lower())


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_NAMES or host.startswith("127.") and host.replace(".", "").isdigit()


def _network_refusal(policy: Policy, plan: ActionPlan, action: str, args: Mapping[str, Any]) -> tuple[str, str] | None:
    try:
        dest = destination(args)
    except ValueError as exc:
        return ("network", str(exc))
    if dest is None:
        if plan.needs_destination:
            return ("network", _no_destination(action))
        return None
    if not policy.no_external_network or _is_loopback(dest[0]):
        return None
    host, port = dest
    ports = plan.net_exact.get(host)
    if ports is not None and (None in ports or port in ports):
        return None
    for suffix, want in plan.net_wild:
        if (want is None or want == port) and host.endswith(suffix):
            return None
    where = f"{host}:{port}" if port is not None else host
    return (
        policy.restriction_id or "network",
        f"external network destination {where} is not in the policy's network allow-list",
    )
