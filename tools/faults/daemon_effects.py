"""Crash harness for the daemon's side effects: SIGKILL `kestrel run` during bursts of actions.

Every round starts ``kestrel run`` (sim board) against real sinks on loopback: an SMTP relay
(tests/daemon/smtp_sink.py, which stores a message and then waits a little before its "250", so
that kills land between delivery and acknowledgement), a mosquitto broker with a subscriber, a pty
pair for a serial actuator, and the sim GPIO chip (watched through the control socket). Worker
threads call ``send_email``, ``mqtt.publish``, ``serial.write`` and ``gpio.write`` with unique
arguments through the control socket; at a random moment (sometimes during start-up, while the
daemon is still recording what the previous kill left in doubt) the daemon gets SIGKILL. After the
last round the daemon runs once more until its outbox is empty and stops cleanly.

Then the ledger is read and every effect is accounted for (:func:`account`):

* every allowed ``policy.decision`` has exactly one outcome: an ``action.result`` or an
  ``action.indoubt`` naming it (``decision``);
* every message the relay stored (by Message-ID) was preceded by at least as many
  ``outbox.sending`` records for it as deliveries, each attempt has exactly one of
  ``outbox.sent`` / ``outbox.deferred`` / ``outbox.failed`` / ``outbox.indoubt``, and names an
  allowed ``send_email`` decision;
* every MQTT payload, serial line and GPIO level the sinks saw comes from an allowed decision for
  exactly those arguments, and (MQTT, serial) was seen no more often than it was decided.

    python tools/faults/daemon_effects.py --kills 30 [--seed N] [--dir DIR]

Exit status 0 if every effect was accounted for. Used by tests/daemon/test_indoubt_faults.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tty
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtime"))
sys.path.insert(0, str(ROOT))

POLICY = """\
actions:
  - gpio.write
  - mqtt.publish
  - serial.write
  - action: send_email
    args:
      to: {domain: example.com}
