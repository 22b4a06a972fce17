"""GPIO contract tests, run over every available backend, plus sim-model specifics."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kestrel.io.errors import GpioError, PinConfigError
from kestrel.io.gpio import Bias, Edge, EdgeQueue, InputPin, OutputPin, PinFactory, open_pin_factory


async def _next(pin_or_queue, timeout: float = 2.0):
    it = pin_or_queue.events() if hasattr(pin_or_queue, "events") else aiter(pin_or_queue)
    return await asyncio.wait_for(anext(it), timeout)


# ----------------------------------------------------------------- contract (every backend)


def test_factory_satisfies_protocol(gpio_rig):
    f = gpio_rig.factory
    assert isinstance(f, PinFactory)
    assert isinstance(f.input("GPIO17"), InputPin)
    assert isinstance(f.output("GPIO27"), OutputPin)


async def test_edges_in_order_with_monotonic_timestamps(gpio_rig):
    pin = gpio_rig.factory.input("GPIO17", edge=Edge.BOTH, bias=Bias.PULL_DOWN)
    assert pin.value == 0
    for level in (1, 0, 1):
        gpio_rig.drive("GPIO17", level)
    events = [await _next(pin) for _ in range(3)]
    assert [e.rising for e in events] == [True, False, True]
    assert [e.seqno for e in events] == [1, 2, 3]
    assert events[0].timestamp_ns <= events[1].timestamp_ns <= events[2].timestamp_ns
    assert {(e.pin, e.line) for e in events} == {("GPIO17", 17)}
    assert pin.value == 1


async def test_rising_only_filters_falling(gpio_rig):
    pin = gpio_rig.factory.input("PIN11", edge=Edge.RISING, bias=Bias.PULL_DOWN)
    for level in (1, 0, 1, 0):
        gpio_rig.drive("PIN11", level)
    got = [await _next(pin), await _next(pin)]
    assert all(e.rising for e in got)
    assert len(pin.queue) == 0


async def test_falling_only(gpio_rig):
    pin = gpio_rig.factory.input("GPIO5", edge=Edge.FALLING, bias=Bias.PULL_UP)
    assert pin.value == 1
    for level in (0, 1, 0):
        gpio_rig.drive("GPIO5", level)
    got = [await _next(pin), await _next(pin)]  # the second falling edge comes after the rising one would
    assert [(e.rising, e.value) for e in got] == [(False, 0), (False, 0)]
    assert len(pin.queue) == 0


async def test_active_low_inverts_value_and_edges(gpio_rig):
    pin = gpio_rig.factory.input("GPIO6", bias=Bias.PULL_UP, active_low=True)
    assert pin.value == 0  # pulled up = inactive
    gpio_rig.drive("GPIO6", 0)  # button pressed to ground
    ev = await _next(pin)
    assert ev.rising is True and pin.value == 1


def test_output_initial_and_writes(gpio_rig):
    out = gpio_rig.factory.output("GPIO27", initial=1)
    assert out.value == 1
    out.off()
    assert out.value == 0
    out.value = 1
    assert out.value == 1
    with pytest.raises(PinConfigError):
        out.value = 2


def test_unknown_pin_and_busy_line(gpio_rig):
    with pytest.raises(PinConfigError, match="unknown pin 'GPIO99'"):
        gpio_rig.factory.input("GPIO99")
    gpio_rig.factory.input("GPIO22")
    with pytest.raises(PinConfigError, match="busy"):
        gpio_rig.factory.output("PIN15")  # PIN15 is GPIO22


def test_close_releases_lines(gpio_rig):
    pin = gpio_rig.factory.input("GPIO23")
    pin.close()
    pin.close()  # idempotent
    out = gpio_rig.factory.output("GPIO23")
    gpio_rig.factory.close()
    with pytest.raises(GpioError):
        out.value = 1


def test_bad_options_rejected(gpio_rig):
    with pytest.raises(PinConfigError):
        gpio_rig.factory.input("GPIO24", debounce_ms=-1)
    with pytest.raises(PinConfigError):
        gpio_rig.factory.input("GPIO24", edge="both")  # type: ignore[arg-type]


# ----------------------------------------------------------------- queue


async def test_flood_is_bounded_and_counted(sim_profile):
    f = open_pin_factory(sim_profile)
    pin = f.input("GPIO17", queue_size=8)
    chip = f.chip()
    for i in range(1000):
        chip.drive(17, (i + 1) % 2)
    assert len(pin.queue) == 8
    assert pin.queue.overflows == 992
    first = await _next(pin)
    assert first.seqno == 993  # oldest dropped: the latest edges are kept
    f.close()


async def test_merged_queue_across_pins(sim_profile):
    f = open_pin_factory(sim_profile)
    q = EdgeQueue(16)
    f.input("GPIO17", queue=q)
    f.input("GPIO27", queue=q)
    f.chip().drive(17, 1)
    f.chip().drive(27, 1)
    got = [await _next(q), await _next(q)]
    assert [e.pin for e in got] == ["GPIO17", "GPIO27"]
    f.close()


async def test_drive_from_another_thread_wakes_the_loop(sim_profile):
    f = open_pin_factory(sim_profile)
    pin = f.input("GPIO4")
    waiter = asyncio.ensure_future(_next(pin))
    await asyncio.sleep(0)  # kept: one turn of the loop (not a wait): the waiter now awaits the pin's queue
    assert not waiter.done()
    t = threading.Thread(target=f.chip().drive, args=(4, 1))
    t.start()
    ev = await waiter
    t.join()
    assert ev.rising and ev.line == 4
    f.close()


def test_queue_rejects_zero_size():
    with pytest.raises(PinConfigError):
        EdgeQueue(0)


# ----------------------------------------------------------------- sim model


def test_sim_bias_models_floating_lines(sim_profile):
    f = open_pin_factory(sim_profile)
    up = f.input("GPIO2", bias=Bias.PULL_UP)
    down = f.input("GPIO3", bias=Bias.PULL_DOWN)
    none = f.input("GPIO4", bias=Bias.DISABLED)
    assert (up.value, down.value, none.value) == (1, 0, 0)
    f.chip().drive(2, 0)
    assert up.value == 0
    f.chip().release(2)  # floats back to its pull-up
    assert up.value == 1
    assert len(up.queue) == 2
    f.close()


async def test_sim_debounce_lockout(sim_profile):
    f = open_pin_factory(sim_profile)
    chip = f.chip()
    pin = f.input("GPIO17", bias=Bias.PULL_DOWN, debounce_ms=5)
    ms = 1_000_000
    # a bouncing press at t=100ms: only the first change is reported
    for t, v in [(100, 1), (100.5, 0), (101, 1), (102, 0), (103, 1)]:
        chip.drive(17, v, timestamp_ns=int(t * ms))
    assert len(pin.queue) == 1
    # after the lockout the settled level is compared with the reported one: no event
    chip.drive(17, 1, timestamp_ns=120 * ms)
    assert len(pin.queue) == 1
    chip.drive(17, 0, timestamp_ns=130 * ms)  # release, well after the lockout
    evs = [await _next(pin), await _next(pin)]
    assert [(e.rising, e.timestamp_ns) for e in evs] == [(True, 100 * ms), (False, 130 * ms)]
    f.close()


def test_sim_output_history_and_drive_refused_on_outputs(sim_profile):
    f = open_pin_factory(sim_profile)
    out = f.output("PIN13", initial=0)  # GPIO27
    out.on()
    out.off()
    hist = f.chip().history(27)
    assert [v for _, v in hist] == [0, 1, 0]
    assert hist[0][0] <= hist[1][0] <= hist[2][0]
    assert f.chip().level(27) == 0
    with pytest.raises(PinConfigError, match="is an output"):
        f.chip().drive(27, 1)
    f.close()


def test_sim_active_low_output_history_is_physical(sim_profile):
    f = open_pin_factory(sim_profile)
    out = f.output("GPIO26", initial=1, active_low=True)
    assert f.chip().level(26) == 0 and out.value == 1
    f.close()


def test_sim_unknown_chip_and_line(sim_profile):
    f = open_pin_factory(sim_profile)
    with pytest.raises(GpioError, match="no GPIO chip 'gpiochip7'"):
        f.input("gpiochip7:3")
    with pytest.raises(PinConfigError, match="has no line 99"):
        f.input("gpiochip0:99")
    f.input("gpiochip0:40")  # a raw chip:line beyond the header works
    f.close()


def test_unknown_backend(sim_profile):
    with pytest.raises(PinConfigError, match="unknown GPIO backend"):
        open_pin_factory(sim_profile, backend="wiringpi")
