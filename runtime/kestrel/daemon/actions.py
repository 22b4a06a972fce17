"""Built-in action handlers: what each action does once the policy allowed it.

A handler returns an :class:`Outcome`: ``reply`` goes back to the caller,
``record`` into the ledger's ``action.result`` (digests and sizes, never private
payloads). Bad arguments raise :class:`ActionArgsError`; a device or network that
cannot be used raises a TransportError. Either way the failure is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..errors import DataError
from .calendar import CalendarStore, parse_event_args
from .config import DeviceConfig, GpioOutput, MqttActuator, SerialActuator
from .fetch import fetch_blocking, parse_fetch_args
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


def _level(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "on", "off", "true", "false"):
        return 1 if value.strip().lower() in ("1", "on", "true") else 0
    raise ActionArgsError(f"gpio.write: 'value' must be 0 or 1 (or on/off), got {value!r}")


def _payload(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ActionArgsError(f"payload cannot be sent as JSON: {exc}") from None


def _only(action: str, args: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(args) - allowed
    if unknown:
        raise ActionArgsError(f"{action}: unknown argument(s) {', '.join(sorted(unknown))}",
                              hint=f"{action} takes: {', '.join(sorted(allowed))}")


class Actions:
    """Dispatches an allowed action to its handler."""

    def __init__(self, *, config: Callable[[], DeviceConfig], hardware: Callable[[], Any], outbox: Outbox,
                 calendar: CalendarStore, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._hardware = hardware
        self.outbox = outbox
        self.calendar = calendar
        self.clock = clock
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Outcome]]] = {
            "gpio.write": self.gpio_write, "mqtt.publish": self.mqtt_publish, "serial.write": self.serial_write,
            "send_email": self.send_email, "schedule_event": self.schedule_event, "fetch_data": self.fetch_data,
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
        _only("gpio.write", args, {"actuator", "value"})
        hw = self._hardware()
        act = hw.actuator_of(args.get("actuator"), GpioOutput)
        value = _level(args.get("value"))
        hw.outputs[act.name].value = value
        return Outcome({"actuator": act.name, "value": value}, {"actuator": act.name, "value": value})

    async def mqtt_publish(self, args: dict[str, Any]) -> Outcome:
        _only("mqtt.publish", args, {"actuator", "topic", "payload", "qos", "retain"})
        hw = self._hardware()
        if "actuator" in args:
            act = hw.actuator_of(args["actuator"], MqttActuator)
            topic, qos, retain = act.topic, act.qos, act.retain
        else:
            topic = args.get("topic")
            if not isinstance(topic, str) or not topic or any(c in topic for c in "#+\0"):
                raise ActionArgsError("mqtt.publish needs 'actuator' or a concrete 'topic' (no wildcards)")
            qos, retain = args.get("qos", 1), bool(args.get("retain", False))
            if qos not in (0, 1, 2):
                raise ActionArgsError("mqtt.publish: 'qos' must be 0, 1 or 2")
        data = _payload(args.get("payload", ""))
        mid = await hw.mqtt_publish(topic, data, qos=qos, retain=retain)
        info = {"topic": topic, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mid": mid}
        return Outcome(info, info)

    async def serial_write(self, args: dict[str, Any]) -> Outcome:
        _only("serial.write", args, {"actuator", "data"})
        hw = self._hardware()
        act = hw.actuator_of(args.get("actuator"), SerialActuator)
        data = args.get("data")
        if not isinstance(data, (str, bytes)):
            raise ActionArgsError("serial.write needs 'data' (text)")
        raw = data.encode() if isinstance(data, str) else data
        if len(raw) > act.line.max_frame:
            raise ActionArgsError(f"serial.write: {len(raw)} bytes exceed max_frame {act.line.max_frame}")
        n = await hw.serial_write(act, raw)
        return Outcome({"actuator": act.name, "bytes": n}, {"actuator": act.name, "bytes": n,
                                                             "sha256": hashlib.sha256(raw).hexdigest()})

    async def send_email(self, args: dict[str, Any]) -> Outcome:
        if self.outbox.smtp is None:
            raise ActionArgsError("send_email: no SMTP relay is configured (device config section 'smtp')")
        msg = parse_email_args(args, now=self.clock())
        await self.outbox.enqueue(msg)
        pending = len(self.outbox.pending())
        return Outcome({"queued": msg.id, "pending": pending},
                       {"queued": msg.id, "recipients": len(msg.to),
                        "sha256": hashlib.sha256(msg.to_json()).hexdigest()})

    async def schedule_event(self, args: dict[str, Any]) -> Outcome:
        event = parse_event_args(args)
        path = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.calendar.add_blocking(event, now=self.clock()))
        reply = {"uid": event.uid, "start": event.start.isoformat(), "end": event.end.isoformat(),
                 "file": path.name}
        return Outcome(reply, {"uid": event.uid, "start": reply["start"], "end": reply["end"]})

    async def fetch_data(self, args: dict[str, Any]) -> Outcome:
        url = parse_fetch_args(args)
        cfg = self._config().fetch
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: fetch_blocking(url, max_bytes=cfg.max_bytes, timeout_s=cfg.timeout_s))
        return Outcome(result.reply(), result.record())
