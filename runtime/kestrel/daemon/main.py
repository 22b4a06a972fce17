"""``kestrel run``: build a :class:`Daemon` from a state directory and run it until SIGTERM.

Exit codes: 0 after SIGTERM/SIGINT (ledger flushed); a KestrelError's exit code when
the config, identity or state directory is unusable (the CLI prints it, no traceback).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, TypedDict

from .._internal.fsutil import ensure_private_dir, read_bytes
from .._internal.paths import StateLayout, resolve_state_dir
from ..errors import ConfigError, TransportError
from .config import DeviceConfig, parse_device_config

__all__ = ["load_config", "run_daemon", "tune_interpreter", "EMBEDDED_CONFIG"]

log = logging.getLogger("kestrel.daemon")
EMBEDDED_CONFIG = "kestrel/data/device.yaml"
MAX_CONFIG = 1 << 20


def load_config(path: str | os.PathLike[str] | None) -> DeviceConfig:
    """Read and parse a device config file, or the embedded default when ``path`` is None."""
    if path is None:
        # a plain path read: importlib.resources would pull in zipfile and tempfile (~0.3 MB idle RSS);
        # the package is always installed as files (editable or wheel), never zipped
        text = (Path(__file__).resolve().parent.parent / "data" / "device.yaml").read_text("utf-8")
        return parse_device_config(text, source=f"<embedded {EMBEDDED_CONFIG}>")
    data = read_bytes(path, what="device config", max_size=MAX_CONFIG)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", path=str(path)) from None
    return parse_device_config(text, source=str(path))


class _LedgerOptions(TypedDict, total=False):
    max_batch_delay_ms: float
    checkpoint_interval_ms: float
    max_segment_bytes: int


def _ledger_options(cfg: DeviceConfig) -> _LedgerOptions:
    """``Ledger.open`` options from the config: group commit and checkpoint pacing (``audit``), and
    segments small enough for retention to bound flash (pruning frees whole segments only)."""
    opts: _LedgerOptions = {
        "max_batch_delay_ms": cfg.audit.commit_delay_ms,
        "checkpoint_interval_ms": cfg.audit.checkpoint_interval_ms,
    }
    retention = getattr(cfg.sync, "retention", None)
    max_bytes = getattr(retention, "max_bytes", None)
    if max_bytes:
        opts["max_segment_bytes"] = max(64 * 1024, min(64 << 20, max_bytes // 16))
    return opts


def _setup_logging(level: str) -> None:
    root = logging.getLogger("kestrel")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        # systemd's journal adds its own timestamps; "<N>" prefixes carry the priority
        fmt = (
            "<%(levelno)s>%(name)s: %(message)s"
            if os.environ.get("JOURNAL_STREAM")
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        handler.setFormatter(_JournalFormatter(fmt))
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


class _JournalFormatter(logging.Formatter):
    _PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace(f"<{record.levelno}>", f"<{self._PRIO.get(record.levelno, 6)}>", 1)


def _ensure_identity(state_dir: Path, name: str, *, passphrase: bytes | None = None) -> tuple[str, Any, Any]:
    """Load the identity, creating a machine-bound file identity on first run.

    Returns (did, signer, the new Identity or None): the caller records ``agent.created`` for a new one.
    """
    from ..identity import IdentityNotFoundError, create_identity, load_identity, open_signer

    created = None
    try:
        ident = load_identity(state_dir)
    except IdentityNotFoundError:
        ident = created = create_identity(state_dir, name=name, backend="file", machine_bound=True)
        print(
            f"kestrel: created a new identity {ident.did} in {state_dir}\n"
            f"  (file keystore, machine-bound: it opens only on this machine; back it up with "
            f"`kestrel identity backup`)",
            file=sys.stderr,
        )
    # A passphrase keystore: --passphrase-file, else $KESTREL_PASSPHRASE, else a prompt only when this
    # process owns the terminal's foreground; a daemon without one fails here at once with the way out.
    return ident.did, open_signer(state_dir, passphrase=passphrase), created


SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """Latency over throughput: hand the GIL back to the event loop within 1 ms (default 5 ms).

    The ledger's commit and signing threads and the executors run Python too; with the
    default interval the loop can wait up to 5 ms for the GIL after any system call.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def _lock_state(run_dir: Path) -> int:
    """Hold ``STATE/run/daemon.lock`` (flock) for the process's life: one daemon per state directory."""
    import fcntl

    run_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    path = run_dir / "daemon.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise TransportError(
            f"another kestrel daemon (pid {other}) is running on {run_dir.parent}",
            hint="stop it first, or give this one its own --state directory",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def run_daemon(
    *,
    config_path: str | None,
    board: str | None,
    state_dir: str | None,
    log_level: str = "info",
    passphrase: bytes | None = None,
) -> int:
    """Everything ``kestrel run`` does; returns the process exit code."""
    _setup_logging(log_level)
    tune_interpreter()
    cfg = load_config(config_path)
    state = resolve_state_dir(state_dir)
    ensure_private_dir(state)
    layout = StateLayout(state)
    lock_fd = _lock_state(layout.run)  # before the ledger is opened: two writers would fork the log
    board_name = board or cfg.board or ("sim" if config_path is None else "auto")

    from ..io.boards import load_profile
    from ..io.gpio import open_pin_factory
    from ..ledger import Ledger
    from .runtime import Daemon

    profile = load_profile(board_name)
    did, signer, created = _ensure_identity(state, cfg.name, passphrase=passphrase)
    bls_key = None
    if (state / "bls").is_dir():  # a BLS key for group decisions (docs/quorum.md); blspy loads only then
        from ..identity.bls_store import open_bls_key

        bls_key = open_bls_key(state, passphrase=passphrase)
    ledger = Ledger.open(layout.ledger, signer=signer, durability="batched", **_ledger_options(cfg))
    if created is not None:  # the same first record `kestrel init-agent` writes
        from ..agent.core import created_body

        ledger.append("agent.created", created_body(created))
    factory = None
    try:
        factory = open_pin_factory(profile)
        daemon = Daemon(
            config=cfg,
            state_dir=state,
            ledger=ledger,
            factory=factory,
            agent_id=did,
            board=profile.name,
            load_config=lambda: load_config(config_path),
            freeze_gc=True,
            signer=signer,
            bls_key=bls_key,
        )
        asyncio.run(_main(daemon))
    finally:
        if factory is not None:
            factory.close()
        ledger.close()
        close = getattr(signer, "close", None)  # a TPM signer holds a TPM connection
        if close is not None:
            close()
        os.close(lock_fd)
    log.info("stopped; ledger flushed (%d records)", ledger.size)
    return 0


async def _main(daemon: Any) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="kestrel-io"))
    loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
    loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    await daemon.run()
