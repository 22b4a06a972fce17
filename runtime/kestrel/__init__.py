"""Kestrel: an edge runtime for autonomous agents that live on their owners' own hardware.

Public API::

    from kestrel import Agent
    agent = Agent.open(state_dir)
    agent.id                     # the AgentID, a did:key
    receipt = agent.ledger.append("note", {"text": "hello"})
    agent.ledger.verify()
"""

from __future__ import annotations

from .errors import ConfigError, DataError, KestrelError, TransportError

__all__ = ["Agent", "KestrelError", "DataError", "TransportError", "ConfigError"]


def __getattr__(name: str):  # lazy, so `import kestrel` stays cheap
    if name == "Agent":
        from .agent.core import Agent

        return Agent
    raise AttributeError(name)
