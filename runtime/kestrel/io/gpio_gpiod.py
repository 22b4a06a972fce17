"""The ``gpiod`` GPIO backend: the libgpiod v2 character device via the ``gpiod`` package 2.x.

One line request per pin. Edge events are read from the request's file descriptor,
registered with the running asyncio loop (``add_reader``), and pushed into the pin's
:class:`~kestrel.io.gpio.EdgeQueue`; the kernel timestamps them (CLOCK_MONOTONIC).
Chips are found by the label the board profile expects, so ``gpiochip4`` (Pi 5,
older kernels) and ``gpiochip0`` (newer) both work.
"""

from __future__ import annotations

import asyncio
import glob
import os
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .errors import GpioError, PinConfigError
from .gpio import Bias, Edge, EdgeEvent, EdgeQueue, PinSet, check_input_options, check_level

if TYPE_CHECKING:
    from .boards import BoardProfile, PinRef

__all__ = ["GpiodPinFactory", "input_settings", "output_settings", "find_chip", "CONSUMER"]

CONSUMER = "kestrel"


def _gpiod() -> Any:
    try:
        import gpiod
    except ImportError:
        raise GpioError(
            "the gpiod backend needs the 'gpiod' Python package (libgpiod v2 bindings)",
            hint="pip install 'kestrel-sovereign[gpio]', or use --board sim",
        ) from None
    if not hasattr(gpiod, "request_lines"):
        raise GpioError(
            "the installed 'gpiod' package is libgpiod v1; Kestrel needs gpiod 2.x", hint="pip install 'gpiod>=2.1'"
        )
    return gpiod


def input_settings(*, edge: Edge, bias: Bias, debounce_ms: float, active_low: bool) -> Any:
    """Kestrel input options -> ``gpiod.LineSettings`` (pure translation)."""
    gpiod = _gpiod()
    from gpiod.line import Bias as GBias
    from gpiod.line import Direction
    from gpiod.line import Edge as GEdge

    check_input_options(edge=edge, bias=bias, debounce_ms=debounce_ms)
    edges = {Edge.NONE: GEdge.NONE, Edge.RISING: GEdge.RISING, Edge.FALLING: GEdge.FALLING, Edge.BOTH: GEdge.BOTH}
    biases = {Bias.DISABLED: GBias.DISABLED, Bias.PULL_UP: GBias.PULL_UP, Bias.PULL_DOWN: GBias.PULL_DOWN}
    return gpiod.LineSettings(
        direction=Direction.INPUT,
        edge_detection=edges[edge],
        bias=biases[bias],
        active_low=active_low,
        debounce_period=timedelta(microseconds=round(debounce_ms * 1000)),
    )


def output_settings(*, initial: int, active_low: bool) -> Any:
    """Kestrel output options -> ``gpiod.LineSettings`` (pure translation)."""
    gpiod = _gpiod()
    from gpiod.line import Direction, Value

    return gpiod.LineSettings(
        direction=Direction.OUTPUT,
        output_value=Value.ACTIVE if check_level(initial) else Value.INACTIVE,
        active_low=active_low,
    )


def find_chip(ref: PinRef, *, dev_dir: str = "/dev", label_of: Callable[[str], str | None] | None = None) -> str:
    """The device path of ``ref``'s chip: by name, checked (or found) by its expected label.

    ``label_of(path)`` returns a chip's label, or None when ``path`` is not a GPIO chip
    (default: ask the kernel through gpiod).
    """
    if label_of is None:
        gpiod = _gpiod()
        label_of = lambda p: _label(gpiod, p)  # noqa: E731
    path = os.path.join(dev_dir, ref.chip)
    if ref.chip_label is None:
        if label_of(path) is not None:
            return path
    else:
        candidates = [path] + sorted(p for p in glob.glob(os.path.join(dev_dir, "gpiochip*")) if p != path)
        for cand in candidates:
            if label_of(cand) == ref.chip_label:
                return cand
    present = sorted(glob.glob(os.path.join(dev_dir, "gpiochip*")))
    want = f"{ref.chip}" + (f" (label {ref.chip_label})" if ref.chip_label else "")
    raise GpioError(
        f"GPIO chip {want} for pin {ref.name} not found; present: {', '.join(present) or 'no GPIO chips'}",
        hint="check the --board profile matches this device, or use --board sim on a machine without GPIO",
    )


