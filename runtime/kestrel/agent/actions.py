"""Argument schemas of the daemon's built-in actions, for the planner's tool registry.

They mirror the handlers in :mod:`kestrel.daemon.actions` (which still check
their arguments themselves): a model sees these signatures in its prompt and its
proposals are validated against them before the policy is even asked.
"""

from __future__ import annotations

from .tools import ToolSpec

__all__ = ["BUILTIN_TOOLS", "builtin"]

_STR = {"type": "string", "maxLength": 256}

BUILTIN_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "gpio.write",
        "set a GPIO output actuator",
        {
            "type": "object",
            "properties": {
                "actuator": {"type": "string", "maxLength": 64},
                "value": {"type": "integer", "enum": [0, 1]},
            },
            "required": ["actuator", "value"],
        },
    ),
    ToolSpec(
        "send_email",
        "send an email",
        {
            "type": "object",
            "properties": {
                "to": {"type": "string", "pattern": "^[^@ ]+@[^@ ]+$", "maxLength": 254},
                "subject": {"type": "string", "maxLength": 200},
                "body": {"type": "string", "maxLength": 8192},
            },
            "required": ["to", "subject"],
        },
    ),
    ToolSpec(
        "schedule_event",
        "add an event to the local calendar (times in RFC 3339 with zone)",
        {
            "type": "object",
            "properties": {
                "summary": {"type": "string", "maxLength": 500},
                "start": _STR,
                "end": _STR,
                "duration_min": {"type": "integer", "minimum": 1, "maximum": 527040},
                "location": {"type": "string", "maxLength": 500},
            },
            "required": ["summary", "start"],
        },
    ),
    ToolSpec(
        "fetch_data",
        "HTTP GET a URL the network policy permits",
        {
            "type": "object",
            "properties": {"url": {"type": "string", "pattern": "^https?://", "maxLength": 2048}},
            "required": ["url"],
        },
    ),
    ToolSpec(
        "mqtt.publish",
        "publish to a configured MQTT actuator",
        {
            "type": "object",
            "properties": {
                "actuator": {"type": "string", "maxLength": 64},
                "payload": {"type": "string", "maxLength": 4096},
            },
            "required": ["actuator", "payload"],
        },
    ),
)


def builtin(*names: str) -> tuple[ToolSpec, ...]:
    """The built-in specs with these names (all when none are given), in the order given."""
    table = {t.name: t for t in BUILTIN_TOOLS}
    return tuple(table[n] for n in names) if names else BUILTIN_TOOLS
