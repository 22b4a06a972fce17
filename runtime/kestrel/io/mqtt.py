"""An asyncio MQTT 5 bridge over paho-mqtt 2.x (in the style of aiomqtt).

Threading (docs/io.md, "MQTT threading"): one network thread owned by the bridge
runs paho's connect/reconnect and ``Client.loop()``; it never publishes. Publish,
subscribe, unsubscribe and disconnect are called only from the asyncio loop thread.
paho's packet queue is protected by its own locks; a no-op ``on_socket_register_write``
hook makes paho hand every socket write to the network thread (it wakes through
paho's internal socket pair) instead of writing from the caller's thread. paho
callbacks run on the network thread and only forward into the loop with
``call_soon_threadsafe`` (or push into thread-safe bounded queues).
Counters have one owner, a :class:`Counters` object per bridge and per subscription: either
thread changes them only through ``Counters.add`` (under the object's lock), and ``stats`` reads
one consistent snapshot under the same lock.

The broker being down at start, or going away, never raises into the caller's loop:
``connected`` turns False, ``on_connection_change`` is called, QoS 1 publishes queue
(bounded) and complete on PUBACK after the reconnect; the session (clean_start=False,
session expiry) keeps the broker-side QoS 1 state across reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, DataError
from ._queue import BoundedQueue, QueueClosed
from .backoff import Backoff
from .errors import MqttError, PayloadTooLarge

__all__ = ["MqttBridge", "MqttMessage", "MqttStats", "Subscription", "client_id_for", "topic_matches"]

log = logging.getLogger(__name__)
_HEADROOM = 64 * 1024  # topic + properties allowance above max_payload in MaximumPacketSize


def client_id_for(agent_id: str) -> str:
    """Stable MQTT client id of an agent: ``kestrel-`` + first 16 hex of sha256(AgentID)."""
    return "kestrel-" + hashlib.sha256(agent_id.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class MqttMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    timestamp_ns: int  # CLOCK_MONOTONIC when it arrived


@dataclass(frozen=True)
class MqttStats:
    connects: int
    disconnects: int
    published: int
    acked: int
    received: int
    oversize: int
    overflows: int


class Subscription:
    """Messages matching one topic filter, in a bounded queue (oldest dropped, counted)."""

    def __init__(self, bridge: MqttBridge, topic_filter: str, qos: int, queue_size: int) -> None:
        self.topic_filter, self.qos = topic_filter, qos
        self._bridge = bridge
        self.queue: BoundedQueue[MqttMessage] = BoundedQueue(queue_size)
        self.counts = Counters("oversize")  # changed on the network thread, read on the loop

    @property
    def oversize(self) -> int:
        """Messages on this filter dropped for exceeding ``max_payload``."""
        return self.counts["oversize"]

    @property
    def overflows(self) -> int:
        return self.queue.overflows

    def __aiter__(self) -> AsyncIterator[MqttMessage]:
        return aiter(self.queue)

    async def get(self) -> MqttMessage:
        try:
            return await self.queue.get()
        except QueueClosed:
            raise MqttError(f"subscription {self.topic_filter!r} is closed") from None

    async def close(self) -> None:
        await self._bridge.unsubscribe(self)


def _not_started() -> MqttError:
    return MqttError("the MQTT bridge is not started (use `async with MqttBridge(...)`)")


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """TCP_NODELAY on the broker connection. paho leaves Nagle's algorithm on, so a packet written
    while the previous one is unacknowledged waits for the broker's delayed ACK (~40 ms on Linux):
    a peer's reply published right after acknowledging the request took 40 ms longer."""
    import socket

    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (a websocket wrapper, a test double)
        pass


