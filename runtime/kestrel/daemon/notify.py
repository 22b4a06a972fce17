"""systemd notification protocol (sd_notify(3)) without dependencies.

Datagrams of ``KEY=VALUE`` lines go to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a path, or an abstract name written with a leading ``@``). Without the variable
every call is a no-op, so the daemon runs the same under systemd and in a shell.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

__all__ = ["Notifier", "watchdog_interval", "run_watchdog"]

log = logging.getLogger("kestrel.daemon")


class Notifier:
    """Sends sd_notify messages; silent when not started by systemd."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address: str | None = None
        if addr:
            if addr.startswith("@"):
                addr = "\0" + addr[1:]
            elif not addr.startswith("/"):
                log.warning("ignoring NOTIFY_SOCKET=%r: not an absolute path or @abstract name", addr)
                addr = ""
            self.address = addr or None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram; return False (and log) if systemd could not be told."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self.address.replace("\0", "@"), exc)
            return False

    def ready(self, status: str = "running") -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when not requested."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


async def run_watchdog(notifier: Notifier, interval: float, healthy: Callable[[float], str | None]) -> None:
    """Ping every ``interval`` seconds while ``healthy(loop_lag)`` returns None (else: the reason).

    The loop lag is measured here: how late this task woke up. A stuck loop cannot
    ping at all, so systemd's watchdog fires as it should.
    """
    loop = asyncio.get_running_loop()
    last_reason: str | None = None
    expected = loop.time() + interval
    while True:
        await asyncio.sleep(max(0.0, expected - loop.time()))
        lag = max(0.0, loop.time() - expected)
        expected = loop.time() + interval
        reason = healthy(lag)
        if reason is None:
            notifier.watchdog()
            if last_reason is not None:
                log.info("healthy again; watchdog pings resumed")
                notifier.status("running")
        elif reason != last_reason:
            log.warning("unhealthy: %s; withholding watchdog pings", reason)
            notifier.status(f"unhealthy: {reason}")
        last_reason = reason
