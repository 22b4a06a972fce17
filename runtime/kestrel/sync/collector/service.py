"""The collector process: subscribe to the fleet's ledger topics, verify, store (I/O shell).

It drives paho-mqtt directly (a server process, not the agent runtime) because it needs two
things the agent's bridge does not offer: *manual acknowledgement* (PUBACK is sent only after the
message's effect is committed to the store, so a crash between receipt and commit makes the broker
deliver it again) and *shared subscriptions* (``$share/<group>/kestrel/+/ledger/batch``), with which
several collectors split a large fleet. The session is persistent (clean start off, session expiry
set), so messages published while the collector is down wait in the broker. Messages are stored
in groups of up to ``group_max`` per transaction (one fsync) by a worker thread and acknowledged
after the commit.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import TransportError, UsageError
from ..wire import LEDGER_FILTER, encode_resend, resend_topic
from .core import CollectorCore, Outcome
from .store import CollectorStore, Rejection

__all__ = ["CollectorService", "CollectorCounters", "parse_broker"]

log = logging.getLogger("kestrel.collector")


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, port 1883; ``[v6]:PORT``) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, "1883"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"invalid broker address {text!r}", hint="use HOST:PORT, e.g. localhost:1883")
    return host, int(port)


@dataclass
class CollectorCounters:
    messages: int = 0
    verified: int = 0
    duplicates: int = 0
    refused: int = 0
    forks: int = 0
    connects: int = 0


class CollectorService:
    """One collector client. ``run()`` blocks until ``stop()``; ``start()``/``stop()`` run it in a thread."""

    def __init__(
        self,
        store: CollectorStore,
        *,
        host: str,
        port: int,
        group: str | None = None,
        client_id: str | None = None,
        session_expiry: int = 7 * 86400,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        tls: Any = None,
        group_max: int = 64,
        resend_after_s: float = 30.0,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.store = store
        self.core = CollectorCore(store, clock=time.time)
        # the store is unavailable (its own transient errors too): the group is retried later
        self._retryable: tuple[type[BaseException], ...] = (TransportError, *getattr(store, "transient", ()))
        self.host, self.port, self.keepalive = host, port, keepalive
        self.topic = f"$share/{group}/{LEDGER_FILTER}" if group else LEDGER_FILTER
        self.client_id = client_id or (f"kestrel-collector-{group}" if group else "kestrel-collector")
        self.session_expiry = session_expiry
        self.counters = CollectorCounters()
        self._on_outcome = on_outcome
        self._auth, self._tls = (username, password), tls
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.subscribed = threading.Event()  # the broker acknowledged the subscription (SUBACK) on this connection
        self.group_max = group_max
        self.resend_after_s = resend_after_s
        self.resend_requests = 0
        self._queue: queue.Queue[tuple[Any, Any] | None] = queue.Queue()

    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if self._auth[0]:
            client.username_pw_set(*self._auth)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.reconnect_delay_set(0.2, 10)  # type: ignore[arg-type]  # paho annotates int; seconds may be a float
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = lambda *a: self.subscribed.clear()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        self._connect_props = props
        return client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("collector: broker refused the connection: %s", reason)
            return
        self.counters.connects += 1
        client.subscribe(self.topic, qos=1)  # `subscribed` is set by its SUBACK

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any, properties: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.warning("collector: the broker refused the subscription to %s: %s", self.topic, failed[0])
        else:
            log.info("collector: subscribed to %s (connection %d)", self.topic, self.counters.connects)
            self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._queue.put((client, msg))

    def _worker(self) -> None:
        """Store messages in groups (one transaction each), then acknowledge the group to the broker.

        On stop, the group being stored is finished and acknowledged; messages still queued are left
        unacknowledged (the broker delivers them again to this session or the group), so stopping
        never waits for a backlog."""
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            group = [item]
            while len(group) < self.group_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                group.append(nxt)
            try:
                outcomes = self.core.handle_many([(m.topic, bytes(m.payload)) for _, m in group])
            except self._retryable:  # the store is unavailable: retry later
                log.exception("collector: could not store %d message(s); they will be redelivered", len(group))
                group[0][0].disconnect()
                self._stopping.wait(1.0)
                continue
            except Exception:  # a message the collector cannot handle: isolate it rather than loop on it
                log.exception("collector: failed on a group of %d message(s); retrying one by one", len(group))
                outcomes = [self._one(m) for _, m in group]
            for client, m in group:
                client.ack(m.mid, m.qos)
            for out in outcomes:
                self._count(out)

    def _one(self, msg: Any) -> Outcome:
        try:
            return self.core.handle(msg.topic, bytes(msg.payload))
        except Exception as exc:
            log.exception("collector: refusing a message on %s that failed handling", msg.topic)
            did = msg.topic.split("/")[1] if msg.topic.count("/") >= 2 else "?"
            self.store.add_rejection(
                Rejection(
                    did,
                    None,
                    "internal-error",
                    f"{type(exc).__name__}: {exc}",
                    hashlib.sha256(bytes(msg.payload)).hexdigest(),
                    time.time(),
                )
            )
            return Outcome(did, refused=("internal-error",))

    def _watch(self) -> None:
        """Ask an agent to send again when its verified prefix is stuck below held records.

        That happens when this collector never received some acknowledged batches: it joined
        late, or the broker lost them. The agent honours one request per ``resend_interval_s``.
        """
        seen: dict[str, tuple[int, float]] = {}
        while not self._stopping.wait(max(self.resend_after_s / 4, 0.05)):
            now = time.monotonic()
            for a in self.store.summaries():
                if not a.pending:
                    seen.pop(a.did, None)
                    continue
                size, since = seen.get(a.did, (a.verified, now))
                if size != a.verified:
                    size, since = a.verified, now
                if now - since >= self.resend_after_s and self.subscribed.is_set():
                    self._client.publish(resend_topic(a.did), encode_resend(a.verified), qos=1)
                    self.resend_requests += 1
                    log.info("collector: asked %s to resend from record %d", a.did, a.verified)
                    since = now
                seen[a.did] = (size, since)

    def _count(self, out: Outcome) -> None:
        c = self.counters
        c.messages += 1
        c.verified += out.verified
        c.duplicates += out.duplicates
        c.refused += len(out.refused)
        c.forks += out.forks
        for reason in out.refused:
            log.warning("collector: refused from %s: %s", out.did, reason)
        if self._on_outcome is not None:
            self._on_outcome(out)

    #: first and longest wait between attempts to reach a broker that is down (exponential, jittered)
    RETRY_INITIAL_S = 1.0
    RETRY_MAX_S = 30.0

    def run(self) -> None:
        """Connect (retrying while the broker is down) and process messages until stop()."""
        worker = threading.Thread(target=self._worker, name="kestrel-collector-store", daemon=True)
        watch = threading.Thread(target=self._watch, name="kestrel-collector-watch", daemon=True)
        worker.start()
        watch.start()
        try:
            self._run_client()
        finally:
            self._queue.put(None)
            worker.join()
            watch.join()

    def _run_client(self) -> None:
        from ...io.backoff import Backoff

        self._client = client = self._make_client()
        backoff = Backoff(initial=self.RETRY_INITIAL_S, maximum=self.RETRY_MAX_S)
        while not self._stopping.is_set():
            try:
                client.connect(
                    self.host, self.port, keepalive=self.keepalive, clean_start=False, properties=self._connect_props
                )
            except OSError as exc:
                delay = backoff.next()
                # the first failure is a warning; later ones only as the wait grows (not twice a second)
                level = logging.WARNING if backoff.attempts == 1 else logging.INFO
                log.log(
                    level,
                    "collector: broker %s:%d unreachable (%s); next try in %.1f s (attempt %d)",
                    self.host,
                    self.port,
                    exc,
                    delay,
                    backoff.attempts,
                )
                self._stopping.wait(delay)
                continue
            backoff.reset()
            client.loop_forever(retry_first_connection=True)  # returns after disconnect()
            self._stopping.wait(0.2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="kestrel-collector", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._client is not None:
            self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TransportError("the collector did not stop in time")