class MqttBridge:
    """One MQTT 5 session for one agent. Use ``async with MqttBridge(...) as bridge``."""

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        agent_id: str,
        keepalive: int = 30,
        session_expiry: int = 7 * 86400,
        max_payload: int = 256 * 1024,
        max_queued: int = 1000,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        on_connection_change: Callable[[bool], None] | None = None,
        on_rejected: Callable[[str, bytes, str], None] | None = None,
    ) -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"invalid MQTT port {port!r}", key="port")
        if not agent_id:
            raise ConfigError("an AgentID is required to derive the MQTT client id", key="agent_id")
        if max_payload < 1 or max_queued < 1 or keepalive < 5 or session_expiry < 0:
            raise ConfigError("max_payload, max_queued >= 1, keepalive >= 5 s, session_expiry >= 0 required")
        self.host, self.port, self.client_id = host, port, client_id_for(agent_id)
        self.keepalive, self.session_expiry = keepalive, session_expiry
        self.max_payload, self.max_queued = max_payload, max_queued
        self._backoff = Backoff(initial=reconnect_initial, maximum=reconnect_max)
        self._auth, self._tls = (username, password), tls
        self._on_connection_change, self._on_rejected = on_connection_change, on_rejected
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closing = False  # set by aclose before it disconnects: the thread must not reconnect
        self._connected = False
        self._connected_event: asyncio.Event | None = None
        self._subs: tuple[Subscription, ...] = ()  # copy-on-write: read by the network thread
        self._pending: dict[int, asyncio.Future[None]] = {}  # PUBACK waiters by message id
        self._pending_sub: dict[int, asyncio.Future[list[Any]]] = {}  # SUBACK waiters by message id
        self._counts = Counters("connects", "disconnects", "published", "acked", "received", "oversize")
        self.last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the network thread. Never raises because the broker is unreachable."""
        if self._thread is not None:
            return
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._loop = asyncio.get_running_loop()
        self._connected_event = asyncio.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        c.max_queued_messages_set(self.max_queued)
        c.connect_timeout = 5.0
        if self._auth[0] is not None:
            c.username_pw_set(*self._auth)
        if self._tls is not None:
            c.tls_set_context(self._tls)
        c.on_connect, c.on_disconnect = self._cb_connect, self._cb_disconnect
        c.on_publish, c.on_subscribe, c.on_message = self._cb_publish, self._cb_subscribe, self._cb_message
        c.on_socket_register_write = lambda *_: None  # all socket writes happen on the network thread
        c.on_socket_open = _no_delay  # small packets (PUBACK, then a PUBLISH) are not held by Nagle
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        props.MaximumPacketSize = self.max_payload + _HEADROOM
        self._client, self._connect_props = c, props
        self._thread = threading.Thread(target=self._run, name=f"mqtt {self.host}:{self.port}", daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        """Disconnect, stop the thread, fail pending publishes, end subscriptions. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._closing = True
        try:
            if self._connected:
                self._client.disconnect()  # the network thread sends it, then sees the stop
            self._stop.set()
            await asyncio.shield(asyncio.to_thread(thread.join, 10.0))
        finally:
            self._set_connected(False)
            waiters: list[asyncio.Future[Any]] = [*self._pending.values(), *self._pending_sub.values()]
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(MqttError("the MQTT bridge was closed before the broker acknowledged"))
            self._pending.clear()
            self._pending_sub.clear()
            for sub in self._subs:
                sub.queue.close()

    async def __aenter__(self) -> MqttBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        return self._connected

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected; False if ``timeout`` passed first."""
        if self._connected_event is None:
            raise MqttError("the MQTT bridge is not started")
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def stats(self) -> MqttStats:
        return MqttStats(**self._counts.snapshot(), overflows=sum(s.overflows for s in self._subs))

    # ------------------------------------------------------------------ publish / subscribe

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Publish; for QoS 1 return once the broker's PUBACK arrived (queued while offline)."""
        self._check_started()
        if not isinstance(payload, (bytes, bytearray)):
            raise DataError("MQTT payloads are bytes; encode JSON or msgpack first")
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(
                f"MQTT payload of {len(payload)} bytes exceeds the {self.max_payload} limit",
                hint="raise max_payload or send a digest and fetch the data otherwise",
            )
        if qos not in (0, 1):
            raise DataError(f"QoS {qos} is not supported; use 0 or 1")
        _check_topic(topic, wildcards=False)
        if qos == 0 and not self._connected:
            raise MqttError("MQTT broker not connected; QoS 0 messages are not queued", reason="offline")
        if qos == 1 and len(self._pending) >= self.max_queued:
            raise MqttError(f"{len(self._pending)} QoS 1 messages already await the broker", reason="queue-full")
        import paho.mqtt.client as mqtt

        info = self._client.publish(topic, bytes(payload), qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            raise MqttError("the MQTT outgoing queue is full", reason="queue-full")
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish failed: {mqtt.error_string(info.rc)}", reason="publish-failed")
        self._counts.add("published")
        if qos == 0:
            return info.mid
        fut = self._pending[info.mid] = self._started_loop().create_future()
        try:
            await fut
        finally:
            self._pending.pop(info.mid, None)
        return info.mid

    async def subscribe(self, topic_filter: str, *, qos: int = 1, queue_size: int = 256) -> Subscription:
        """Subscribe now if connected (waits for SUBACK), and again after every reconnect."""
        self._check_started()
        _check_topic(topic_filter, wildcards=True)
        sub = Subscription(self, topic_filter, qos, queue_size)
        self._subs = (*self._subs, sub)
        if self._connected:
            try:
                await self._send_subscribe(sub)
            except BaseException:
                self._subs = tuple(s for s in self._subs if s is not sub)
                raise
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        self._subs = tuple(s for s in self._subs if s is not sub)
        sub.queue.close()
        if self._connected and not any(s.topic_filter == sub.topic_filter for s in self._subs):
            self._client.unsubscribe(sub.topic_filter)

    async def _send_subscribe(self, sub: Subscription) -> None:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        opts = SubscribeOptions(qos=sub.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        rc, mid = self._client.subscribe(sub.topic_filter, options=opts)
        if mid is None:
            return  # connection dropped meanwhile: re-subscribed on reconnect
        fut = self._pending_sub[mid] = self._started_loop().create_future()
        try:
            codes = await fut
        finally:
            self._pending_sub.pop(mid, None)
        bad = [c for c in codes if getattr(c, "is_failure", False)]
        if bad:
            raise MqttError(f"broker refused subscription {sub.topic_filter!r}: {bad[0]}", reason=str(bad[0]))

    def _check_started(self) -> None:
        if self._thread is None:
            raise _not_started()
        self._started_loop()

    def _started_loop(self) -> asyncio.AbstractEventLoop:
        """The loop that started the bridge: its futures and tasks live there."""
        if self._loop is None:
            raise _not_started()
        return self._loop

    # ------------------------------------------------------------------ network thread

    def _run(self) -> None:
        import paho.mqtt.client as mqtt

        c, first = self._client, True
        while not self._closing:
            try:
                if first:
                    first = False
                    c.connect(self.host, self.port, self.keepalive, clean_start=False, properties=self._connect_props)
                else:
                    c.reconnect()
            except Exception as exc:  # noqa: BLE001 - refused, DNS, TLS, timeouts: all mean "retry later"
                self._note_error(f"cannot connect to {self.host}:{self.port}: {exc}")
                self._stop.wait(self._backoff.next())
                continue
            rc = mqtt.MQTT_ERR_SUCCESS
            try:
                while rc == mqtt.MQTT_ERR_SUCCESS and not (self._stop.is_set() and not c.want_write()):
                    rc = c.loop(timeout=1.0)
            except Exception as exc:  # noqa: BLE001 - the thread must survive anything paho raises
                log.exception("mqtt: network loop failed")
                rc = mqtt.MQTT_ERR_UNKNOWN
                self._note_error(f"network loop failed: {exc}")
                self._call(self._set_connected, False)
            if self._closing:
                break
            self._note_error(f"connection to {self.host}:{self.port} lost: {mqtt.error_string(rc)}")
            self._stop.wait(self._backoff.next())

    def _note_error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("mqtt: %s", text)
        self.last_error = text

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closed meanwhile
                pass

    def _cb_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._note_error(f"broker refused the connection: {reason}")
            return
        self._backoff.reset()
        self._call(self._on_connected, bool(getattr(flags, "session_present", False)))

    def _cb_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._call(self._set_connected, False)

    def _cb_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._call(self._on_puback, mid, reason)

    def _cb_subscribe(self, client: Any, userdata: Any, mid: int, codes: list[Any], props: Any) -> None:
        self._call(self._on_suback, mid, codes)

    def _cb_message(self, client: Any, userdata: Any, msg: Any) -> None:
        size = len(msg.payload)
        subs = [s for s in self._subs if _matches(s.topic_filter, msg.topic)]
        if size > self.max_payload:
            for s in subs:
                s.counts.add("oversize")
            # the payload itself (at most max_payload + _HEADROOM: the broker drops anything larger, see
            # MaximumPacketSize) so that the quarantine keeps its size, hash and bytes
            self._call(self._rejected, msg.topic, bytes(msg.payload), "oversize")
            return
        item = MqttMessage(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.monotonic_ns())
        self._counts.add("received")  # before delivery, so a consumer never sees the count lag behind
        for s in subs:
            s.queue.push(item)

    # ------------------------------------------------------------------ loop-thread handlers

    def _on_connected(self, session_present: bool) -> None:
        self._counts.add("connects")
        self._set_connected(True)
        for sub in self._subs:  # idempotent; retained messages only for new subscriptions
            self._started_loop().create_task(self._resubscribe(sub))

    async def _resubscribe(self, sub: Subscription) -> None:
        try:
            await self._send_subscribe(sub)
        except MqttError as exc:
            self._note_error(str(exc))

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if connected:
            if self._connected_event is not None:
                self._connected_event.set()
        else:
            self._counts.add("disconnects")
            if self._connected_event is not None:
                self._connected_event.clear()
            for fut in self._pending_sub.values():  # will be re-sent after the reconnect
                if not fut.done():
                    fut.set_result([])
        if self._on_connection_change is not None:
            try:
                self._on_connection_change(connected)
            except Exception:
                log.exception("on_connection_change callback failed")

    def _on_puback(self, mid: int, reason: Any) -> None:
        fut = self._pending.get(mid)
        if fut is None or fut.done():
            return
        if getattr(reason, "is_failure", False):
            fut.set_exception(MqttError(f"broker refused the message: {reason}", reason=str(reason)))
        else:
            self._counts.add("acked")
            fut.set_result(None)

    def _on_suback(self, mid: int, codes: list[Any]) -> None:
        fut = self._pending_sub.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(list(codes))

    def _rejected(self, topic: str, payload: bytes, why: str) -> None:
        self._counts.add("oversize")
        log.log(
            logging.INFO if self._on_rejected is not None else logging.WARNING,
            "mqtt: dropped %d-byte message on %s (%s, limit %d)",
            len(payload),
            topic,
            why,
            self.max_payload,
        )
        if self._on_rejected is not None:
            try:
                self._on_rejected(topic, payload, why)
            except Exception:
                log.exception("on_rejected callback failed")


class Counters:
    """Named counters with one owner: changed only through :meth:`add`, from any thread, under a lock."""

    __slots__ = ("_lock", "_values")

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        """All counters as of one instant."""
        with self._lock:
            return dict(self._values)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the subscription filter ``topic_filter`` (``+``/``#`` wildcards)."""
    from paho.mqtt.client import topic_matches_sub

    return topic_matches_sub(topic_filter, topic)


_matches = topic_matches


def _check_topic(topic: str, *, wildcards: bool) -> None:
    if not isinstance(topic, str) or not topic or len(topic.encode("utf-8")) > 65535 or "\0" in topic:
        raise DataError(f"invalid MQTT topic {topic!r}")
    if not wildcards and ("+" in topic or "#" in topic):
        raise DataError(f"MQTT topic {topic!r} contains a wildcard; publish needs a concrete topic")
    if wildcards:
        parts = topic.split("/")
        for i, p in enumerate(parts):
            if ("#" in p and (p != "#" or i != len(parts) - 1)) or ("+" in p and p != "+"):
                raise DataError(f"invalid MQTT topic filter {topic!r}")
