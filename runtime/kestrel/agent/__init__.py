"""The agent: the :class:`Agent` facade (identity + signer + ledger), planner and LLM wrapper.

``from kestrel import Agent`` or ``from kestrel.agent import Agent``; see ``agent/core.py``.
"""

from __future__ import annotations

from .core import Agent

__all__ = ["Agent"]
