"""The actions the runtime knows and the argument keys each takes (pure data).

This is what ``kestrel policy check`` compares a policy against (:mod:`kestrel.policy.lint`)
and what ``kestrel call --help`` lists. It mirrors the daemon's handlers
(:mod:`kestrel.daemon.actions`, ``agent.send`` in :mod:`kestrel.sync.peers.messenger`,
``llm.request`` in :mod:`kestrel.agent.llm.openai`);
tests/policy/test_catalog.py fails when the two drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["ActionSpec", "KNOWN_ACTIONS", "NETWORK_ARGS"]


@dataclass(frozen=True)
class ActionSpec:
    name: str
    args: tuple[str, ...]  # every argument key the handler accepts
    summary: str
    actuator: str | None = None  # the actuator type its ``actuator`` argument names, if any
    callable: bool = True  # False: the runtime asks the policy about it itself (not `kestrel call`)


# Destination keys the policy engine reads for network checks (docs/policy.md, Network): a
# policy may constrain them for any action.
NETWORK_ARGS = ("url", "host", "port")

_SPECS = (
    ActionSpec("gpio.write", ("actuator", "value"), "set a GPIO output actuator to 0 or 1", actuator="gpio"),
    ActionSpec(
        "mqtt.publish",
        ("actuator", "topic", "payload", "qos", "retain"),
        "publish to an MQTT actuator or a concrete topic",
        actuator="mqtt",
    ),
    ActionSpec("serial.write", ("actuator", "data"), "write a frame to a serial actuator", actuator="serial"),
    ActionSpec("send_email", ("to", "subject", "body"), "queue a mail for the SMTP relay"),
    ActionSpec(
        "schedule_event",
        ("summary", "title", "start", "end", "duration_min", "location", "description"),
        "add an event to the local calendar",
    ),
    ActionSpec("fetch_data", ("url",), "HTTP GET a URL the network policy permits"),
    ActionSpec("agent.send", ("to", "body", "encrypt"), "send a signed message to a trusted peer agent"),
    ActionSpec(
        "llm.request",
        ("url", "model"),
        "a request to a remote LLM endpoint (asked before each generation by kestrel.agent.llm.openai)",
        callable=False,
    ),
)

KNOWN_ACTIONS: Mapping[str, ActionSpec] = MappingProxyType({s.name: s for s in _SPECS})
