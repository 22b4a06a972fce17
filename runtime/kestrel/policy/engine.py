"""PolicyEngine (shell): the policy in force from a source, rate state on disk, decisions in the ledger.

The policy comes from a :class:`~kestrel.policy.source.PolicySource` (``source=``): on a device,
``kestrel.ota.policy_source(state_dir)``, the policy of the active OTA slot, which the daemon and
the CLI pass in; without one, the default the ``kestrel`` package installs (the same OTA source).
The policy package never imports OTA (docs/architecture.md, "Layers").

Rate-limit history lives in ``STATE/data/policy-rate.json`` (format in
docs/policy.md) and is rewritten atomically after each allow that consumed a
rate-limited slot, so limits survive restarts. The engine notices a new active
bundle (the source's ``version()`` changed): by default it looks (one ``stat``) before each
decision; with ``recheck_s`` it looks at most that often, and whoever applies or rolls
back a bundle in the same process calls :meth:`PolicyEngine.invalidate` so that the very
next decision uses the new policy (the daemon does: it is the only writer while it runs).

Clock steps: rate-limit history is kept in wall-clock seconds (it must survive restarts), so
when the wall clock steps (detected against the monotonic clock, kestrel._internal.clock)
the history moves by the same amount: a step neither frees nor blocks rate-limited slots.
Hits found in the future at start (the clock went back while the daemon was down) count as
happening now. Time windows read the wall clock as it is (the step usually corrects it).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._internal.clock import StepWatch
from .._internal.fsutil import atomic_write, ensure_private_dir, read_bytes
from .._internal.paths import StateLayout
from ..errors import KestrelError
from .canonical import ArgsError, canonicalize
from .evaluate import INVALID_ARGS, NO_POLICY_DIGEST, evaluate
from .model import ActionRequest, Decision, Policy, PolicyState, args_digest, make_decision
from .source import PolicySource, default_source

if TYPE_CHECKING:
    from ..ledger.recorder import Recorder

__all__ = ["PolicyEngine", "RATE_FILE", "DECISION_BUDGET_S"]

RATE_FILE = "policy-rate.json"
DECISION_BUDGET_S = 0.05  # a decision that takes longer is a deny (policy_timeout)


class PolicyEngine:
    """``decide(action, args)`` evaluates against the active policy and records the decision."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        ledger: Recorder,
        *,
        source: PolicySource | None = None,
        clock: Callable[[], float] = time.time,
        recheck_s: float = 0.0,
        budget_s: float = DECISION_BUDGET_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state_dir = Path(state_dir)
        self.source = source if source is not None else default_source(self._state_dir)
        self._ledger = ledger
        self._clock = clock
        self._monotonic = monotonic
        self._steps = StepWatch(wall=clock, monotonic=monotonic)
        self._budget_s = budget_s
        self._lock = threading.Lock()
        self._rate_path = StateLayout(self._state_dir).data / RATE_FILE
        self._version: Hashable = None  # the source's version() when the policy was loaded
        self._recheck_s = recheck_s
        self._next_check = 0.0  # time.monotonic() after which the source is probed again
        self.policy: Policy | None = None
        self.bundle_digest: str | None = None
        self.load_error: str | None = None
        self._state = _not_after(self._load_state(), self._clock())
        if self._state.saturated_until > self._clock():
            self._save_state()
        self.reload()

    def reload(self) -> None:
        """Re-read the policy in force from the source (no policy: deny everything)."""
        version = self.source.version()
        try:
            found = self.source.load()
        except KestrelError as exc:
            # Deny everything, and try again at the next decision (the failure may be a race
            # with an apply replacing the slot, or a repair may follow).
            self.policy, self.bundle_digest, self.load_error = None, None, exc.message
            self._version = None
            self._next_check = 0.0
            return
        self.policy, self.bundle_digest = found if found else (None, None)
        self.load_error = None
        self._version = version

    def invalidate(self) -> None:
        """The active bundle may have changed (an apply or rollback in this process): re-read it now."""
        with self._lock:
            self.reload()
            self._next_check = 0.0

    def _maybe_reload(self) -> None:
        if self._recheck_s > 0.0:
            now = time.monotonic()
            if now < self._next_check:
                return
            self._next_check = now + self._recheck_s
        if self.source.version() != self._version:
            self.reload()

    def decide(self, action: str, args: Mapping[str, Any] | None = None, *, parent: int | None = None) -> Decision:
        """Put ``args`` in canonical form, evaluate that form, record the decision.

        The returned decision carries the canonical arguments (``decision.args``): what an
        allowed action executes. Arguments without a canonical form are denied
        (rule ``invalid-args``), and so is a decision that outlives ``budget_s``
        (rule ``policy_timeout``). ``parent``: the seq of the decision whose action asks for
        this one (a fetch_data redirect); recorded, so the parent's outcome accounts for it.
        """
        try:
            request = ActionRequest(action, canonicalize(action, args))
        except ArgsError as exc:
            return self._record(self._invalid(action, args, exc), parent)
        with self._lock:
            self._maybe_reload()
            step = self._steps.check()
            if step is not None:
                self._state = _shifted(self._state, step.delta)
                self._save_state()
            now = self._clock()
            deadline = self._monotonic() + self._budget_s
            decision = evaluate(self.policy, request, self._state, now, expired=lambda: self._monotonic() > deadline)
            if decision.allowed and decision.rate_key is not None and self.policy is not None:
                self._state = self._state.record(decision, now, horizon=self.policy.rate_windows)
                self._save_state()
        return self._record(decision, parent)

    def _invalid(self, action: str, args: Mapping[str, Any] | None, exc: ArgsError) -> Decision:
        return make_decision(
            False,
            action,
            INVALID_ARGS,
            f"invalid arguments: {exc.message}"[:500],
            self.policy.digest if self.policy is not None else NO_POLICY_DIGEST,
            args_digest(args if isinstance(args, Mapping) else {}),
        )

    def _record(self, decision: Decision, parent: int | None = None) -> Decision:
        body: dict[str, Any] = {
            "action": decision.action,
            "args_digest": decision.args_digest,
            "decision": "allow" if decision.allowed else "deny",
            "rule": decision.rule,
            "reason": decision.reason if self.load_error is None else f"{decision.reason} ({self.load_error})",
            "policy": decision.policy_digest,
            "bundle": self.bundle_digest,
        }
        if parent is not None:
            body["parent"] = parent
        self._ledger.append("policy.decision", body)
        return decision

    # -- rate state -----------------------------------------------------------
    @staticmethod
    def read_state(state_dir: str | os.PathLike[str]) -> PolicyState:
        """The persisted rate state (read-only; a corrupt file reads as saturated)."""
        state = _read_rate(StateLayout(Path(state_dir)).data / RATE_FILE)
        return state if state is not None else PolicyState(saturated_until=time.time() + 86400.0)

    def _load_state(self) -> PolicyState:
        state = _read_rate(self._rate_path)
        if state is None:
            # Corrupt rate state must not open the gate: keep the file for inspection and
            # refuse every rate-limited action for a day (fail closed).
            os.replace(self._rate_path, self._rate_path.with_suffix(".corrupt"))
            return PolicyState(saturated_until=self._clock() + 86400.0)
        return state

    def _save_state(self) -> None:
        ensure_private_dir(self._rate_path.parent)
        data = json.dumps(
            {
                "format": 1,
                "saturated_until": self._state.saturated_until,
                "hits": {k: list(v) for k, v in self._state.hits.items()},
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        atomic_write(self._rate_path, data)


def _shifted(state: PolicyState, delta: float) -> PolicyState:
    """The rate history after the wall clock stepped by ``delta`` seconds (the hits keep their age)."""
    hits = {k: tuple(t + delta for t in v) for k, v in state.hits.items()}
    return PolicyState(hits, state.saturated_until + delta if state.saturated_until else 0.0)


def _not_after(state: PolicyState, now: float) -> PolicyState:
    """Hits later than ``now`` (recorded before the clock went back) count as happening now."""
    if not any(v and v[-1] > now for v in state.hits.values()):
        return state
    hits = {k: tuple(sorted(min(t, now) for t in v)) for k, v in state.hits.items()}
    return PolicyState(hits, state.saturated_until)


def _read_rate(path: Path) -> PolicyState | None:
    if not path.exists():
        return PolicyState()
    try:
        obj = json.loads(read_bytes(path, what="policy rate state", max_size=16 << 20))
        hits = {str(k): tuple(sorted(float(t) for t in v)) for k, v in obj["hits"].items()}
        return PolicyState(hits, float(obj.get("saturated_until", 0.0)))
    except (KestrelError, ValueError, KeyError, TypeError, AttributeError):
        return None
