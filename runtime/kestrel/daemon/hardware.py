"""The I/O a device config asks for: pins, serial ports, MQTT, and the tasks that read them.

:class:`Hardware` is built from one :class:`DeviceConfig` and started and stopped
as a unit (a reload builds a new one). Readings go to a :class:`Sink` on the loop
thread; nothing here decides anything. paho, pyserial and gpiod are imported only
when the config uses them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Protocol

from ..errors import ConfigError, KestrelError
from .config import (
    DeviceConfig,
    GpioInput,
    GpioOutput,
    MqttSensor,
    PeriodicSensor,
    SerialActuator,
    SerialLine,
    SerialSensor,
)
from .decode import PayloadError, decode_frame, decode_payload

__all__ = ["Hardware", "Sink"]

log = logging.getLogger("kestrel.daemon.hardware")


class Sink(Protocol):
    def sensor_value(self, sensor: str, value: Any) -> None: ...
    def sensor_fault(self, sensor: str, state: str, detail: dict[str, Any]) -> None: ...
    def bad_payload(self, sensor: str, topic: str, payload: bytes, reason: str) -> None: ...
    def mqtt_command(self, topic: str, payload: bytes) -> None: ...
    def ota_bundle(self, payload: bytes, source: str) -> None: ...


_BIAS = {"as_is": "DISABLED", "disabled": "DISABLED", "pull_up": "PULL_UP", "pull_down": "PULL_DOWN"}


class Hardware:
    def __init__(
        self, cfg: DeviceConfig, *, factory: Any, sink: Sink, agent_id: str, ota_topic: str | None = None
    ) -> None:
        self.cfg = cfg
        self.factory = factory
        self.sink = sink
        self.agent_id = agent_id
        self.ota_topic = ota_topic
        self.outputs: dict[str, Any] = {}
        self.inputs: dict[str, Any] = {}
        self.ports: dict[str, Any] = {}  # by device path; a sensor and an actuator may share one
        self.bridge: Any = None
        self._stopping = False  # set by stop(): a disconnect then is ours, not the broker's
        self.sensor_state: dict[str, str] = {}
        self.counters: dict[str, dict[str, int]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._edge_queue: Any = None
        self._by_pin: dict[str, GpioInput] = {}

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.cfg
        if any(isinstance(s, (GpioInput, PeriodicSensor)) for s in cfg.sensors) or any(
            isinstance(a, GpioOutput) for a in cfg.actuators
        ):
            from ..io.gpio import Bias, Edge, EdgeQueue

            self._edge_queue = EdgeQueue(cfg.limits.event_queue)
            for a in cfg.actuators:
                if isinstance(a, GpioOutput):
                    self.outputs[a.name] = self._pin(
                        f"actuators.{a.name}.pin",
                        self.factory.output,
                        a.pin,
                        initial=a.initial,
                        active_low=a.active_low,
                    )
            for s in cfg.sensors:
                line = s.pin if isinstance(s, (GpioInput, PeriodicSensor)) else None  # a periodic one may have none
                if line:
                    edge = Edge(s.edge) if isinstance(s, GpioInput) and s.mode == "edge" else Edge.NONE
                    gi = s if isinstance(s, GpioInput) else None
                    pin = self._pin(
                        f"sensors.{s.name}.pin",
                        self.factory.input,
                        line,
                        edge=edge,
                        bias=getattr(Bias, _BIAS[gi.bias if gi else "as_is"]),
                        debounce_ms=gi.debounce_ms if gi else 0.0,
                        active_low=gi.active_low if gi else False,
                        queue=self._edge_queue,
                    )
                    self.inputs[s.name] = pin
                    if gi is not None:
                        self._by_pin[pin.name] = gi
            if self._by_pin:
                self._spawn(self._edges(), "gpio-edges")
        for s in cfg.sensors:
            self.sensor_state[s.name] = "ok"
            if isinstance(s, GpioInput):
                pin = self.inputs[s.name]
                self.sink.sensor_value(s.name, pin.value)
                if s.mode == "level":
                    self._spawn(self._level(s, pin), f"level-{s.name}")
            elif isinstance(s, PeriodicSensor):
                self._spawn(self._periodic(s), f"periodic-{s.name}")
            elif isinstance(s, SerialSensor):
                port = await self._port(s.line, s.name)
                self._spawn(self._serial(s, port), f"serial-{s.name}")
        for a in cfg.actuators:
            if isinstance(a, SerialActuator):
                await self._port(a.line, a.name)
        if cfg.mqtt is not None:
            await self._start_mqtt()

    def _pin(self, key: str, open_fn: Any, pin: str, **opts: Any) -> Any:
        """Open a pin; a pin the board does not have (or that is busy) is the config's error: say where."""
        try:
            return open_fn(pin, **opts)
        except KestrelError as exc:
            raise ConfigError(
                exc.message,
                path=self.cfg.source,
                key=key,
                hint=exc.hint or "see the board profile for the pin names it knows",
            ) from None

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for port in self.ports.values():
            try:
                await port.close()
            except Exception as exc:
                log.warning("closing serial port: %s", exc)
        self.ports.clear()
        if self.bridge is not None:
            try:
                await self.bridge.aclose()
            except Exception as exc:
                log.warning("closing MQTT bridge: %s", exc)
            self.bridge = None
        for pin in [*self.inputs.values(), *self.outputs.values()]:
            try:
                pin.close()
            except Exception as exc:
                log.warning("closing pin: %s", exc)
        self.inputs.clear()
        self.outputs.clear()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("sensor task %s crashed: %r", task.get_name(), task.exception())

    # -- health ------------------------------------------------------------------------------
    def unhealthy(self) -> str | None:
        """None while every reader task runs (a sensor that is offline but being retried is fine)."""
        for t in self._tasks:
            if t.done() and not t.cancelled():
                return f"sensor task {t.get_name()} stopped"
        return None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in self.cfg.sensors:
            info: dict[str, Any] = {"type": s.kind, "state": self.sensor_state.get(s.name, "ok")}
            info.update(self.counters.get(s.name, {}))
            if isinstance(s, SerialSensor) and s.line.port in self.ports:
                h = self.ports[s.line.port].health
                info.update(
                    state=_sensor_state(h) or info["state"],
                    frames=h.frames,
                    garbage_bytes=h.garbage_bytes,
                    bad_checksums=h.bad_checksums,
                    overruns=h.overruns,
                    reconnects=h.reconnects,
                )
            out[s.name] = info
        if self._edge_queue is not None:
            out.setdefault("_gpio", {})["overflows"] = self._edge_queue.overflows
        return out

    def _count(self, sensor: str, key: str) -> None:
        c = self.counters.setdefault(sensor, {})
        c[key] = c.get(key, 0) + 1

    def _set_state(self, sensor: str, state: str, detail: dict[str, Any]) -> None:
        if self.sensor_state.get(sensor) != state:
            self.sensor_state[sensor] = state
            self.sink.sensor_fault(sensor, state, detail)

    # -- GPIO --------------------------------------------------------------------------------
    async def _edges(self) -> None:
        """One consumer for every edge input; drains what is queued before waiting again."""
        q = self._edge_queue
        while True:
            ev = await q.get()
            while ev is not None:
                s = self._by_pin.get(ev.pin)
                if s is not None:
                    self.sink.sensor_value(s.name, ev.value)
                try:
                    ev = q.get_nowait()
                except asyncio.QueueEmpty:
                    ev = None

    async def _level(self, s: GpioInput, pin: Any) -> None:
        last = pin.value
        while True:
            await asyncio.sleep(s.poll_s)
            v = pin.value
            if v != last:
                last = v
                self.sink.sensor_value(s.name, v)

    async def _periodic(self, s: PeriodicSensor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if s.pin:
                    value: Any = self.inputs[s.name].value
                else:
                    text = await loop.run_in_executor(None, _read_small, s.file)
                    value = float(text.strip()) * s.scale
                self._set_state(s.name, "ok", {})
                self.sink.sensor_value(s.name, value)
            except (OSError, ValueError) as exc:
                self._count(s.name, "read_errors")
                self._set_state(s.name, "unavailable", {"error": str(exc)[:200]})
            await asyncio.sleep(s.every_s)

    # -- serial ------------------------------------------------------------------------------
    async def _port(self, line: SerialLine, owner: str) -> Any:
        if line.port in self.ports:
            return self.ports[line.port]
        from ..io.serial import LengthPrefixedFraming, LineFraming, SerialPort

        nmea = any(
            isinstance(s, SerialSensor) and s.line.port == line.port and s.format == "nmea" for s in self.cfg.sensors
        )
        if line.framing == "length_prefixed":
            framing: Any = LengthPrefixedFraming(length_bytes=line.length_bytes, crc=line.crc, max_frame=line.max_frame)
        else:
            framing = LineFraming(nmea_checksum=nmea, max_line=line.max_frame)
        port = SerialPort(
            line.port,
            baudrate=line.baud,
            parity={"none": "N", "even": "E", "odd": "O"}[line.parity],
            framing=framing,
            queue_size=self.cfg.limits.event_queue,
            on_state_change=functools.partial(self._serial_state, owner),
        )
        await port.open()
        self.ports[line.port] = port
        return port

    def _serial_state(self, owner: str, health: Any) -> None:
        state = _sensor_state(health)
        if state in ("ok", "unavailable") and self.cfg.sensor(owner) is not None:
            detail = {"reconnects": health.reconnects}
            if state == "unavailable":  # an ok record carries no (old) error
                detail["error"] = health.last_error
            self._set_state(owner, state, detail)

    async def _serial(self, s: SerialSensor, port: Any) -> None:
        async for frame in port:
            try:
                value = decode_frame(s.format, frame.data)
            except PayloadError as exc:
                self._count(s.name, "bad_frames")
                log.warning("sensor %s: dropped a bad frame: %s", s.name, exc.message)
                continue
            self.sink.sensor_value(s.name, value)

    async def serial_write(self, actuator: SerialActuator, data: bytes) -> int:
        port = self.ports[actuator.line.port]
        if actuator.line.framing == "line" and not data.endswith(b"\n"):
            data += b"\n"
        elif actuator.line.framing == "length_prefixed":
            from ..io.framing import LengthPrefixedFraming, encode_frame

            line = actuator.line
            data = encode_frame(
                LengthPrefixedFraming(length_bytes=line.length_bytes, crc=line.crc, max_frame=line.max_frame), data
            )
        await port.write(data)
        return len(data)

    # -- MQTT --------------------------------------------------------------------------------
    async def _start_mqtt(self) -> None:
        from ..io.mqtt import MqttBridge

        m = self.cfg.mqtt
        assert m is not None
        biggest = max([m.max_payload] + [s.max_payload for s in self.cfg.sensors if isinstance(s, MqttSensor)])
        password = None
        if m.username and m.password_file:
            from .._internal.fsutil import check_private, read_bytes

            check_private(m.password_file)
            password = read_bytes(m.password_file, what="MQTT password file", max_size=4096).decode().strip()
        tls = None
        if m.tls:
            import ssl

            tls = ssl.create_default_context(cafile=m.ca_file)
        self.bridge = MqttBridge(
            m.host,
            m.port,
            agent_id=self.agent_id,
            keepalive=m.keepalive_s,
            session_expiry=m.session_expiry_s,
            username=m.username,
            password=password,
            tls=tls,
            max_payload=max(biggest, self.cfg.ota.max_bundle if self.ota_topic else 0),
            on_connection_change=self._mqtt_state,
            on_rejected=self._mqtt_rejected,
        )
        await self.bridge.start()
        for s in self.cfg.sensors:
            if isinstance(s, MqttSensor):
                sub = await self.bridge.subscribe(s.topic, qos=s.qos, queue_size=self.cfg.limits.event_queue)
                self._spawn(self._mqtt_sensor(s, sub), f"mqtt-{s.name}")
        if m.commands_topic:
            sub = await self.bridge.subscribe(m.commands_topic, qos=1, queue_size=self.cfg.limits.action_queue)
            self._spawn(self._mqtt_forward(sub, self.sink.mqtt_command), "mqtt-commands")
        if self.ota_topic:
            sub = await self.bridge.subscribe(self.ota_topic, qos=1, queue_size=4)
            self._spawn(self._mqtt_forward(sub, lambda t, p: self.sink.ota_bundle(p, f"mqtt:{t}")), "mqtt-ota")

    def _mqtt_rejected(self, topic: str, payload: bytes, why: str) -> None:
        """The bridge refused a message over its size limit: quarantine it for the sensor(s) it was for."""
        from ..io.mqtt import topic_matches

        m = self.cfg.mqtt
        names = [s.name for s in self.cfg.sensors if isinstance(s, MqttSensor) and topic_matches(s.topic, topic)]
        for name in names:
            self._count(name, "bad_payloads")
        if m is not None and m.commands_topic and topic_matches(m.commands_topic, topic):
            names.append("commands")
        if self.ota_topic and topic_matches(self.ota_topic, topic):
            names.append("ota")
        limit = self.bridge.max_payload if self.bridge is not None else 0
        self.sink.bad_payload(
            ",".join(names),
            topic,
            payload,
            f"{why}: {len(payload)} bytes, over the bridge's {limit}-byte limit (mqtt.max_payload)",
        )

    def _mqtt_state(self, connected: bool) -> None:
        if connected:
            log.info("MQTT broker connected")
        elif self._stopping:
            log.info("MQTT: disconnected from the broker (stopping)")
        else:
            log.info("MQTT broker unreachable; working offline")

    async def _mqtt_sensor(self, s: MqttSensor, sub: Any) -> None:
        async for msg in sub:
            try:
                value = decode_payload(s.payload, msg.payload, max_size=s.max_payload)
            except PayloadError as exc:
                self._count(s.name, "bad_payloads")
                self.sink.bad_payload(s.name, msg.topic, msg.payload, exc.message)
                continue
            self.sink.sensor_value(s.name, value)

    async def _mqtt_forward(self, sub: Any, handler: Any) -> None:
        async for msg in sub:
            handler(msg.topic, msg.payload)

    async def mqtt_publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int:
        if self.bridge is None:
            raise KestrelError("no MQTT broker is configured (device config section 'mqtt')")
        return await self.bridge.publish(topic, payload, qos=qos, retain=retain)

    def actuator_of(self, name: Any, kind: type) -> Any:
        a = self.cfg.actuator(name) if isinstance(name, str) else None
        if not isinstance(a, kind):
            known = [x.name for x in self.cfg.actuators if isinstance(x, kind)]
            from .actions import ActionArgsError

            raise ActionArgsError(f"no such actuator {name!r}", hint=f"configured: {', '.join(known) or 'none'}")
        return a


def _read_small(path: str | None) -> str:
    with open(str(path), "rb") as fh:
        return fh.read(4096).decode("ascii", "replace")


def _sensor_state(health: Any) -> str | None:
    """A serial port's state in the words sensors use (docs/device-config.md, status, sensor.fault):
    ``ok``, ``unavailable`` (lost, or not there since the start), ``connecting`` (first attempt),
    ``closed``."""
    if health.state == "connected":
        return "ok"
    if health.state == "reconnecting" or (health.state == "connecting" and health.last_error):
        return "unavailable"
    return health.state
