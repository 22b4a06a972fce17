#!/usr/bin/env python3
"""Soak (issue 13): `kestrel run` at a steady event rate with ledger sync on; does its memory grow?

    python tools/soak/daemon.py --hours 1                 # the one-hour run (README figure)
    python tools/soak/daemon.py --minutes 3 --sample-s 5  # a short slice (tests/daemon/test_soak.py)

What runs: a real mosquitto on loopback; ``kestrel run`` (sim board) as its own process, with a
device config whose MQTT sensor ``temp`` triggers an ``mqtt.publish`` on every reading (``fire:
always``; an MQTT actuator rather than a sim pin, whose simulated history of 10,000 levels would
be the largest thing a short run sees growing), ledger sync on (the default once ``mqtt`` is
configured: every record is published to the broker); a driver that publishes ``--rate`` readings
per second (100 by default) on the sensor topic, paced by the monotonic clock. So each event is a
sensor reading, a policy decision (on flash before the publish), the publish, its result in the
ledger, and the sync's batches to the broker.

What is measured: the daemon's VmRSS (``/proc/PID/status``) every ``--sample-s`` seconds (60 by
default: every minute) after ``--warmup-s`` seconds at the full rate (0 by default), and the
least-squares slope of RSS over time fitted to the samples of the
last two thirds of the run (the first third is warm-up: allocator arenas, caches, the ledger's
first segments). The run fails (exit 1) if the slope is at or above ``--max-slope`` MB/hour (1.0 by
default) or if the daemon did not keep up (fewer than 90 % of the readings reached the pipeline, or
its ledger sync fell behind by more than a minute of records). ``--json FILE`` writes every sample
and the verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtime"))
sys.path.insert(0, str(ROOT))

POLICY = "actions: [mqtt.publish]\n"
TOPIC = "soak/temp"


def device_config(port: int) -> str:
    return textwrap.dedent(f"""
        version: 1
        mqtt:
          host: 127.0.0.1
          port: {port}
          keepalive: 10
        limits: {{event_queue: 4096, action_queue: 1024, action_workers: 4}}
        sensors:
          temp: {{type: mqtt, topic: "{TOPIC}", payload: json, max_payload: 256}}
        actuators:
          relay: {{type: mqtt, topic: soak/relay, qos: 1}}
        triggers:
          - name: follow
            when: "temp.n >= 0"
            fire: always
            action: mqtt.publish
            args: {{actuator: relay, payload: "${{temp.bit}}"}}
        """)


@dataclass
class Sample:
    t: float  # seconds since the driver started
    rss_kb: int
    events: int
    ledger_size: int
    sync_backlog: int | None


@dataclass
class Verdict:
    seconds: float
    rate: float
    samples: list[Sample] = field(default_factory=list)
    slope_mb_per_h: float | None = None
    fit_from_s: float | None = None
    sent: int = 0
    events: int = 0
    ledger_records: int = 0
    rss_first_mb: float | None = None
    rss_last_mb: float | None = None
    ok: bool = False
    why: str = ""


def fit_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope dy/dx of ``points`` (at least two distinct x)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("need samples at two different times at least")
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def tail_slope_mb_per_h(samples: list[Sample]) -> tuple[float, float]:
    """(slope in MB/hour over the last two thirds of the run, the time that window starts at)."""
    end = samples[-1].t
    start = end / 3.0
    window = [(s.t / 3600.0, s.rss_kb / 1024.0) for s in samples if s.t >= start]
    return fit_slope(window), start


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def provision(state: Path) -> None:
    """An identity (file keystore, machine-bound) and the policy, installed through a signed bundle."""
    from kestrel.identity import create_identity, open_signer
    from kestrel.ledger import Ledger
    from tests.daemon.conftest import install_policy

    create_identity(state, name="soak", backend="file", machine_bound=True)
    ledger = Ledger.open(state / "ledger", signer=open_signer(state))
    try:
        install_policy(state, ledger, POLICY)
    finally:
        ledger.close()


class Driver(threading.Thread):
    """Publishes ``rate`` readings per second (QoS 0) on the sensor topic until stopped."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(daemon=True, name="soak-driver")
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="kestrel-soak-driver")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.rate = rate
        self.sent = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        period = 1.0 / self.rate
        next_t = time.monotonic()
        while not self.stop_flag.is_set():
            self.client.publish(TOPIC, json.dumps({"n": self.sent, "bit": self.sent % 2}).encode(), qos=0)
            self.sent += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self.stop_flag.wait(delay)
            elif delay < -1.0:  # fell behind by a second (a stalled machine): do not burst to catch up
                next_t = time.monotonic()

    def close(self) -> None:
        self.stop_flag.set()
        self.join(5)
        self.client.loop_stop()
        self.client.disconnect()


