"""Default-deny policy: parse and evaluate (pure), and the engine that records decisions.

``parse_policy`` and ``evaluate`` do no I/O; ``PolicyEngine`` (in
``kestrel.policy.engine``) loads the active policy from the OTA slot, keeps
rate-limit state on disk and appends every decision to the ledger. Arguments are
put in canonical form first (:mod:`kestrel.policy.canonical`).

Names are loaded on first use (PEP 562), so that importing a light sub-module (the
action catalog for ``kestrel call --help``) does not load the evaluator and hashlib.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .._internal.lazy import lazy_exports

if TYPE_CHECKING:
    from .engine import PolicyEngine
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

_WHERE = {
    "NO_POLICY_DIGEST": "evaluate",
    "destination": "evaluate",
    "evaluate": "evaluate",
    "ActionRequest": "model",
    "Decision": "model",
    "Policy": "model",
    "PolicyState": "model",
    "args_digest": "model",
    "PolicyError": "parse",
    "PolicyIssue": "parse",
    "parse_policy": "parse",
    "PolicyEngine": "engine",
}


__getattr__ = lazy_exports(__name__, globals(), _WHERE)


class _Package(types.ModuleType):
    """``evaluate`` names both a function and the module that holds it. The import system sets the
    module as this package's attribute whenever ``kestrel.policy.evaluate`` is first imported
    directly (``from .evaluate import ...``), so ``from kestrel.policy import evaluate`` gave the
    function or the module depending on import order. The package attribute is always the function."""

    @property
    def evaluate(self) -> Any:
        return importlib.import_module(".evaluate", __name__).evaluate

    @evaluate.setter
    def evaluate(self, value: Any) -> None:  # the import system's setattr of the submodule: ignored
        pass


sys.modules[__name__].__class__ = _Package
