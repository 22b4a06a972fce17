"""A bounded, thread-safe producer / asyncio consumer queue that drops the oldest item when full."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

__all__ = ["BoundedQueue", "QueueClosed"]

T = TypeVar("T")


class QueueClosed(Exception):
    """The queue was closed and is empty."""


class BoundedQueue(Generic[T]):
    """Push from any thread; one asyncio consumer awaits :meth:`get` or iterates.

    When full, the oldest item is dropped and ``overflows`` counts it, so a flood never
    grows memory and the consumer sees the latest items. :meth:`close` ends iteration
    once the remaining items are consumed.
    """

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("queue size must be at least 1")
        self._items: collections.deque[T] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.maxlen = maxlen
        self.overflows = 0
        self.pushed = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, item: T) -> None:
        with self._lock:
            if self._closed:
                return
            if len(self._items) == self.maxlen:
                self.overflows += 1
            self._items.append(item)
            self.pushed += 1
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    def get_nowait(self) -> T:
        with self._lock:
            if self._items:
                return self._items.popleft()
            if self._closed:
                raise QueueClosed
            raise asyncio.QueueEmpty

    async def get(self) -> T:
        """The next item; raises :class:`QueueClosed` once closed and drained."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    raise QueueClosed
                if self._waiter is not None and not self._waiter.done():
                    raise RuntimeError("a BoundedQueue has a single consumer")
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.get()
            except QueueClosed:
                return


def _wake(fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` on its own loop, from whichever thread we are on."""
    loop = fut.get_loop()

    def _set() -> None:
        if not fut.done():
            fut.set_result(None)

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        _set()
    elif not loop.is_closed():
        loop.call_soon_threadsafe(_set)
