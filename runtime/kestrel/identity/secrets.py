"""Shell: where secrets come from (passphrases, machine binding) and private files.

Passphrase order (docs/architecture.md): explicit argument (the CLI reads
``--passphrase-file`` into it) -> ``KESTREL_PASSPHRASE`` -> interactive prompt
on a terminal. Machine-bound keystores need no passphrase: their secret is a
random 32-byte ``machine.key`` next to the keystore combined with the
machine id (``/etc/machine-id``, else ``/var/lib/dbus/machine-id``).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from .._internal.fsutil import open_nofollow, read_fd
from ..errors import TransportError, UsageError
from .errors import MachineBindingError, PassphraseRequiredError

__all__ = [
    "PASSPHRASE_ENV",
    "MACHINE_ID_ENV",
    "MACHINE_ID_PATHS",
    "as_bytes",
    "resolve_passphrase",
    "has_tty",
    "prompt_passphrase",
    "read_passphrase_file",
    "machine_id",
    "create_private_file",
    "read_private_file",
]

PASSPHRASE_ENV = "KESTREL_PASSPHRASE"
MACHINE_ID_ENV = "KESTREL_MACHINE_ID_FILE"  # override for containers and tests
MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
_MAX_SECRET_FILE = 64 * 1024


def as_bytes(passphrase: bytes | str | None) -> bytes | None:
    if passphrase is None or isinstance(passphrase, bytes):
        return passphrase
    return passphrase.encode("utf-8")


def read_passphrase_file(path: str | os.PathLike[str]) -> bytes:
    """The passphrase in ``path`` without one trailing newline; refuses an empty one."""
    data = _read(Path(path), what="passphrase file")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise UsageError(f"passphrase file {path} is empty", hint="write the passphrase into it")
    return data


def resolve_passphrase(
    explicit: bytes | str | None,
    *,
    what: str,
    confirm: bool = False,
    env: str = PASSPHRASE_ENV,
    option: str = "--passphrase-file",
) -> bytes:
    """Explicit value, else ``$env``, else a terminal prompt, else PassphraseRequiredError."""
    value = as_bytes(explicit)
    if value is None and os.environ.get(env):
        value = os.environ[env].encode("utf-8")
    if value is None and has_tty():
        value = prompt_passphrase(what, confirm=confirm)
    if value is None:
        raise PassphraseRequiredError(
            f"a passphrase is needed for the {what} and there is no terminal to ask for it "
            "(not run in the foreground of a terminal)",
            hint=f"use {option} FILE or set {env}",
        )
    if not value:
        raise UsageError(f"empty passphrase for the {what}", hint="use a non-empty passphrase")
    return value


def has_tty() -> bool:
    """True when a prompt can be answered: stdin is a terminal and this process is in its foreground.

    A command started in the background (``kestrel run &``) has the terminal as stdin but would be
    stopped by the shell the moment it read from it; it gets PassphraseRequiredError instead.
    """
    try:
        if not sys.stdin.isatty():
            return False
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (AttributeError, ValueError, OSError):
        return False


def prompt_passphrase(what: str, *, confirm: bool) -> bytes:
    import getpass  # interactive only; the daemon never prompts

    first = getpass.getpass(f"Passphrase for the {what}: ")
    if confirm and getpass.getpass("Repeat the passphrase: ") != first:
        raise UsageError("the two passphrases differ", hint="run the command again")
    return first.encode("utf-8")


def machine_id(path: str | os.PathLike[str] | None = None) -> bytes:
    """This machine's id (stripped), from ``path``, $KESTREL_MACHINE_ID_FILE or the system."""
    candidates = (
        [Path(path)]
        if path
        else ([Path(os.environ[MACHINE_ID_ENV])] if os.environ.get(MACHINE_ID_ENV) else list(MACHINE_ID_PATHS))
    )
    for candidate in candidates:
        try:
            value = candidate.read_bytes().strip()
        except OSError:
            continue
        if value:
            return value
    raise MachineBindingError(
        f"no machine id found (looked in {', '.join(map(str, candidates))})",
        hint="machine-bound keystores need /etc/machine-id (run systemd-machine-id-setup); "
        "or protect the key with a passphrase instead",
    )


def create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` (must not exist) with mode 0600, write, fsync. O_EXCL | O_NOFOLLOW."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise TransportError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise TransportError(
            f"cannot create {path}: {exc.strerror or exc}", hint="check that the directory is writable"
        ) from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        raise TransportError(
            f"cannot write {path}: {exc.strerror or exc}", hint="check that the disk is not full"
        ) from None
    finally:
        os.close(fd)


def read_private_file(path: Path, *, what: str) -> bytes:
    """Read a secret file, refusing symlinks and files that group/others can access."""
    return _read(path, what=what, private=True)


def _read(path: Path, *, what: str, private: bool = False) -> bytes:
    try:
        fd = open_nofollow(path)
    except FileNotFoundError:
        raise TransportError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise TransportError(
            f"cannot open {what} {path}: {exc.strerror or exc}",
            hint="it must be a regular file (not a symlink) readable by you",
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TransportError(f"{what} {path} is not a regular file")
        if private and st.st_mode & 0o077:
            raise TransportError(
                f"{what} {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):o})",
                hint=f"run: chmod 600 {path}",
            )
        data = read_fd(fd, _MAX_SECRET_FILE)
    except OSError as exc:
        raise TransportError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_SECRET_FILE:
        raise TransportError(f"{what} {path} is larger than {_MAX_SECRET_FILE} bytes; not a key file")
    return data
