"""One canonicaliser per built-in action, and the plain-JSON check for every other action.

Each returns a new ``dict`` holding every argument the action uses, defaults filled in,
in the form the action executes; unknown arguments are refused. Running a canonicaliser
on its own output returns the same output (the handlers in ``kestrel.daemon`` rely on
that: they parse what the policy saw, never the caller's original).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from .address import parse_address
from .errors import ArgsError
from .url import parse_url
from .values import plain_value

__all__ = ["BUILTIN_ARGS", "canonicalize", "MAX_RECIPIENTS", "MAX_EMAIL_BODY"]

MAX_RECIPIENTS = 50
MAX_EMAIL_BODY = 256 * 1024
MAX_TOPIC_BYTES = 65535
MAX_TEXT = 64 * 1024
_LEVELS = {"0": 0, "1": 1, "off": 0, "on": 1, "false": 0, "true": 1, "low": 0, "high": 1}


def _only(action: str, args: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = set(args) - set(allowed)
    if unknown:
        raise ArgsError(
            f"{action}: unknown argument(s) {', '.join(sorted(unknown))}", hint=f"{action} takes: {', '.join(allowed)}"
        )


def _text(
    action: str,
    args: Mapping[str, Any],
    key: str,
    *,
    default: str | None = None,
    limit: int = MAX_TEXT,
    header: bool = False,
) -> str:
    v = args.get(key, default)
    if v is None:
        raise ArgsError(f"{action} needs '{key}'")
    if not isinstance(v, str):
        raise ArgsError(f"{action}: '{key}' must be text")
    if len(v) > limit or (limit >= 1024 and len(v.encode("utf-8", "surrogatepass")) > limit):
        raise ArgsError(f"{action}: '{key}' is longer than {limit} bytes")
    if "\0" in v or (header and ("\r" in v or "\n" in v)):
        raise ArgsError(f"{action}: '{key}' must not contain line breaks or NUL characters")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ArgsError(f"{action}: '{key}' is not valid Unicode text (lone surrogate)") from None
    return v


def _name(action: str, args: Mapping[str, Any], key: str) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v or len(v) > 64 or not v.isprintable():
        raise ArgsError(f"{action} needs '{key}', the name of a configured {key}")
    return v


def send_email(args: Mapping[str, Any]) -> dict[str, Any]:
    """``to``: one address or a list of 1..50 (always a list of bare addr-specs after this)."""
    _only("send_email", args, ("to", "subject", "body"))
    to = args.get("to")
    if to is None:
        raise ArgsError("send_email needs 'to'", hint="e.g. --to alice@example.com")
    items = [to] if isinstance(to, str) else to
    if not isinstance(items, (list, tuple)) or not items or len(items) > MAX_RECIPIENTS:
        raise ArgsError(f"send_email: 'to' must be an address or a list of 1..{MAX_RECIPIENTS} addresses")
    seen: dict[str, None] = {}
    for i, item in enumerate(items):
        seen.setdefault(parse_address(item, where=f"send_email: 'to'[{i}]").text)
    return {
        "to": list(seen),
        "subject": _text("send_email", args, "subject", default="", limit=998, header=True),
        "body": _text("send_email", args, "body", default="", limit=MAX_EMAIL_BODY),
    }


def fetch_data(args: Mapping[str, Any]) -> dict[str, Any]:
    _only("fetch_data", args, ("url",))
    return {"url": parse_url(args.get("url"), where="fetch_data: 'url'").text}


def gpio_write(args: Mapping[str, Any]) -> dict[str, Any]:
    _only("gpio.write", args, ("actuator", "value"))
    v = args.get("value")
    if type(v) is bool:
        level = int(v)
    elif type(v) is int and v in (0, 1):
        level = v
    elif isinstance(v, str) and v.strip().lower() in _LEVELS:
        level = _LEVELS[v.strip().lower()]
    else:
        raise ArgsError(f"gpio.write: 'value' must be 0 or 1 (or on/off), got {v!r}"[:200])
    return {"actuator": _name("gpio.write", args, "actuator"), "value": level}


def mqtt_publish(args: Mapping[str, Any]) -> dict[str, Any]:
    _only("mqtt.publish", args, ("actuator", "topic", "payload", "qos", "retain"))
    payload = plain_value(args.get("payload", ""), where="mqtt.publish: 'payload'")
    if "actuator" in args:
        if {"topic", "qos", "retain"} & set(args):
            raise ArgsError("mqtt.publish: give 'actuator' or 'topic' (with 'qos'/'retain'), not both")
        return {"actuator": _name("mqtt.publish", args, "actuator"), "payload": payload}
    topic = args.get("topic")
    if not isinstance(topic, str) or not topic:
        raise ArgsError("mqtt.publish needs 'actuator' or a concrete 'topic'")
    if any(c in topic for c in "#+\0") or topic.startswith("$"):
        raise ArgsError(
            f"mqtt.publish: topic {topic[:80]!r} has a wildcard (+ #), a NUL or a leading '$'",
            hint="publish to one concrete topic; '$' topics belong to the broker",
        )
    try:
        if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
            raise ArgsError("mqtt.publish: topic is longer than 65535 bytes")
    except UnicodeEncodeError:
        raise ArgsError("mqtt.publish: topic is not valid Unicode text") from None
    qos = args.get("qos", 1)
    if type(qos) is str and qos in ("0", "1", "2"):
        qos = int(qos)
    if type(qos) is not int or qos not in (0, 1, 2):
        raise ArgsError("mqtt.publish: 'qos' must be 0, 1 or 2")
    retain = args.get("retain", False)
    if isinstance(retain, str) and retain.lower() in ("true", "false"):
        retain = retain.lower() == "true"
    if type(retain) is not bool:
        raise ArgsError("mqtt.publish: 'retain' must be true or false")
    return {"topic": topic, "payload": payload, "qos": qos, "retain": retain}


def serial_write(args: Mapping[str, Any]) -> dict[str, Any]:
    _only("serial.write", args, ("actuator", "data"))
    return {"actuator": _name("serial.write", args, "actuator"), "data": _text("serial.write", args, "data")}


def _time(args: Mapping[str, Any], key: str) -> dt.datetime:
    v = args.get(key)
    if not isinstance(v, str) or len(v) > 64:
        raise ArgsError(f"schedule_event: '{key}' must be an ISO 8601 time such as 2026-05-01T09:30:00Z")
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ArgsError(
            f"schedule_event: '{key}' {v!r} is not an ISO 8601 time",
            hint="e.g. 2026-05-01T09:30:00Z or 2026-05-01T11:30:00+02:00",
        ) from None
    if t.tzinfo is None:
        raise ArgsError(f"schedule_event: '{key}' needs a time zone (Z or +HH:MM)")
    return t.astimezone(dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def schedule_event(args: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` (or ``title``), ``start``, and ``end`` or ``duration_min``: times become UTC."""
    _only("schedule_event", args, ("summary", "title", "start", "end", "duration_min", "location", "description"))
    if "title" in args and "summary" not in args:  # 'title' is another name for 'summary'
        args = {**args, "summary": args["title"]}
    summary = _text("schedule_event", args, "summary", limit=500)
    if not summary:
        raise ArgsError("schedule_event needs 'summary'")
    start = _time(args, "start")
    if "end" in args:
        if "duration_min" in args:
            raise ArgsError("schedule_event: give 'end' or 'duration_min', not both")
        end = _time(args, "end")
    else:
        dur = args.get("duration_min", 60)
        if isinstance(dur, str) and dur.isdigit() and len(dur) <= 6:
            dur = int(dur)
        if type(dur) not in (int, float) or not 0 < dur <= 60 * 24 * 366:
            raise ArgsError("schedule_event: 'duration_min' must be a positive number of minutes")
        end = start + dt.timedelta(minutes=dur)
    if end <= start:
        raise ArgsError("schedule_event: 'end' must be after 'start'")
    return {
        "summary": summary,
        "start": _iso(start),
        "end": _iso(end),
        "location": _text("schedule_event", args, "location", default="", limit=500),
        "description": _text("schedule_event", args, "description", default="", limit=4096),
    }


def agent_send(args: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = plain_value(dict(args), where="agent.send")
    if not isinstance(out.get("to"), str):
        raise ArgsError("agent.send needs 'to', the peer's AgentID (did:key:...)")
    return out


Canonicaliser = Callable[[Mapping[str, Any]], dict[str, Any]]

#: the built-in actions' canonicalisers (their argument names are in each one's ``_only``)
BUILTIN_ARGS: Mapping[str, Canonicaliser] = {
    "send_email": send_email,
    "fetch_data": fetch_data,
    "gpio.write": gpio_write,
    "mqtt.publish": mqtt_publish,
    "serial.write": serial_write,
    "schedule_event": schedule_event,
    "agent.send": agent_send,
}


def canonicalize(action: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The canonical arguments of ``action``; :class:`ArgsError` when there is none.

    A built-in action gets its own parser; any other action's arguments must be plain
    JSON with finite numbers (:func:`plain_value`) and are otherwise kept as they are.
    """
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise ArgsError(f"{action}: arguments must be an object")
    plain = plain_value(dict(args), where=f"{action} arguments")
    parse = BUILTIN_ARGS.get(action)
    return parse(plain) if parse is not None else plain
