"""A simulated fleet for the multi-collector tests and tools/bench/fleet.py.

Agents are real signed logs (:class:`LogBuilder`: real records, real Ed25519 checkpoints) cut into
sync batches; they publish through a real broker at QoS 1 and count a batch *acknowledged* when
its PUBACK arrives, resending what was not acknowledged (as the agent's sync does from its
acknowledged offset). Collectors are real ``kestrel collector run`` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kestrel.sync.wire import SyncBatch, encode_batch, ledger_topic

from .logs import LogBuilder

__all__ = ["SimAgent", "make_agents", "FleetPublisher", "CollectorProcess"]


@dataclass
class SimAgent:
    log: LogBuilder
    batches: list[bytes]  # payloads in ledger order
    ends: list[int]  # records covered after each batch
    acked: set[int] = field(default_factory=set)  # indexes of batches the broker acknowledged
    sent_at: dict[int, float] = field(default_factory=dict)  # batch index -> first publish (monotonic)

    @property
    def did(self) -> str:
        return self.log.did

    @property
    def topic(self) -> str:
        return ledger_topic(self.log.did)


def make_agents(
    count: int, records: int, *, per_batch: int, body: Callable[[int], dict] | None = None, checkpoint_every: int = 1
) -> list[SimAgent]:
    """``count`` agents of ``records`` records each; every ``checkpoint_every``-th batch (and the last)
    carries the checkpoint of its own end, the others none (their records wait in ``pending``)."""
    out = []
    for _ in range(count):
        log = LogBuilder()
        for i in range(records):
            log.append(1, body=body(i) if body else None)
        batches, ends = [], []
        for n, a in enumerate(range(0, records, per_batch)):
            b = min(a + per_batch, records)
            cp = log.checkpoint(b) if (n + 1) % checkpoint_every == 0 or b == records else None
            batches.append(encode_batch(SyncBatch(a, tuple(log.records[a:b]), cp)))
            ends.append(b)
        out.append(SimAgent(log, batches, ends))
    return out


class FleetPublisher:
    """Publishes agents' batches over ``connections`` MQTT clients; retries until every one is acknowledged."""

    def __init__(self, host: str, port: int, *, connections: int = 4, inflight: int = 200) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.clients = []
        self.resend_requests: list[tuple[str, int]] = []  # (did, from): what collectors asked for
        self.resends = 0
        self.resend_interval_s = 10.0  # an agent honours one request per interval (LedgerSync: 60 s)
        self._last_resend: dict[str, float] = {}
        for i in range(connections):
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-fleet-{os.getpid()}-{i}", protocol=mqtt.MQTTv5)
            c.max_inflight_messages_set(inflight)
            c.max_queued_messages_set(0)
            c.reconnect_delay_set(0.1, 2)
            if i == 0:  # the agents honour resend requests (kestrel/<did>/ledger/resend), as LedgerSync does
                c.on_connect = lambda client, *_: client.subscribe("kestrel/+/ledger/resend", qos=1)
                c.on_message = self._on_resend
            c.connect(host, port)
            c.loop_start()
            self.clients.append(c)

    def _on_resend(self, client, userdata, msg) -> None:
        from kestrel.sync.wire import SyncFormatError, decode_resend

        try:
            self.resend_requests.append((msg.topic.split("/")[1], decode_resend(msg.payload)))
        except SyncFormatError:
            pass

    def serve_resends(self, agents: Sequence[SimAgent]) -> None:
        """Publish again every batch after the record each collector request names (the agent's
        sync does this from its own ledger; the broker may have lost the batches)."""
        by_did = {a.did: a for a in agents}
        while self.resend_requests:
            did, start = self.resend_requests.pop(0)
            agent = by_did.get(did)
            if agent is None or time.monotonic() - self._last_resend.get(did, -1e9) < self.resend_interval_s:
                continue
            self._last_resend[did] = time.monotonic()
            for i, end in enumerate(agent.ends):
                if end > start:
                    info = self.clients[1 % len(self.clients)].publish(agent.topic, agent.batches[i], qos=1)
                    self.resends += 1
                    try:
                        info.wait_for_publish(5)
                    except (RuntimeError, ValueError):
                        pass

    def publish_round(self, agents: Sequence[SimAgent], index: int, *, timeout: float = 10.0) -> int:
        """Publish batch ``index`` of each agent (those that have one and are not acknowledged yet);
        return how many are acknowledged after waiting up to ``timeout``."""
        infos = []
        for k, agent in enumerate(agents):
            if index >= len(agent.batches) or index in agent.acked:
                continue
            client = self.clients[k % len(self.clients)]
            agent.sent_at.setdefault(index, time.monotonic())
            infos.append((agent, client.publish(agent.topic, agent.batches[index], qos=1)))
        deadline = time.monotonic() + timeout
        done = 0
        for agent, info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                ok = info.is_published()
            except (RuntimeError, ValueError):  # not connected right now: it is resent on the next pass
                ok = False
            if ok:
                agent.acked.add(index)
                done += 1
        return done

    def publish_all(
        self, agents: Sequence[SimAgent], *, between: Callable[[int], None] | None = None, deadline_s: float = 300.0
    ) -> None:
        """Every batch of every agent, round by round (``between(i)`` after round i), then resend the
        ones not acknowledged until all are (or raise after ``deadline_s``)."""
        rounds = max(len(a.batches) for a in agents)
        for i in range(rounds):
            self.publish_round(agents, i)
            if between is not None:
                between(i)
        deadline = time.monotonic() + deadline_s
        while any(len(a.acked) < len(a.batches) for a in agents):
            if time.monotonic() > deadline:
                raise AssertionError("the broker did not acknowledge every batch in time")
            for i in range(rounds):
                self.publish_round(agents, i, timeout=5.0)

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


class CollectorProcess:
    """``kestrel collector run`` as its own process (stopped with SIGTERM, or SIGKILLed by a fault test)."""

    def __init__(
        self,
        *,
        broker: str,
        db: str,
        group: str | None,
        client_id: str,
        log_path: Path,
        resend_after: float | None = None,
    ) -> None:
        self.argv = (
            [
                sys.executable,
                "-m",
                "kestrel.cli",
                "collector",
                "run",
                "--broker",
                broker,
                "--db",
                db,
                "--client-id",
                client_id,
            ]
            + (["--group", group] if group else [])
            + (["--resend-after", str(resend_after)] if resend_after else [])
        )
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=logf)

    def subscribed(self) -> bool:
        return self.subscriptions() > 0

    def subscriptions(self) -> int:
        """How many times the broker has acknowledged this process's subscription (once per connection)."""
        return self.log_path.read_bytes().count(b"collector: subscribed to ") if self.log_path.exists() else 0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9
