"""Unix-domain socket paths of any length.

``sun_path`` holds 107 bytes on Linux, and a state directory deep in a file system (a test's
tmp dir, a long mount point) easily exceeds it. For a long path we open its directory and
address the socket through ``/proc/self/fd/N/NAME``, which the kernel resolves like any path.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

__all__ = ["connect_unix", "bind_unix", "MAX_SUN_PATH"]

MAX_SUN_PATH = 107


@contextlib.contextmanager
def _short(path: str | os.PathLike[str]) -> Iterator[str]:
    path = os.fspath(path)
    if len(os.fsencode(path)) <= MAX_SUN_PATH:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def connect_unix(sock: socket.socket, path: str | os.PathLike[str]) -> None:
    """``sock.connect(path)``, also for paths longer than ``sun_path`` allows."""
    with _short(path) as p:
        sock.connect(p)


def bind_unix(sock: socket.socket, path: str | os.PathLike[str]) -> None:
    """``sock.bind(path)``, also for paths longer than ``sun_path`` allows."""
    with _short(path) as p:
        sock.bind(p)