"""
ACTIONS = ("send_email", "mqtt.publish", "serial.write", "gpio.write")
TOPIC = "fx/alerts"


def args_for(action: str, n: int) -> dict[str, Any]:
    """The unique arguments of call number ``n`` (the sinks' observations map back to ``n``)."""
    if action == "send_email":
        return {"to": "ops@example.com", "subject": f"fx {n}", "body": f"event {n}"}
    if action == "mqtt.publish":
        return {"actuator": "alerts", "payload": {"n": n}}
    if action == "serial.write":
        return {"actuator": "line", "data": f"n{n}"}
    return {"actuator": "lamp", "value": (n // len(ACTIONS)) % 2}


def device_config(*, mqtt_port: int, smtp_port: int, tty_path: str) -> str:
    return textwrap.dedent(f"""
        version: 1
        mqtt: {{host: 127.0.0.1, port: {mqtt_port}, keepalive: 5}}
        sync: {{enabled: false}}
        smtp: {{host: 127.0.0.1, port: {smtp_port}, from: fx@device.test, timeout: 5}}
        outbox: {{retry_initial: 0.1, retry_max: 0.5}}
        actuators:
          lamp: {{type: gpio, pin: GPIO27}}
          alerts: {{type: mqtt, topic: {TOPIC}, qos: 1}}
          line: {{type: serial, port: {tty_path}, baud: 115200}}
        """)


# -- sinks -----------------------------------------------------------------------------------------
class SerialSink(threading.Thread):
    """The far end of a pty pair: collects the lines the daemon writes to the serial actuator."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="fx-serial")
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.lines: list[str] = []
        self._buf = b""
        self._halt = threading.Event()

    def run(self) -> None:
        import select

        while not self._halt.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                continue
            self._buf += chunk
            *done, self._buf = self._buf.split(b"\n")
            self.lines.extend(d.decode(errors="replace") for d in done)

    def close(self) -> None:
        self._halt.set()
        self.join(2)
        for fd in (self.master, self.slave):
            os.close(fd)


class MqttSink:
    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.payloads: list[bytes] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="kestrel-fx-sink")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(TOPIC, qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.payloads.append(bytes(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.ready.wait(10):
            raise RuntimeError("the MQTT sink could not subscribe")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- one daemon ------------------------------------------------------------------------------------
@dataclass
class Round:
    killed_after_s: float
    during_start: bool
    calls: int  # calls answered before the kill
    issued: int


def _spawn(cfg: Path, state: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = str(ROOT / "runtime")
    with open(log, "ab") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kestrel.cli",
                "run",
                "--config",
                str(cfg),
                "--state",
                str(state),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _wait_up(state: Path, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    from kestrel.sdk import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited early with code {proc.returncode}")
        try:
            with Client(state, timeout=2) as c:
                st = c.status()
            if st.get("mqtt") and st["mqtt"].get("connected"):
                return st
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError("the daemon did not come up")


class Burst:
    """Worker threads calling actions with unique arguments until the daemon goes away."""

    def __init__(self, state: Path, counter: Any, workers: int = 6) -> None:
        self.state = state
        self.counter = counter
        self.answered = 0
        self.issued = 0
        self.levels: list[int] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        self._threads.append(threading.Thread(target=self._watch_pin, daemon=True))
        self._stop = threading.Event()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _next(self) -> int:
        with self._lock:
            self.issued += 1
            return next(self.counter)

    def _work(self) -> None:
        from kestrel.sdk import Client

        try:
            with Client(self.state, timeout=10) as c:
                while not self._stop.is_set():
                    n = self._next()
                    action = ACTIONS[n % len(ACTIONS)]
                    c.call(action, **args_for(action, n))
                    with self._lock:
                        self.answered += 1
        except Exception:
            return  # the daemon was killed

    def _watch_pin(self) -> None:
        from kestrel.sdk import Client

        try:
            with Client(self.state, timeout=10) as c:
                while not self._stop.is_set():
                    for pin in c.sim_list():
                        if pin["name"] == "lamp" and (not self.levels or self.levels[-1] != pin["level"]):
                            self.levels.append(pin["level"])
                    time.sleep(0.002)
        except Exception:
            return

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


# -- accounting (pure) -----------------------------------------------------------------------------
@dataclass
class Sinks:
    mail: list[bytes] = field(default_factory=list)  # raw messages the relay stored
    mqtt: list[bytes] = field(default_factory=list)
    serial: list[str] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)  # lamp levels seen after a change, per run


@dataclass
class Accounting:
    problems: list[str]
    decisions: int
    results: int
    indoubt: int
    mail_delivered: int
    mail_indoubt: int
    mail_twice: int
    mqtt_seen: int
    serial_seen: int
    partial_serial: int


_MID = re.compile(rb"^Message-ID:\s*(<[^>]+>)", re.MULTILINE | re.IGNORECASE)


def account(records: Iterable[Any], sinks: Sinks, digest: Callable[[str, dict[str, Any]], str]) -> Accounting:
    """Check that every effect the sinks saw is in the log as allowed decision + (result | sent | in doubt)."""
    problems: list[str] = []
    allowed: dict[int, dict[str, Any]] = {}
    outcomes: dict[int, list[str]] = collections.defaultdict(list)
    intents: dict[int, dict[str, Any]] = {}
    intent_outcomes: dict[int, list[str]] = collections.defaultdict(list)
    n_results = n_indoubt = n_mail_indoubt = 0
    for rec in records:
        b = rec.body
        if rec.kind == "policy.decision" and b.get("decision") == "allow":
            allowed[rec.seq] = b
        elif rec.kind in ("action.result", "action.indoubt"):
            n_results += rec.kind == "action.result"
            n_indoubt += rec.kind == "action.indoubt"
            if type(b.get("decision")) is not int:
                problems.append(f"{rec.kind} at {rec.seq} names no decision")
            else:
                outcomes[b["decision"]].append(rec.kind)
        elif rec.kind == "outbox.sending":
            intents[rec.seq] = b
        elif rec.kind in ("outbox.sent", "outbox.deferred", "outbox.failed", "outbox.indoubt"):
            n_mail_indoubt += rec.kind == "outbox.indoubt"
            intent_outcomes[b.get("intent")].append(rec.kind)
    for seq, b in allowed.items():
        got = outcomes.get(seq, [])
        if len(got) != 1:
            problems.append(f"allowed {b.get('action')} decision at {seq} has {len(got)} outcomes {got}")
    for seq in set(outcomes) - set(allowed):
        problems.append(f"outcome(s) {outcomes[seq]} name {seq}, which is no allowed decision")
    for seq, b in intents.items():
        if len(intent_outcomes.get(seq, [])) != 1:
            problems.append(f"mail attempt at {seq} ({b.get('message_id')}) has outcomes {intent_outcomes.get(seq)}")
        d = b.get("decision")
        if d not in allowed or allowed[d].get("action") != "send_email":
            problems.append(f"mail attempt at {seq} names decision {d}, which is no allowed send_email")
    by_digest: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for seq, b in allowed.items():
        by_digest[(b.get("action"), b.get("args_digest"))].append(seq)

    # mail: Message-ID -> deliveries vs attempts
    attempts = collections.Counter(b.get("message_id") for b in intents.values())
    delivered = collections.Counter()
    for raw in sinks.mail:
        m = _MID.search(raw)
        if m is None:
            problems.append("the relay holds a message without a Message-ID")
            continue
        delivered[m.group(1).decode()] += 1
    for mid, count in delivered.items():
        if attempts.get(mid, 0) < count:
            problems.append(f"{mid} was delivered {count} times but {attempts.get(mid, 0)} attempts are recorded")

    # mqtt and serial: each observation maps back to its arguments
    def check(action: str, n: int, seen: int, what: str) -> None:
        decided = by_digest.get((action, digest(action, args_for(action, n))), [])
        if not decided:
            problems.append(f"{what} reached its sink with no allowed {action} decision")
        elif seen > len(decided):
            problems.append(f"{what} reached its sink {seen} times for {len(decided)} decisions")

    for payload, seen in collections.Counter(sinks.mqtt).items():
        try:
            n = json.loads(payload)["n"]
        except (ValueError, KeyError, TypeError):
            problems.append(f"unexpected MQTT payload {payload[:60]!r}")
            continue
        check("mqtt.publish", n, seen, f"MQTT payload {payload!r}")
    partial = 0
    for line, seen in collections.Counter(sinks.serial).items():
        if not re.fullmatch(r"n[0-9]+", line):
            partial += seen  # a frame cut by a kill mid-write, glued to the next one
            continue
        check("serial.write", int(line[1:]), seen, f"serial line {line!r}")
    for level in set(sinks.levels):
        if not by_digest.get(("gpio.write", digest("gpio.write", {"actuator": "lamp", "value": level}))):
            problems.append(f"the lamp went to {level} with no allowed gpio.write decision")
    return Accounting(
        problems,
        len(allowed),
        n_results,
        n_indoubt,
        sum(delivered.values()),
        n_mail_indoubt,
        sum(1 for c in delivered.values() if c > 1),
        len(sinks.mqtt),
        len(sinks.serial),
        partial,
    )


def policy_digest_fn() -> Callable[[str, dict[str, Any]], str]:
    """args -> the args_digest the policy engine records for them (its own evaluation, so its canonical form)."""
    from kestrel.policy.evaluate import evaluate
    from kestrel.policy.model import ActionRequest, PolicyState
    from kestrel.policy.parse import parse_policy

    policy = parse_policy(POLICY)
    return lambda action, args: (
        evaluate(policy, ActionRequest(action, dict(args)), PolicyState(), time.time()).args_digest
    )


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class Report:
    rounds: list[Round]
    accounting: Accounting
    ledger_size: int


def provision(state: Path) -> None:
    from kestrel.identity import create_identity, open_signer
    from kestrel.ledger import Ledger
    from tests.daemon.conftest import install_policy

    create_identity(state, name="fx", backend="file", machine_bound=True)
    ledger = Ledger.open(state / "ledger", signer=open_signer(state))
    try:
        install_policy(state, ledger, POLICY)
    finally:
        ledger.close()


def run(kills: int, *, workdir: Path, seed: int | None = None, log: Callable[[str], None] = print) -> Report:
    from kestrel.ledger.reader import iter_records
    from kestrel.sdk import Client
    from tests.daemon.smtp_sink import SmtpSink
    from tests.fixtures.mosquitto import start_mosquitto

    rng = random.Random(seed)
    state = workdir / "state"
    state.mkdir(mode=0o700)
    provision(state)
    daemon_log = workdir / "daemon.log"
    rounds: list[Round] = []
    counter = iter(range(1, 1 << 62))
    cm, broker = start_mosquitto(workdir / "broker")
    serial = SerialSink()
    serial.start()
    smtp = SmtpSink()
    with cm, smtp as box:
        box.reply_delay_s = 0.05
        mqtt = MqttSink(broker.port)
        cfg = workdir / "device.yaml"
        cfg.write_text(device_config(mqtt_port=broker.port, smtp_port=smtp.port, tty_path=serial.path))
        levels: list[int] = []
        try:
            for i in range(kills):
                proc = _spawn(cfg, state, daemon_log)
                during_start = rng.random() < 0.2
                burst = None
                t0 = time.monotonic()
                if during_start:
                    time.sleep(rng.uniform(0.2, 1.5))
                else:
                    _wait_up(state, proc)
                    burst = Burst(state, counter)
                    burst.start()
                    t0 = time.monotonic()
                    time.sleep(rng.uniform(0.05, 1.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                waited = time.monotonic() - t0
                if burst is not None:
                    burst.stop()
                    levels.extend(burst.levels[1:])  # the first is the level the config starts the pin at
                rounds.append(
                    Round(round(waited, 3), during_start, burst.answered if burst else 0, burst.issued if burst else 0)
                )
                log(
                    f"round {i + 1}/{kills}: killed after {waited:.2f}s "
                    f"{'during start-up' if during_start else f'with {rounds[-1].calls} calls answered'}"
                )
            # the last run: recover, let the outbox drain, stop cleanly
            proc = _spawn(cfg, state, daemon_log)
            st = _wait_up(state, proc)
            log(f"final start: in doubt {st.get('indoubt')}")
            deadline, sent = time.monotonic() + 30, -1
            while time.monotonic() < deadline:  # as long as it makes progress (the bursts queue faster than
                with Client(state, timeout=5) as c:  # one relay session per message delivers)
                    st = c.status()
                if st["outbox"]["pending"] == 0:
                    break
                if st["outbox"]["sent"] != sent:
                    deadline, sent = time.monotonic() + 30, st["outbox"]["sent"]
                time.sleep(0.2)
            else:
                raise RuntimeError(
                    f"the outbox stopped draining for 30 s: {st['outbox']}, health {st['health']}; see {daemon_log}"
                )
            proc.send_signal(signal.SIGTERM)
            if proc.wait(60) != 0:
                raise RuntimeError(f"the daemon stopped with {proc.returncode}; see {daemon_log}")
            time.sleep(0.3)  # the subscriber's last messages
        finally:
            mqtt.close()
            serial.close()
            for p in [proc] if "proc" in locals() else []:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        sinks = Sinks(list(m[2] for m in box.messages), list(mqtt.payloads), list(serial.lines), levels)
    records = list(iter_records(state / "ledger"))
    acc = account(records, sinks, policy_digest_fn())
    return Report(rounds, acc, len(records))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--dir", type=Path, help="work here (a new directory) and keep it")
    args = ap.parse_args(argv)

    def go(d: Path) -> Report:
        return run(args.kills, workdir=d, seed=args.seed, log=lambda m: print(m, flush=True))

    if args.dir:
        args.dir.mkdir(parents=True)
        rep = go(args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="kestrel-fx-") as tmp:
            rep = go(Path(tmp))
    a = rep.accounting
    print(
        f"{len(rep.rounds)} kills, {rep.ledger_size} records: {a.decisions} allowed decisions = {a.results} "
        f"results + {a.indoubt} in doubt; mail delivered {a.mail_delivered} ({a.mail_twice} twice), "
        f"{a.mail_indoubt} attempts in doubt; MQTT {a.mqtt_seen}, serial {a.serial_seen} "
        f"({a.partial_serial} cut frames)"
    )
    for p in a.problems:
        print("UNACCOUNTED:", p)
    return 1 if a.problems else 0


if __name__ == "__main__":
    sys.exit(main())
