"""Serial sensors and actuators over pyserial, read with asyncio (``add_reader`` on the fd).

A :class:`SerialPort` owns one device path. A supervisor task opens it, reads
whatever arrives into a framer (:mod:`kestrel.io.framing`) and puts frames into a
bounded queue that ``async for frame in port`` consumes. If the device disappears
(EIO, hang-up, file gone) the port reports ``reconnecting`` and reopens the path with
exponential backoff and jitter until it is back. Nothing here raises into the
caller's loop except :meth:`SerialPort.write` on a disconnected port.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError
from ._queue import BoundedQueue
from .backoff import Backoff
from .errors import SerialError
from .framing import LengthPrefixedFraming, LineFraming, make_framer

__all__ = ["SerialPort", "SerialHealth", "Frame", "LineFraming", "LengthPrefixedFraming"]

log = logging.getLogger(__name__)
READ_CHUNK = 4096
BAD_INPUT_LOG_INTERVAL_S = 10.0  # bad input is logged at once, then at most once per interval per port
State = Literal["connecting", "connected", "reconnecting", "closed"]


@dataclass(frozen=True)
class Frame:
    data: bytes
    timestamp_ns: int  # CLOCK_MONOTONIC when the read that completed the frame returned


@dataclass(frozen=True)
class SerialHealth:
    path: str
    state: State
    frames: int
    garbage_bytes: int
    bad_checksums: int
    overruns: int
    dropped: int  # frames dropped because the consumer was too slow (bounded queue)
    reconnects: int
    last_error: str | None

    @property
    def healthy(self) -> bool:
        return self.state == "connected"


class SerialPort:
    """One serial device: framed async reads, writes, reconnect and health."""

    def __init__(
        self,
        path: str,
        *,
        baudrate: int = 9600,
        parity: str = "N",
        bytesize: int = 8,
        stopbits: float = 1,
        framing: LineFraming | LengthPrefixedFraming = LineFraming(),
        queue_size: int = 256,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 10.0,
        on_state_change: Callable[[SerialHealth], None] | None = None,
    ) -> None:
        self.path = path
        self._settings = _check_settings(baudrate=baudrate, parity=parity, bytesize=bytesize, stopbits=stopbits)
        self._framer = make_framer(framing)
        self._queue: BoundedQueue[Frame] = BoundedQueue(queue_size)
        self._backoff = Backoff(initial=reconnect_initial, maximum=reconnect_max)
        self._on_state_change = on_state_change
        self._state: State = "connecting"
        self._reconnects = 0
        self._last_error: str | None = None
        self._ser: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()
        self._ever_connected = False
        self._logged_bad = (0, 0, 0)  # garbage bytes, bad checksums, overruns already logged
        self._bad_logged_at = -BAD_INPUT_LOG_INTERVAL_S

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Start reading. A missing device is not an error: the port keeps retrying."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"serial {self.path}")

    async def close(self) -> None:
        """Stop reading, close the device, end iteration. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise
        self._disconnect()
        self._queue.close()
        self._set_state("closed")

    async def __aenter__(self) -> SerialPort:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ data

    def __aiter__(self) -> AsyncIterator[Frame]:
        return aiter(self._queue)

    async def read_frame(self) -> Frame:
        """The next frame (waits); raises SerialError once the port is closed."""
        from ._queue import QueueClosed

        try:
            return await self._queue.get()
        except QueueClosed:
            raise SerialError(f"serial port {self.path} is closed") from None

    async def write(self, data: bytes) -> None:
        """Write all of ``data``; SerialError if the device is not connected or fails."""
        async with self._write_lock:
            view = memoryview(bytes(data))
            loop = asyncio.get_running_loop()
            while view:
                ser = self._ser
                if ser is None or self._state != "connected":
                    raise SerialError(
                        f"serial device {self.path} is not connected ({self._state})", hint=self._last_error
                    )
                fd = ser.fileno()
                try:
                    n = os.write(fd, view)
                    view = view[n:]
                except BlockingIOError:
                    ready: asyncio.Future[None] = loop.create_future()
                    loop.add_writer(fd, _wake, ready)
                    try:
                        await asyncio.wait_for(ready, 5.0)
                    except TimeoutError:
                        raise SerialError(f"serial device {self.path} does not accept data (flow control?)") from None
                    finally:
                        loop.remove_writer(fd)
                except OSError as exc:
                    self._connection_lost(exc)
                    raise SerialError(f"writing to {self.path} failed: {exc.strerror or exc}") from None

    @property
    def health(self) -> SerialHealth:
        s = self._framer.stats
        return SerialHealth(
            self.path,
            self._state,
            s.frames,
            s.garbage_bytes,
            s.bad_checksums,
            s.overruns,
            self._queue.overflows,
            self._reconnects,
            self._last_error,
        )

    # ------------------------------------------------------------------ internals

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self._connect()
            except (OSError, SerialError) as exc:
                self._last_error = str(exc)
                self._set_state("reconnecting" if self._ever_connected else "connecting")
                await asyncio.sleep(self._backoff.next())
                continue
            if self._ever_connected:
                self._reconnects += 1
            self._ever_connected = True
            self._backoff.reset()
            self._lost = loop.create_future()
            loop.add_reader(self._ser.fileno(), self._on_readable)
            self._set_state("connected")
            try:
                await self._lost
            finally:
                self._disconnect()
            self._set_state("reconnecting")
            await asyncio.sleep(self._backoff.next())

    def _connect(self) -> None:
        import serial  # pyserial

        try:
            self._ser = serial.Serial(self.path, timeout=0, write_timeout=0, exclusive=True, **self._settings)
        except serial.SerialException as exc:
            raise SerialError(f"cannot open {self.path}: {exc}") from None
        self._framer.reset()

    def _disconnect(self) -> None:
        ser, self._ser = self._ser, None
        if ser is None:
            return
        try:
            asyncio.get_running_loop().remove_reader(ser.fileno())
        except (RuntimeError, ValueError, OSError):
            pass
        try:
            ser.close()
        except OSError:
            pass

    def _on_readable(self) -> None:
        ser = self._ser
        if ser is None:
            return
        try:
            data = os.read(ser.fileno(), READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._connection_lost(exc)
            return
        if not data:  # hang-up
            self._connection_lost(OSError(errno.EIO, "device hung up"))
            return
        now = time.monotonic_ns()
        for payload in self._framer.feed(data):
            self._queue.push(Frame(payload, now))
        self._log_bad_input()

    def _log_bad_input(self) -> None:
        """Log garbage, bad checksums and overruns: the first at once, then a summary per interval."""
        st = self._framer.stats
        bad = (st.garbage_bytes, st.bad_checksums, st.overruns)
        if bad == self._logged_bad:
            return
        t = time.monotonic()
        if t - self._bad_logged_at < BAD_INPUT_LOG_INTERVAL_S:
            return
        new = [
            f"{now - was} {what}"
            for now, was, what in zip(
                bad, self._logged_bad, ("garbage bytes", "bad checksums", "overruns"), strict=False
            )
            if now != was
        ]
        log.warning(
            "serial %s: dropped bad input: %s (totals: %d garbage bytes, %d bad checksums, %d overruns)",
            self.path,
            ", ".join(new),
            *bad,
        )
        self._logged_bad, self._bad_logged_at = bad, t

    def _connection_lost(self, exc: OSError) -> None:
        self._last_error = f"{self.path}: {exc.strerror or exc}"
        log.warning("serial device lost: %s", self._last_error)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _set_state(self, state: State) -> None:
        if state == self._state:
            return
        self._state = state
        if self._on_state_change is not None:
            try:
                self._on_state_change(self.health)
            except Exception:  # a faulty observer must not stop the port
                log.exception("on_state_change callback failed")


def _wake(ready: asyncio.Future[None]) -> None:
    """A writer callback: the device accepts data again."""
    if not ready.done():
        ready.set_result(None)


def _check_settings(*, baudrate: int, parity: str, bytesize: int, stopbits: float) -> dict[str, Any]:
    """Validate line settings without opening anything; ConfigError names the bad key."""
    import serial

    probe = serial.Serial()
    for key, value in (("baudrate", baudrate), ("parity", parity), ("bytesize", bytesize), ("stopbits", stopbits)):
        try:
            if key == "baudrate" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError
            setattr(probe, key, value)
        except (ValueError, TypeError):
            allowed = {
                "parity": "N, E, O, M, S",
                "bytesize": "5, 6, 7, 8",
                "stopbits": "1, 1.5, 2",
                "baudrate": "a positive integer",
            }[key]
            raise ConfigError(f"invalid serial {key} {value!r}", key=key, hint=f"use {allowed}") from None
    return {"baudrate": baudrate, "parity": parity, "bytesize": bytesize, "stopbits": stopbits}
