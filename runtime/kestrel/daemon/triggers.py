"""Trigger evaluation, pure: sensor values and an explicit ``now`` in, proposals out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import Schedule, Trigger
from .expr import ExpressionError

__all__ = ["Proposal", "TriggerEngine", "TriggerFault"]


@dataclass(frozen=True)
class Proposal:
    """An action some part of the daemon wants to take; the policy decides."""

    action: str
    args: dict[str, Any]
    source: str  # "trigger:NAME", "schedule:NAME", "control:UID", "mqtt:TOPIC"


@dataclass(frozen=True)
class TriggerFault:
    trigger: str
    message: str


class TriggerEngine:
    """Evaluates the triggers that read a sensor whenever that sensor reports.

    ``fire="rising"`` proposes when the condition goes from not-true to true;
    ``fire="always"`` on every report that satisfies it. ``cooldown_s`` bounds the
    rate either way.
    """

    def __init__(self, triggers: Iterable[Trigger]) -> None:
        self.triggers = tuple(triggers)
        self._by_sensor: dict[str, list[Trigger]] = {}
        for t in self.triggers:
            for name in t.when.names:
                self._by_sensor.setdefault(name, []).append(t)
        self._was_true: dict[str, bool] = {}
        self._last_fired: dict[str, float] = {}

    def on_sensor(
        self, sensor: str, values: Mapping[str, Any], now: float
    ) -> tuple[list[Proposal], list[TriggerFault]]:
        proposals: list[Proposal] = []
        faults: list[TriggerFault] = []
        for t in self._by_sensor.get(sensor, ()):
            try:
                holds = t.when.holds(values)
            except ExpressionError as exc:
                faults.append(TriggerFault(t.name, exc.message))
                holds = False
            was = self._was_true.get(t.name, False)
            self._was_true[t.name] = holds
            if not holds or (t.fire == "rising" and was):
                continue
            last = self._last_fired.get(t.name)
            if last is not None and t.cooldown_s and now - last < t.cooldown_s:
                continue
            try:
                args = t.args.render(values)
            except ExpressionError as exc:
                faults.append(TriggerFault(t.name, exc.message))
                continue
            self._last_fired[t.name] = now
            proposals.append(Proposal(t.action, args, f"trigger:{t.name}"))
        return proposals, faults


def schedule_proposal(schedule: Schedule, values: Mapping[str, Any]) -> Proposal:
    return Proposal(schedule.action, schedule.args.render(values), f"schedule:{schedule.name}")


__all__ += ["schedule_proposal"]
