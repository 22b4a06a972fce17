"""Kestrel: an edge runtime for autonomous agents that live on their owners' own hardware.

Public API::

    from kestrel import Agent
    agent = Agent.open(state_dir)
    agent.id                     # the AgentID, a did:key
    receipt = agent.ledger.append("note", {"text": "hello"})
    agent.ledger.verify()
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, DataError, KestrelError, TransportError

__all__ = ["Agent", "KestrelError", "DataError", "TransportError", "ConfigError"]


def _active_slot_source(state_dir: Any) -> Any:
    from .ota.source import policy_source

    return policy_source(state_dir)


def _install_defaults() -> None:
    """Wiring across layers that a lower layer must not do itself: a PolicyEngine built without a
    source reads the active OTA slot (the policy package never imports OTA: docs/architecture.md)."""
    from .policy.source import set_default_source

    set_default_source(_active_slot_source)


_install_defaults()


def __getattr__(name: str):  # lazy, so `import kestrel` stays cheap
    if name == "Agent":
        from .agent.core import Agent

        return Agent
    raise AttributeError(name)
