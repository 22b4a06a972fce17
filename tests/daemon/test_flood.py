"""A flood of events: bounded queues drop and count, memory stays flat, the daemon keeps answering."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc

import pytest

from .conftest import running, until

POLICY = "actions: [gpio.write]\n"
CONFIG = """
    version: 1
    limits: {event_queue: 64, action_queue: 16, action_workers: 2}
    sensors:
      button: {type: gpio, pin: GPIO17}
    actuators:
      lamp: {type: gpio, pin: GPIO27}
    triggers:
      - name: follow
        when: "button == 1 or button == 0"
        fire: always
        action: gpio.write
        args: {actuator: lamp, value: "${button}"}
"""


async def _flood(agent, edges: int) -> None:
    async with running(agent, CONFIG, policy=POLICY) as d:
        chip = d.factory.chip()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]

        def hammer() -> None:
            for i in range(edges):
                chip.drive(17, i & 1)

        t = threading.Thread(target=hammer)
        t.start()
        peak_backlog = 0
        while t.is_alive():
            peak_backlog = max(peak_backlog, d.pipeline.backlog)
            await asyncio.sleep(0.001)  # kept: a sampling period (the loop drains the pipeline between samples)
        t.join()
        await until(lambda: d.pipeline.backlog == 0, timeout=30, what="backlog drained")
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        overflows = d.hardware.describe()["_gpio"]["overflows"]
        stats = dict(d.pipeline.stats)
        assert peak_backlog <= 16
        assert overflows + stats["dropped"] > 0  # the flood was shed, not buffered
        assert d.counters["events"] + overflows <= edges + 1
        assert grown < 8 * 1024 * 1024, f"memory grew by {grown} bytes"
        # the last edge's action was not lost in the shedding: the lamp shows the button's final state
        final = (edges - 1) & 1
        await until(lambda: d.hardware.outputs["lamp"].value == final, what="final state after the flood")
        assert d.pipeline.stats["dropped"] == 0 or d.pipeline.stats["caught_up"] >= 1
        # still responsive and correct afterwards
        for target in (1 - ((edges - 1) & 1), (edges - 1) & 1):
            chip.drive(17, target)
            await until(lambda target=target: d.hardware.outputs["lamp"].value == target, what="works after the flood")
        assert d.unhealthy() is None
        st = d.control_status()
        assert st["actions"]["dropped"] == d.pipeline.stats["dropped"]


async def test_flood_is_bounded(agent):
    await _flood(agent, 5_000)


@pytest.mark.slow
async def test_flood_soak(agent):
    await _flood(agent, 200_000)