def _label(gpiod: Any, path: str) -> str | None:
    try:
        if not gpiod.is_gpiochip_device(path):
            return None
        with gpiod.Chip(path) as chip:
            return chip.get_info().label or ""
    except OSError:
        return None


def _request(gpiod: Any, ref: PinRef, settings: Any) -> Any:
    path = find_chip(ref)
    try:
        return gpiod.request_lines(path, consumer=CONSUMER, config={ref.line: settings})
    except OSError as exc:
        if exc.errno == 16:  # EBUSY
            raise PinConfigError(
                f"{ref} is busy (requested by another consumer)", hint="gpioinfo shows who holds it"
            ) from None
        raise GpioError(
            f"cannot request {ref} on {path}: {exc.strerror or exc}",
            hint="the user needs access to the chip (group gpio on Raspberry Pi OS)",
        ) from None
    except ValueError as exc:
        raise PinConfigError(f"cannot request {ref}: {exc}") from None


class _GpiodInput:
    def __init__(self, gpiod: Any, ref: PinRef, settings: Any, *, edge: Edge, queue: EdgeQueue) -> None:
        self.name, self.ref, self.queue = ref.name, ref, queue
        self._gpiod = gpiod
        self._req = _request(gpiod, ref, settings)
        self._edge = edge
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attach()

    def _attach(self) -> None:
        if self._loop is not None or self._edge is Edge.NONE or self._req is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # attached by the first events() inside the loop
        loop.add_reader(self._req.fd, self._on_readable)
        self._loop = loop

    def _on_readable(self) -> None:
        try:
            events = self._req.read_edge_events()
        except OSError:
            return
        rising_type = self._gpiod.EdgeEvent.Type.RISING_EDGE
        for ev in events:
            self.queue.push(
                EdgeEvent(
                    self.name,
                    self.ref.chip,
                    ev.line_offset,
                    ev.event_type == rising_type,
                    ev.timestamp_ns,
                    ev.line_seqno,
                )
            )

    @property
    def value(self) -> int:
        from gpiod.line import Value

        return 1 if self._req.get_value(self.ref.line) == Value.ACTIVE else 0

    def events(self) -> AsyncIterator[EdgeEvent]:
        self._attach()
        return aiter(self.queue)

    def close(self) -> None:
        if self._req is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._req.fd)
        self._req.release()
        self._req = None


class _GpiodOutput:
    def __init__(self, gpiod: Any, ref: PinRef, settings: Any) -> None:
        self.name, self.ref = ref.name, ref
        self._req = _request(gpiod, ref, settings)

    @property
    def value(self) -> int:
        from gpiod.line import Value

        return 1 if self._req.get_value(self.ref.line) == Value.ACTIVE else 0

    @value.setter
    def value(self, value: int) -> None:
        from gpiod.line import Value

        if self._req is None:
            raise GpioError(f"output {self.name} is closed")
        self._req.set_value(self.ref.line, Value.ACTIVE if check_level(value) else Value.INACTIVE)

    def on(self) -> None:
        self.value = 1

    def off(self) -> None:
        self.value = 0

    def close(self) -> None:
        if self._req is not None:
            self._req.release()
            self._req = None


class GpiodPinFactory(PinSet):
    """Pin factory over the Linux GPIO character devices (libgpiod v2)."""

    backend = "gpiod"

    def __init__(self, profile: BoardProfile) -> None:
        self.profile = profile
        self._gpiod = _gpiod()
        super().__init__()

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
    ) -> _GpiodInput:
        settings = input_settings(edge=edge, bias=bias, debounce_ms=debounce_ms, active_low=active_low)
        ref = self.profile.resolve_pin(pin)
        p = _GpiodInput(
            self._gpiod, ref, settings, edge=edge, queue=queue if queue is not None else EdgeQueue(queue_size)
        )
        return self._keep(p)

    def output(self, pin: str, *, initial: int = 0, active_low: bool = False) -> _GpiodOutput:
        settings = output_settings(initial=initial, active_low=active_low)
        p = _GpiodOutput(self._gpiod, self.profile.resolve_pin(pin), settings)
        return self._keep(p)
