"""Commands that record: through the running daemon, else the ledger opened here.

While ``kestrel run`` holds the ledger (one writer, ``flock``), a command that records
(``kestrel ota``, ``set-policy``, ``trust``, ``deploy``, ``memory add``, ``sync trust``, ...)
goes through the daemon's control socket; only when no daemon answers does it open the
ledger itself. Reading needs no key and no lock (:func:`ledger_view`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..ledger import Ledger, Record
    from ..ledger.recorder import Recorder
    from ..sdk import Client

__all__ = ["daemon_client", "recording_ledger", "through_daemon_or_ledger", "open_ledger", "ledger_view"]

T = TypeVar("T")


def daemon_client(state_dir: Path) -> Client | None:
    """A connected SDK client when a daemon runs on ``state_dir``, else None.

    While ``kestrel run`` holds the ledger (one writer), commands that record go through its
    control socket; only when no daemon answers do they open the ledger themselves.
    """
    from ..sdk import Client, NoDaemonError, socket_path_for

    client = Client(socket_path=socket_path_for(state_dir), timeout=60.0)
    try:
        return client.connect()
    except NoDaemonError:
        return None


class _DaemonLedger:
    """``append(kind, body)`` through the running daemon's control method ``record``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def append(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._client.record(kind, body)


@contextmanager
def recording_ledger(state_dir: Path, *, passphrase: bytes | str | None = None) -> Iterator[Recorder]:
    """Something with ``append(kind, body)`` for commands that record (``kestrel deploy``,
    ``kestrel memory add``, ``kestrel agent-connect``): the running daemon's ledger (the kinds in
    ``kestrel.daemon.protocol.RECORDABLE`` only, for the daemon's own user or root), else the
    ledger opened here."""
    client = daemon_client(state_dir)
    if client is not None:
        with client:
            yield _DaemonLedger(client)
        return
    with open_ledger(state_dir, passphrase=passphrase) as ledger:
        yield ledger


def through_daemon_or_ledger(
    state_dir: Path, remote: Callable[[Client], T], local: Callable[[Ledger], T]
) -> tuple[T, bool]:
    """An owner operation: ``remote(client)`` through the running daemon, else ``local(ledger)`` on
    the ledger opened here. Returns the result and whether the daemon did it."""
    client = daemon_client(state_dir)
    if client is not None:
        with client:
            return remote(client), True
    with open_ledger(state_dir) as ledger:
        return local(ledger), False


@contextmanager
def open_ledger(state_dir: Path, *, passphrase: bytes | str | None = None) -> Iterator[Ledger]:
    """The device ledger, signed by the agent's identity key (only when no daemon runs)."""
    from .._internal.paths import StateLayout
    from ..identity import open_signer
    from ..ledger import Ledger, LedgerBusyError, LedgerIOError

    signer = open_signer(state_dir, passphrase=passphrase)
    try:
        ledger = Ledger.open(StateLayout(state_dir).ledger, signer=signer)
    except LedgerBusyError as exc:
        raise LedgerIOError(
            f"{exc.message}, and no daemon answers on {StateLayout(state_dir).run / 'control.sock'}",
            hint="a daemon may be starting or stopping, or another kestrel command is recording: "
            "retry in a moment (`kestrel status` shows whether the daemon runs)",
        ) from None
    try:
        yield ledger
    finally:
        ledger.close()
        close = getattr(signer, "close", None)
        if close is not None:
            close()


class _LedgerView:
    """Read-only ``records(kind=...)`` over the on-disk ledger (no key needed)."""

    def __init__(self, ledger_dir: Path) -> None:
        self._dir = ledger_dir

    def records(self, since_seq: int = 0, kind: str | None = None) -> Iterator[Record]:
        from ..ledger import iter_records

        return iter_records(self._dir, since_seq=since_seq, kind=kind)

    def latest(self, kind: str) -> Record | None:
        """The newest record of ``kind`` (the writer's saved map, then the records since: no full scan)."""
        from ..ledger.reader import latest_record

        return latest_record(self._dir, kind)


def ledger_view(state_dir: Path) -> _LedgerView | None:
    """The ledger of ``state_dir`` to read (``RecordReader``), or None when it has none yet."""
    from .._internal.paths import StateLayout

    d = StateLayout(state_dir).ledger
    return _LedgerView(d) if d.is_dir() else None
