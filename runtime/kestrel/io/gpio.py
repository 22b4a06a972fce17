"""GPIO pin factories (gpiozero-style): input pins with edge events, output pins.

A :class:`PinFactory` opens pins by header name through a board profile. Two
backends implement it: ``sim`` (:mod:`kestrel.io.gpio_sim`, a simulated chip) and
``gpiod`` (:mod:`kestrel.io.gpio_gpiod`, libgpiod v2). Edge events flow into a
bounded :class:`EdgeQueue` (oldest dropped and counted when full) that an asyncio
task iterates. See docs/io.md.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._queue import BoundedQueue
from .errors import PinConfigError

if TYPE_CHECKING:
    from .boards import BoardProfile

__all__ = [
    "Edge",
    "Bias",
    "EdgeEvent",
    "EdgeQueue",
    "InputPin",
    "OutputPin",
    "PinFactory",
    "PinSet",
    "open_pin_factory",
    "BACKENDS",
]

BACKENDS = ("sim", "gpiod")


class Edge(enum.Enum):
    """Which transitions of an input produce events."""

    NONE = "none"
    RISING = "rising"
    FALLING = "falling"
    BOTH = "both"

    def accepts(self, rising: bool) -> bool:
        if self is Edge.BOTH:
            return True
        return self is (Edge.RISING if rising else Edge.FALLING)


class Bias(enum.Enum):
    """Internal pull resistor of an input line."""

    DISABLED = "none"
    PULL_UP = "pull-up"
    PULL_DOWN = "pull-down"


@dataclass(frozen=True)
class EdgeEvent:
    """One edge on an input pin. ``rising`` is in logical terms (after active_low)."""

    pin: str
    chip: str
    line: int
    rising: bool
    timestamp_ns: int  # CLOCK_MONOTONIC nanoseconds (kernel timestamp on gpiod)
    seqno: int  # per-pin sequence number, from 1; gaps mean the kernel dropped events

    @property
    def value(self) -> int:
        return 1 if self.rising else 0


class EdgeQueue(BoundedQueue[EdgeEvent]):
    """Bounded queue of :class:`EdgeEvent`: pushed from any thread, consumed with asyncio.

    When full, the oldest event is dropped and ``overflows`` counts it: a flood never
    grows memory and the consumer always sees the latest state.
    """

    def __init__(self, maxlen: int = 1024) -> None:
        if maxlen < 1:
            raise PinConfigError("event queue size must be at least 1", key="queue_size")
        super().__init__(maxlen)


@runtime_checkable
class InputPin(Protocol):
    name: str
    queue: EdgeQueue

    @property
    def value(self) -> int: ...

    def events(self) -> AsyncIterator[EdgeEvent]: ...

    def close(self) -> None: ...


@runtime_checkable
class OutputPin(Protocol):
    name: str

    @property
    def value(self) -> int: ...

    @value.setter
    def value(self, value: int) -> None: ...

    def on(self) -> None: ...

    def off(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class PinFactory(Protocol):
    """Opens pins of one board. Every pin it opened is closed by :meth:`close`."""

    backend: str
    profile: BoardProfile

    def input(
        self,
        pin: str,
        *,
        edge: Edge = Edge.BOTH,
        bias: Bias = Bias.DISABLED,
        debounce_ms: float = 0.0,
        active_low: bool = False,
        queue: EdgeQueue | None = None,
        queue_size: int = 1024,
    ) -> InputPin: ...

    def output(self, pin: str, *, initial: int = 0, active_low: bool = False) -> OutputPin: ...

    def close(self) -> None: ...


class PinSet:
    """What every backend's factory does with its open pins: keep them, close them all on exit."""

    def __init__(self) -> None:
        self._pins: list[Any] = []

    def _keep(self, pin: Any) -> Any:
        self._pins.append(pin)
        return pin

    def close(self) -> None:
        for p in self._pins:
            p.close()
        self._pins.clear()

    def __enter__(self) -> PinSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_input_options(*, edge: Edge, bias: Bias, debounce_ms: float) -> None:
    """Shared validation of input options (both backends)."""
    if not isinstance(edge, Edge):
        raise PinConfigError(f"edge must be an Edge, got {edge!r}", key="edge")
    if not isinstance(bias, Bias):
        raise PinConfigError(f"bias must be a Bias, got {bias!r}", key="bias")
    if not 0 <= debounce_ms <= 1000:
        raise PinConfigError(f"debounce_ms must be within 0..1000, got {debounce_ms}", key="debounce_ms")


def check_level(value: int) -> int:
    if value not in (0, 1) or isinstance(value, float):
        raise PinConfigError(f"a GPIO level is 0 or 1, got {value!r}", key="value")
    return int(value)


def open_pin_factory(profile: BoardProfile, *, backend: str | None = None) -> PinFactory:
    """The pin factory for ``profile`` (backend from the profile unless given)."""
    backend = backend or profile.gpio_backend
    if backend == "sim":
        from .gpio_sim import SimPinFactory

        return SimPinFactory(profile)
    if backend == "gpiod":
        from .gpio_gpiod import GpiodPinFactory

        return GpiodPinFactory(profile)
    raise PinConfigError(f"unknown GPIO backend {backend!r}", key="backend", hint=f"use one of {', '.join(BACKENDS)}")
