"""Default-deny policy: parse and evaluate (pure), and the engine that records decisions.

``parse_policy`` and ``evaluate`` do no I/O; ``PolicyEngine`` (in
``kestrel.policy.engine``) loads the active policy from the OTA slot, keeps
rate-limit state on disk and appends every decision to the ledger.
"""

from __future__ import annotations

from typing import Any

from .evaluate import NO_POLICY_DIGEST, destination, evaluate
from .model import ActionRequest, Decision, Policy, PolicyState, args_digest
from .parse import PolicyError, PolicyIssue, parse_policy

__all__ = [
    "ActionRequest",
    "Decision",
    "NO_POLICY_DIGEST",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "PolicyIssue",
    "PolicyState",
    "args_digest",
    "destination",
    "evaluate",
    "parse_policy",
]


def __getattr__(name: str) -> Any:
    if name == "PolicyEngine":
        from .engine import PolicyEngine

        return PolicyEngine
    raise AttributeError(name)
