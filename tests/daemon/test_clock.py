"""Wall-clock steps (both directions): recorded once as clock.stepped; durations, rate limits, cooldowns,
intervals and ordering never see them; time windows and cron follow the wall clock as it is."""

from __future__ import annotations

import asyncio
import time

from kestrel._internal.clock import StepWatch
from kestrel.daemon.config import parse_device_config
from kestrel.daemon.schedules import run_schedules

from .conftest import install_policy, running, until

YEAR = 365 * 86400.0


class SteppedClock:
    """The wall clock of a board whose time is set by hand or by NTP: real time plus a settable offset."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def step(self, delta: float) -> None:
        self.offset += delta


class ManualClocks:
    """A wall and a monotonic clock that move only when told (for the pure parts)."""

    def __init__(self) -> None:
        self.wall_t, self.mono_t = 1_764_000_000.0, 1000.0

    def wall(self) -> float:
        return self.wall_t

    def mono(self) -> float:
        return self.mono_t

    def advance(self, s: float) -> None:
        self.wall_t += s
        self.mono_t += s


def test_step_watch_reports_each_step_once_and_ignores_time_passing():
    c = ManualClocks()
    w = StepWatch(wall=c.wall, monotonic=c.mono)
    c.advance(3600)
    assert w.check() is None
    c.wall_t += 3 * YEAR  # NTP's first sync on a board that booted in the past
    step = w.check()
    assert step is not None and step.delta == 3 * YEAR and step.new == c.wall_t
    assert step.body() == {"old": c.wall_t - 3 * YEAR, "new": c.wall_t, "delta": 3 * YEAR}
    assert w.check() is None  # once
    c.advance(10)
    c.wall_t -= 7200  # set back two hours
    step = w.check()
    assert step is not None and step.delta == -7200
    c.wall_t += 0.4  # slewing-sized corrections are no step
    assert w.check() is None


RATE_POLICY = """
actions:
  - action: gpio.write
    rate: {count: 2, per: 1h}
"""


def _engine(agent, clocks):
    # imported here, not at collection time: an early import of kestrel.policy.evaluate shadows the
    # lazy kestrel.policy.evaluate function for test modules collected later
    from kestrel.policy.engine import PolicyEngine

    return PolicyEngine(agent.state, agent.ledger, clock=clocks.wall, monotonic=clocks.mono)


def test_rate_limits_hold_across_steps_both_ways(agent):
    c = ManualClocks()
    install_policy(agent.state, agent.ledger, RATE_POLICY)
    engine = _engine(agent, c)
    args = {"actuator": "lamp", "value": 1}
    assert engine.decide("gpio.write", args).allowed
    assert engine.decide("gpio.write", args).allowed
    assert not engine.decide("gpio.write", args).allowed
    c.wall_t += 3 * YEAR  # a forward step frees nothing: an hour has not passed
    assert not engine.decide("gpio.write", args).allowed
    c.wall_t -= 5 * YEAR  # nor does a backward step block for years
    assert not engine.decide("gpio.write", args).allowed
    c.advance(3601)
    assert engine.decide("gpio.write", args).allowed
    # the state on disk moved with the clock: a restart sees the same ages
    again = _engine(agent, c)
    assert again.decide("gpio.write", args).allowed
    assert not again.decide("gpio.write", args).allowed


def test_hits_in_the_future_at_start_count_as_now(agent):
    c = ManualClocks()
    install_policy(agent.state, agent.ledger, RATE_POLICY)
    engine = _engine(agent, c)
    args = {"actuator": "lamp", "value": 1}
    assert engine.decide("gpio.write", args).allowed and engine.decide("gpio.write", args).allowed
    c.wall_t -= YEAR  # the clock went back while the device was off
    restarted = _engine(agent, c)
    assert not restarted.decide("gpio.write", args).allowed  # still limited ...
    c.advance(3601)
    assert restarted.decide("gpio.write", args).allowed  # ... for one window, not for a year


WINDOW_POLICY = """
actions:
  - action: gpio.write
    window: {hours: "09:00-17:00", utc_offset: "+00:00"}
"""


def test_time_windows_follow_the_stepped_wall_clock(agent):
    c = ManualClocks()
    c.wall_t = 1_764_072_000.0  # 12:00 UTC
    install_policy(agent.state, agent.ledger, WINDOW_POLICY)
    engine = _engine(agent, c)
    args = {"actuator": "lamp", "value": 1}
    assert engine.decide("gpio.write", args).allowed
    c.wall_t += 8 * 3600  # 20:00
    assert not engine.decide("gpio.write", args).allowed
    c.wall_t -= 10 * 3600  # 10:00
    assert engine.decide("gpio.write", args).allowed


COOLDOWN = """
    version: 1
    sensors:
      button: {type: gpio, pin: GPIO17, edge: both, bias: pull_down}
    actuators:
      lamp: {type: gpio, pin: GPIO27}
    triggers:
      - name: press
        when: "button == 1"
        cooldown: 3600
        action: gpio.write
        args: {actuator: lamp, value: 1}
