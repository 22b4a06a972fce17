"""The ``sim`` GPIO backend: a simulated chip that tests and demos drive.

Model (docs/io.md): a line is driven externally (``chip.drive(line, v)``) or floats
to its bias (pull-up reads 1, pull-down 0, none 0). An input reports an edge when
its level changes; with a debounce period, changes within ``debounce_ms`` of the
last reported edge are ignored (lockout) and the next change after it is compared
with the last *reported* level. Outputs record ``(timestamp_ns, level)`` history
(bounded). A line can be requested once (a second request is "busy", as in the
kernel). ``drive`` may be called from any thread.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from .errors import GpioError, PinConfigError
from .gpio import Bias, Edge, EdgeEvent, EdgeQueue, PinSet, check_input_options, check_level

if TYPE_CHECKING:
    from .boards import BoardProfile, PinRef

__all__ = ["SimChip", "SimPinFactory"]

HISTORY_MAX = 10_000


class _Line:
    __slots__ = ("driven", "owner", "history")

    def __init__(self) -> None:
        self.driven: int | None = None
        self.owner: _SimInput | _SimOutput | None = None
        self.history: collections.deque[tuple[int, int]] = collections.deque(maxlen=HISTORY_MAX)


class SimChip:
    """A simulated GPIO chip with ``num_lines`` lines."""

    def __init__(
        self,
        name: str = "gpiochip0",
        *,
        num_lines: int = 64,
        label: str = "kestrel-sim",
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.name = name
        self.label = label
        self.clock = clock
        self._lines = [_Line() for _ in range(num_lines)]
        self._lock = threading.RLock()

    @property
    def num_lines(self) -> int:
        return len(self._lines)

    def _line(self, line: int) -> _Line:
        if not 0 <= line < len(self._lines):
            raise PinConfigError(f"{self.name} has no line {line} (it has {len(self._lines)})", key="line")
        return self._lines[line]

    def drive(self, line: int, value: int, *, timestamp_ns: int | None = None) -> None:
        """Drive ``line`` to ``value`` from outside (a button, a sensor). Any thread."""
        value = check_level(value)
        with self._lock:
            ln = self._line(line)
            if isinstance(ln.owner, _SimOutput):
                raise PinConfigError(f"{self.name} line {line} is an output; drive() simulates external inputs")
            ln.driven = value
            self._changed(ln, timestamp_ns)

    def release(self, line: int, *, timestamp_ns: int | None = None) -> None:
        """Stop driving ``line``: it floats to its bias."""
        with self._lock:
            ln = self._line(line)
            ln.driven = None
            self._changed(ln, timestamp_ns)

    def level(self, line: int) -> int:
        """The physical level of ``line`` now."""
        with self._lock:
            ln = self._line(line)
            if isinstance(ln.owner, _SimOutput):
                return ln.owner.physical
            return self._physical(ln)

    def history(self, line: int) -> list[tuple[int, int]]:
        """``(timestamp_ns, physical level)`` of every write to an output line (latest 10,000)."""
        with self._lock:
            return list(self._line(line).history)

    @staticmethod
    def _physical(ln: _Line) -> int:
        if ln.driven is not None:
            return ln.driven
        owner = ln.owner
        return 1 if isinstance(owner, _SimInput) and owner.bias is Bias.PULL_UP else 0

    def _changed(self, ln: _Line, timestamp_ns: int | None) -> None:
        if isinstance(ln.owner, _SimInput):
            ln.owner._observe(self._physical(ln), self.clock() if timestamp_ns is None else timestamp_ns)

    def _claim(self, line: int, owner: _SimInput | _SimOutput) -> _Line:
        with self._lock:
            ln = self._line(line)
            if ln.owner is not None:
                raise PinConfigError(f"{self.name} line {line} is busy (already requested as {ln.owner.name})")
            ln.owner = owner
            return ln

    def _free(self, line: int, owner: object) -> None:
        with self._lock:
            ln = self._lines[line]
            if ln.owner is owner:
                ln.owner = None


class _SimInput:
    def __init__(
        self,
        chip: SimChip,
        ref: PinRef,
        *,
        edge: Edge,
        bias: Bias,
        debounce_ms: float,
        active_low: bool,
        queue: EdgeQueue,
    ) -> None:
        self.name = ref.name
        self.chip, self.line = chip, ref.line
        self.edge, self.bias, self.active_low = edge, bias, active_low
        self.debounce_ns = int(debounce_ms * 1_000_000)
        self.queue = queue
        self._seqno = 0
        self._last_edge_ns: int | None = None
        self._closed = False
        ln = chip._claim(ref.line, self)
        self._reported = chip._physical(ln)

    def _observe(self, physical: int, ts: int) -> None:  # under the chip lock
        if physical == self._reported:
            return
        if self.debounce_ns and self._last_edge_ns is not None and ts - self._last_edge_ns < self.debounce_ns:
            return
        self._reported = physical
        self._last_edge_ns = ts
        rising = bool(physical ^ self.active_low)
        if self.edge.accepts(rising):
            self._seqno += 1
            self.queue.push(EdgeEvent(self.name, self.chip.name, self.line, rising, ts, self._seqno))

    @property
    def value(self) -> int:
        with self.chip._lock:
            return self._reported ^ self.active_low

    def events(self) -> AsyncIterator[EdgeEvent]:
        return aiter(self.queue)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.chip._free(self.line, self)

    def __repr__(self) -> str:
        return f"<sim input {self.name} {self.chip.name}:{self.line} edge={self.edge.value} bias={self.bias.value}>"


class _SimOutput:
    def __init__(self, chip: SimChip, ref: PinRef, *, initial: int, active_low: bool) -> None:
        self.name = ref.name
        self.chip, self.line, self.active_low = chip, ref.line, active_low
        self._closed = False
        self.physical = check_level(initial) ^ active_low
        self._ln = chip._claim(ref.line, self)
        self._ln.history.append((chip.clock(), self.physical))

    @property
    def value(self) -> int:
        return self.physical ^ self.active_low

    @value.setter
    def value(self, value: int) -> None:
        if self._closed:
            raise GpioError(f"output {self.name} is closed")
        physical = check_level(value) ^ self.active_low
        with self.chip._lock:
            self.physical = physical
            self._ln.history.append((self.chip.clock(), physical))

    def on(self) -> None:
        self.value = 1

    def off(self) -> None:
        self.value = 0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.chip._free(self.line, self)

    def __repr__(self) -> str:
        return f"<sim output {self.name} {self.chip.name}:{self.line} value={self.value}>"


class SimPinFactory(PinSet):
    """Pin factory over one :class:`SimChip` per chip of the board profile."""

    backend = "sim"

    def __init__(self, profile: BoardProfile, *, num_lines: int = 64) -> None:
        self.profile = profile
        self._chips = {
            name: SimChip(name, num_lines=num_lines, label=label or "kestrel-sim")
            for name, label in profile.chips.items()
        }
        super().__init__()

    def chip(self, name: str | None = None) -> SimChip:
        """The simulated chip ``name`` (default: the profile's first chip)."""
        name = name or next(iter(self._chips))
        try:
            return self._chips[name]
        except KeyError:
            raise GpioError(f"no GPIO chip {name!r} on the simulated board {self.profile.name}") from None

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
    ) -> _SimInput:
        check_input_options(edge=edge, bias=bias, debounce_ms=debounce_ms)
        ref = self.profile.resolve_pin(pin)
        p = _SimInput(
            self.chip(ref.chip),
            ref,
            edge=edge,
            bias=bias,
            debounce_ms=debounce_ms,
            active_low=active_low,
            queue=queue if queue is not None else EdgeQueue(queue_size),
        )
        return self._keep(p)

    def output(self, pin: str, *, initial: int = 0, active_low: bool = False) -> _SimOutput:
        ref = self.profile.resolve_pin(pin)
        p = _SimOutput(self.chip(ref.chip), ref, initial=initial, active_low=active_low)
        return self._keep(p)
