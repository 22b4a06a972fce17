"""Built-in action handlers: what each action does once the policy allowed it.

A handler returns an :class:`Outcome`: ``reply`` goes back to the caller,
``record`` into the ledger's ``action.result`` (digests and sizes, never private
payloads). Bad arguments raise :class:`ActionArgsError`; a device or network that
cannot be used raises a TransportError. Either way the failure is recorded.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import DataError
from ..policy.canonical import ArgsError, canonicalize
from .calendar import CalendarStore, parse_event_args
from .config import DeviceConfig, GpioOutput, MqttActuator, SerialActuator
from .effects import CURRENT_DECISION
from .fetch import RedirectDeniedError, fetch_blocking, parse_fetch_args
from .outbox import Outbox, parse_email_args

__all__ = ["Outcome", "ActionArgsError", "Actions", "FAST_ACTIONS"]

# Run in order on the loop (microseconds); everything else runs as its own task.
FAST_ACTIONS = frozenset({"gpio.write", "serial.write"})


class ActionArgsError(DataError):
    """An action's arguments are missing, of the wrong type, or name an unknown actuator."""


@dataclass(frozen=True)
class Outcome:
    reply: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)


def _canonical(action: str, args: dict[str, Any]) -> dict[str, Any]:
    """The canonical form of ``args`` (a no-op on what the policy engine already canonicalised)."""
    try:
        return canonicalize(action, args)
    except ArgsError as exc:
        raise ActionArgsError(exc.message, hint=exc.hint) from None


def _payload(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


class Authorize(Protocol):
    """The policy's ``decide``: decides and records a follow-up request of a running action."""

    def __call__(self, action: str, args: dict[str, Any], *, parent: int | None = None) -> Any: ...


class Actions:
    """Dispatches an allowed action to its handler."""

    def __init__(
        self,
        *,
        config: Callable[[], DeviceConfig],
        hardware: Callable[[], Any],
        outbox: Outbox,
        calendar: CalendarStore,
        clock: Callable[[], float] = time.time,
        authorize: Authorize | None = None,
    ) -> None:
        self._config = config
        self._hardware = hardware
        self.outbox = outbox
        self.calendar = calendar
        self.clock = clock
        self.authorize = authorize  # the policy's decide(action, args), for follow-up requests (redirects)
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Outcome]]] = {
            "gpio.write": self.gpio_write,
            "mqtt.publish": self.mqtt_publish,
            "serial.write": self.serial_write,
            "send_email": self.send_email,
            "schedule_event": self.schedule_event,
            "fetch_data": self.fetch_data,
        }

    def register(self, name: str, handler: Callable[[dict[str, Any]], Awaitable[Outcome]]) -> None:
        """Add an action (e.g. ``agent.send``); the pipeline's policy check still comes first."""
        self._handlers[name] = handler

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    async def run(self, action: str, args: dict[str, Any]) -> Outcome:
        handler = self._handlers.get(action)
        if handler is None:
            raise ActionArgsError(f"no handler for action {action!r}", hint=f"built-in: {', '.join(self.names)}")
        return await handler(args)

    async def gpio_write(self, args: dict[str, Any]) -> Outcome:
        args = _canonical("gpio.write", args)
        hw = self._hardware()
        act = hw.actuator_of(args["actuator"], GpioOutput)
        value = args["value"]
        hw.outputs[act.name].value = value
        return Outcome({"actuator": act.name, "value": value}, {"actuator": act.name, "value": value})

    async def mqtt_publish(self, args: dict[str, Any]) -> Outcome:
        args = _canonical("mqtt.publish", args)
        hw = self._hardware()
        if "actuator" in args:
            act = hw.actuator_of(args["actuator"], MqttActuator)
            topic, qos, retain = act.topic, act.qos, act.retain
        else:
            topic, qos, retain = args["topic"], args["qos"], args["retain"]
        data = _payload(args["payload"])
        mid = await hw.mqtt_publish(topic, data, qos=qos, retain=retain)
        info = {"topic": topic, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mid": mid}
        return Outcome(info, info)

    async def serial_write(self, args: dict[str, Any]) -> Outcome:
        args = _canonical("serial.write", args)
        hw = self._hardware()
        act = hw.actuator_of(args["actuator"], SerialActuator)
        raw = args["data"].encode()
        if len(raw) > act.line.max_frame:
            raise ActionArgsError(f"serial.write: {len(raw)} bytes exceed max_frame {act.line.max_frame}")
        n = await hw.serial_write(act, raw)
        return Outcome(
            {"actuator": act.name, "bytes": n},
            {"actuator": act.name, "bytes": n, "sha256": hashlib.sha256(raw).hexdigest()},
        )

    async def send_email(self, args: dict[str, Any]) -> Outcome:
        if self.outbox.smtp is None:
            raise ActionArgsError("send_email: no SMTP relay is configured (device config section 'smtp')")
        msg = parse_email_args(args, now=self.clock())
        await self.outbox.enqueue(msg)
        pending = len(self.outbox.pending())
        return Outcome(
            {"queued": msg.id, "pending": pending},
            {"queued": msg.id, "recipients": len(msg.to), "sha256": hashlib.sha256(msg.to_json()).hexdigest()},
        )

    async def schedule_event(self, args: dict[str, Any]) -> Outcome:
        event = parse_event_args(args)
        path = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.calendar.add_blocking(event, now=self.clock())
        )
        reply = {"uid": event.uid, "start": event.start.isoformat(), "end": event.end.isoformat(), "file": path.name}
        return Outcome(reply, {"uid": event.uid, "start": reply["start"], "end": reply["end"]})

    async def fetch_data(self, args: dict[str, Any]) -> Outcome:
        url = parse_fetch_args(args)
        cfg = self._config().fetch
        parent = CURRENT_DECISION.get()  # read here: the executor thread does not inherit the context
        authorize = functools.partial(self._redirect_allowed, parent=parent) if self.authorize else None
        result = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: fetch_blocking(url, max_bytes=cfg.max_bytes, timeout_s=cfg.timeout_s, authorize=authorize),
        )
        return Outcome(result.reply(), result.record())

    def _redirect_allowed(self, url: str, *, parent: int | None) -> None:
        """A redirect is a new fetch_data request: the policy decides (and records) it, naming the
        decision of the fetch it continues (``parent``), whose ``action.result`` is its outcome too."""
        assert self.authorize is not None
        decision = self.authorize("fetch_data", {"url": url}, parent=parent)
        if not decision.allowed:
            raise RedirectDeniedError(
                f"fetch_data: the redirect to {url} was denied by the policy ({decision.rule}: {decision.reason})"
            )
