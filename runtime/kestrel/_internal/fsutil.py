"""Crash-safe file primitives shared by every sub-package.

The rule on flash: write to a temporary file in the same directory, fsync it,
rename it over the target, then fsync the directory so the rename itself is
durable. Private material gets mode 0600 in directories of mode 0700 from the
moment it is created (never chmod after the fact).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import TransportError

__all__ = ["fsync_dir", "atomic_write", "ensure_private_dir", "check_private", "read_bytes", "open_nofollow", "read_fd"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes | Iterable[bytes], *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (bytes, or chunks written as they come) atomically and durably
    (old or new, never a mix; an error while producing the chunks leaves the old file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{os.urandom(4).hex()}")
    chunks = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if not isinstance(exc, OSError):
            raise
        raise TransportError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="check that the state directory is writable and the disk is not full",
        ) from None


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) with mode 0700 if missing; return it."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        for directory in reversed(missing):  # parents too: mkdir(parents=True) would use the umask
            try:
                directory.mkdir(mode=0o700)
            except FileExistsError:
                pass
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        if not path.is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as exc:
        raise TransportError(
            f"cannot create directory {path}: {exc.strerror or exc}",
            hint="choose a writable --state directory, or fix its permissions",
        ) from None
    return path


def check_private(path: str | os.PathLike[str]) -> None:
    """Refuse a secret file that others can read or that is a symlink."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise TransportError(f"{path} is a symbolic link; refusing to use it for secret material")
    if st.st_mode & 0o077:
        raise TransportError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"run: chmod 600 {path}",
        )


def open_nofollow(path: str | os.PathLike[str]) -> int:
    """Open a file for reading without following a final symlink (ELOOP) and without blocking on a FIFO.

    The caller checks ``os.fstat`` of the descriptor (regular file? mode? size?) before reading,
    so nothing can be swapped in between the check and the read.
    """
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)


def read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes from ``fd`` (one more than allowed, so the caller sees an overrun)."""
    with os.fdopen(os.dup(fd), "rb") as fh:
        return fh.read(limit + 1)


def read_bytes(path: str | os.PathLike[str], *, what: str, max_size: int | None = None) -> bytes:
    """Read a whole file, turning OS errors into a TransportError that names it."""
    try:
        with open(path, "rb") as fh:
            if max_size is not None:
                data = fh.read(max_size + 1)
                if len(data) > max_size:
                    from ..errors import DataError

                    raise DataError(f"{what} {path} is larger than {max_size} bytes")
                return data
            return fh.read()
    except FileNotFoundError:
        raise TransportError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise TransportError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