def _wait_ready(state: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    from kestrel.sdk import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited early with code {proc.returncode}")
        try:
            with Client(state, timeout=2) as c:
                st = c.status()
            if st.get("mqtt", {}) and st["mqtt"].get("connected"):
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError("the daemon did not come up connected to the broker")


def _status(state: Path) -> dict:
    from kestrel.sdk import Client

    with Client(state, timeout=10) as c:
        return c.status()


def _sync_backlog(st: dict) -> int | None:
    sync = st.get("sync")
    return sync.get("backlog") if isinstance(sync, dict) else None


def soak(
    *, seconds: float, rate: float, sample_s: float, max_slope: float, workdir: Path, warmup_s: float = 0.0, log=print
) -> Verdict:
    from tests.fixtures.mosquitto import start_mosquitto

    state = workdir / "state"
    state.mkdir(mode=0o700)
    provision(state)
    cm, broker = start_mosquitto(workdir / "broker")
    verdict = Verdict(seconds=seconds, rate=rate)
    with cm:
        cfg = workdir / "device.yaml"
        cfg.write_text(device_config(broker.port))
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONPATH"] = str(ROOT / "runtime")
        err = open(workdir / "daemon.log", "wb")
        proc = subprocess.Popen(
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
        driver = None
        try:
            _wait_ready(state, proc)
            driver = Driver(broker.port, rate)
            driver.start()
            if warmup_s > 0:
                log(f"warming up for {warmup_s:g}s at {rate:g} events/s")
                time.sleep(warmup_s)
            t0 = time.monotonic()
            next_sample = t0
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    if proc.poll() is not None:
                        raise RuntimeError(
                            f"the daemon exited with code {proc.returncode}; see {workdir / 'daemon.log'}"
                        )
                    st = _status(state)
                    s = Sample(
                        round(now - t0, 2),
                        _rss_kb(proc.pid),
                        int(st["counters"]["events"]),
                        int(st["ledger"]["size"]),
                        _sync_backlog(st),
                    )
                    verdict.samples.append(s)
                    log(
                        f"t={s.t:8.1f}s  rss={s.rss_kb / 1024:7.2f} MB  events={s.events:>9}  "
                        f"ledger={s.ledger_size:>9}  sync_backlog={s.sync_backlog}"
                    )
                    next_sample += sample_s
                    if s.t >= seconds:
                        break
                time.sleep(max(0.0, min(next_sample - time.monotonic(), 1.0)))
            verdict.sent = driver.sent
        finally:
            if driver is not None:
                driver.close()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            err.close()
    return judge(verdict, max_slope=max_slope, rate=rate)


def judge(v: Verdict, *, max_slope: float, rate: float) -> Verdict:
    if len(v.samples) < 3:
        v.why = "fewer than three samples"
        return v
    v.slope_mb_per_h, v.fit_from_s = tail_slope_mb_per_h(v.samples)
    first, last = v.samples[0], v.samples[-1]
    v.events, v.ledger_records = last.events - first.events, last.ledger_size
    v.rss_first_mb, v.rss_last_mb = first.rss_kb / 1024, last.rss_kb / 1024
    expected = rate * (last.t - first.t)
    problems = []
    if v.events < 0.9 * expected:
        problems.append(f"only {v.events} of about {expected:.0f} readings reached the daemon")
    if last.sync_backlog is not None and last.sync_backlog > 60 * 2 * rate:
        problems.append(f"ledger sync is {last.sync_backlog} records behind")
    if v.slope_mb_per_h >= max_slope:
        problems.append(f"RSS grows {v.slope_mb_per_h:.3f} MB/hour (limit {max_slope})")
    v.ok = not problems
    v.why = "; ".join(problems) or "ok"
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    length = ap.add_mutually_exclusive_group(required=True)
    length.add_argument("--hours", type=float, help="run this many hours")
    length.add_argument("--minutes", type=float, help="run this many minutes")
    ap.add_argument("--rate", type=float, default=100.0, help="sensor readings per second (default 100)")
    ap.add_argument("--sample-s", type=float, default=60.0, help="seconds between RSS samples (default 60)")
    ap.add_argument(
        "--max-slope",
        type=float,
        default=1.0,
        help="fail at or above this RSS slope, MB/hour, over the last two thirds (default 1.0)",
    )
    ap.add_argument("--warmup-s", type=float, default=0.0, help="seconds at the full rate before sampling")
    ap.add_argument("--json", type=Path, help="write the samples and the verdict here")
    ap.add_argument("--dir", type=Path, help="work in this (new) directory and keep it")
    args = ap.parse_args(argv)
    seconds = args.hours * 3600 if args.hours is not None else args.minutes * 60
    if seconds <= 0 or args.rate <= 0 or args.sample_s <= 0:
        ap.error("--hours/--minutes, --rate and --sample-s must be positive")
    if seconds / args.sample_s < 3:
        ap.error("the run must hold at least three samples: lower --sample-s")

    def run(workdir: Path) -> Verdict:
        return soak(
            seconds=seconds,
            rate=args.rate,
            sample_s=args.sample_s,
            max_slope=args.max_slope,
            workdir=workdir,
            warmup_s=args.warmup_s,
            log=lambda s: print(s, flush=True),
        )

    if args.dir:
        args.dir.mkdir(parents=True)
        v = run(args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="kestrel-soak-") as tmp:
            v = run(Path(tmp))
    if v.slope_mb_per_h is None:
        print(f"soak: FAIL: {v.why}")
        return 1
    print(
        f"soak: {v.seconds / 60:.1f} min at {v.rate:g} events/s; {v.events} events, {v.ledger_records} "
        f"ledger records; RSS {v.rss_first_mb:.2f} -> {v.rss_last_mb:.2f} MB; fitted slope over the last two "
        f"thirds (from t={v.fit_from_s:.0f}s): {v.slope_mb_per_h:+.3f} MB/hour (limit < {args.max_slope}); "
        f"{'PASS' if v.ok else 'FAIL: ' + v.why}"
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(v), indent=1))
    return 0 if v.ok else 1


if __name__ == "__main__":
    sys.exit(main())
