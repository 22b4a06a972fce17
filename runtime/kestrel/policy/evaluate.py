"""Pure, deterministic policy evaluation: same policy + request + state + now = same decision.

Order (docs/policy.md): deny rules first (a match denies, whatever allows);
then the action must be named by an allow rule (else ``default-deny``); then
the network restriction; then the action's allow rules in file order, the
first whose arguments, time window and rate limit all pass allows.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping
from urllib.parse import urlsplit

from .model import ActionRequest, ArgConstraint, Decision, Policy, PolicyState, Rule, args_digest

__all__ = ["evaluate", "destination", "NO_POLICY_DIGEST"]

NO_POLICY_DIGEST = "0" * 64
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "smtp": 25, "smtps": 465,
                  "submission": 587, "mqtt": 1883, "mqtts": 8883}
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "::1"})


def evaluate(policy: Policy | None, request: ActionRequest, state: PolicyState, now: float) -> Decision:
    """Decide ``request`` under ``policy`` (None: no policy installed, deny everything)."""
    action, args = request.action, request.args
    digest = args_digest(args)
    if policy is None:
        return Decision(False, action, "default-deny", "no policy is installed", NO_POLICY_DIGEST, digest)

    for rule in policy.deny_rules(action):
        if _deny_matches(rule, args, now):
            return Decision(False, action, rule.id, rule.reason or f"denied by {rule.id}", policy.digest, digest)
    rules = policy.allow.get(action)
    if not rules:
        return Decision(False, action, "default-deny", f"action '{action}' is not permitted by the policy",
                        policy.digest, digest)
    why = _network_refusal(policy, action, args)
    if why is not None:
        return Decision(False, action, why[0], why[1], policy.digest, digest)
    first: tuple[str, str] | None = None
    for rule in rules:
        fail = _allow_fails(rule, args, state, now)
        if fail is None:
            key = rule.rate.key if rule.rate is not None else None
            return Decision(True, action, rule.id, rule.reason or f"allowed by {rule.id}",
                            policy.digest, digest, key)
        if first is None:
            first = (rule.id, fail)
    assert first is not None
    return Decision(False, action, first[0], first[1], policy.digest, digest)


def _allow_fails(rule: Rule, args: Mapping[str, Any], state: PolicyState, now: float) -> str | None:
    if rule.window is not None and not rule.window.contains(now):
        return "outside the permitted time window"
    for c in rule.args:
        if c.name not in args:
            if c.optional:
                continue
            return f"argument '{c.name}' is required"
        why = c.check(args[c.name])
        if why is not None:
            return why
    rate = rule.rate
    if rate is not None and (now < state.saturated_until or state.count(rate.key, now - rate.per) >= rate.count):
        return f"rate limit reached ({rate.count} per {rate.per:g} s)"
    return None


def _deny_matches(rule: Rule, args: Mapping[str, Any], now: float) -> bool:
    if rule.window is not None and not rule.window.contains(now):
        return False
    for c in rule.args:
        if c.name not in args or not _any_item_matches(c, args):
            return False
    return True


def _any_item_matches(c: ArgConstraint, args: Mapping[str, Any]) -> bool:
    if c.name not in args:
        return False
    value = args[c.name]
    items = value if isinstance(value, (list, tuple)) else (value,)
    return any(c.check(item) is None for item in items)


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
    port = args.get("port")
    if port is None:
        return host.lower().rstrip("."), None
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError("argument 'port' must be an integer") from None
    if not 1 <= port <= 65535 or isinstance(args.get("port"), bool):
        raise ValueError("argument 'port' must be between 1 and 65535")
    return host.lower().rstrip("."), port


@lru_cache(maxsize=1024)
def _url_destination(url: str) -> tuple[str, int | None]:
    """(host, port) of a URL; cached, as agents call the same few endpoints again and again."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise ValueError("argument 'url' has no scheme or host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("argument 'url' has an invalid port") from None
    return parts.hostname.lower().rstrip("."), port or _DEFAULT_PORTS.get(parts.scheme.lower())


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_NAMES or host.startswith("127.") and host.replace(".", "").isdigit()


def _network_refusal(policy: Policy, action: str, args: Mapping[str, Any]) -> tuple[str, str] | None:
    try:
        dest = destination(args)
    except ValueError as exc:
        return ("network", str(exc))
    if dest is None:
        if action in policy.network_actions:
            return ("network", f"'{action}' is a network action; give its destination as 'url' or 'host'")
        return None
    if not policy.no_external_network or _is_loopback(dest[0]):
        return None
    host, port = dest
    if any(a.permits(action, host, port) for a in policy.net_allow):
        return None
    where = f"{host}:{port}" if port is not None else host
    return (policy.restriction_id or "network",
            f"external network destination {where} is not in the policy's network allow-list")