"""


async def test_daemon_records_each_step_once_and_cooldowns_do_not_see_it(agent):
    wall = SteppedClock()
    async with running(agent, COOLDOWN, policy="actions: [gpio.write]\n", clock=wall) as d:
        checks: list[object] = []  # what each of the daemon's clock checks (one per CLOCK_CHECK_S) found
        check = d.steps.check

        def counted():
            checks.append(check())
            return checks[-1]

        d.steps.check = counted
        chip = d.factory.chip()
        chip.drive(17, 1)
        await until(lambda: d.pipeline.stats["succeeded"] >= 1, what="the first press")
        chip.drive(17, 0)
        wall.step(2 * YEAR)
        await until(lambda: len(agent.kinds("clock.stepped")) == 1, what="the forward step recorded")
        events = d.counters["events"]
        chip.drive(17, 1)  # within the hour's cooldown: a forward step must not end it
        await until(lambda: d.counters["events"] > events, what="the press within the cooldown evaluated")
        assert d.pipeline.stats["proposed"] == 1
        chip.drive(17, 0)
        wall.step(-3 * YEAR)
        await until(lambda: len(agent.kinds("clock.stepped")) == 2, what="the backward step recorded")
        seen = len(checks)  # the check that found the step has returned (its record is in)
        await until(lambda: len(checks) > seen, timeout=5, what="another clock check")
        assert checks[-1] is None  # each step is recorded once
        assert d.control_status()["counters"]["clock_steps"] == 2
    steps = agent.kinds("clock.stepped")
    assert len(steps) == 2
    assert abs(steps[0]["delta"] - 2 * YEAR) < 5 and abs(steps[1]["delta"] + 3 * YEAR) < 5
    assert abs(steps[0]["new"] - steps[0]["old"] - steps[0]["delta"]) < 1e-3
    # record order is the ledger's: seq increases, and the ledger still verifies
    seqs = [r.seq for r in agent.ledger.records()]
    assert seqs == sorted(seqs)
    agent.ledger.flush()
    assert agent.ledger.verify().size == agent.ledger.size


def _config(text: str):
    import textwrap

    return parse_device_config(textwrap.dedent(text), source="device.yaml")


async def test_interval_schedules_keep_their_pace_and_cron_is_replanned_after_steps():
    cfg = _config("""
        version: 1
        actuators:
          lamp: {type: gpio, pin: GPIO27}
        schedules:
          - {name: tick, every: 0.2, action: gpio.write, args: {actuator: lamp, value: 1}}
          - {name: hourly, cron: "0 * * * *", action: gpio.write, args: {actuator: lamp, value: 0}}
        """)
    wall = SteppedClock()
    wall.step(3599.5 - time.time() % 3600)  # half a second before the top of an hour
    fired: list[tuple[str, float]] = []
    task = asyncio.get_running_loop().create_task(
        run_schedules(lambda: cfg, lambda p: fired.append((p.source, time.monotonic())), clock=wall)
    )
    try:
        await until(lambda: any(s == "schedule:hourly" for s, _ in fired), timeout=5, what="cron at the hour")

        def ticks() -> list[float]:
            return [t for s, t in fired if s == "schedule:tick"]

        async def passes_after_step(n: int, what: str) -> None:
            # A pass of the schedule loop fires every due schedule: a cron made due by the step would
            # fire in the first pass after it, with the tick (every 0.2 s) or before it.
            target = len(ticks()) + n
            await until(lambda: len(ticks()) >= target, what=what)

        wall.step(-YEAR)  # back a year: intervals go on, cron waits for the next hour of the new time
        await passes_after_step(3, "three ticks after the backward step")
        assert sum(1 for s, _ in fired if s == "schedule:hourly") == 1
        wall.step(YEAR + 1800)  # forward past many hours: no burst of missed crons, ticks unchanged
        await passes_after_step(2, "two ticks after the forward step")
        assert sum(1 for s, _ in fired if s == "schedule:hourly") == 1
        paced = ticks()
        gaps = [b - a for a, b in zip(paced, paced[1:], strict=False)]
        assert max(gaps) < 0.6
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
