"""Argument helpers shared by the command-group modules: one wording for the common options."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UsageError

_DURATION = re.compile(r"(\d{1,6})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

STATE_HELP = "the agent's state directory (default: $KESTREL_STATE, else ~/.local/state/kestrel)"
PASSPHRASE_FILE_HELP = (
    "file holding the agent keystore's passphrase (else $KESTREL_PASSPHRASE, else a prompt on a terminal)"
)

# Environment variables the command line reads, for `kestrel --help` (name, meaning).
ENVIRONMENT = (
    ("KESTREL_STATE", "the agent's state directory (default ~/.local/state/kestrel)"),
    ("KESTREL_PASSPHRASE", "the agent keystore's passphrase (--passphrase-file is safer)"),
    ("KESTREL_TCTI", "TPM connection, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321"),
    ("KESTREL_OWNER_KEY", "the owner's signing key file (default ~/.config/kestrel/owner/owner.key)"),
    ("KESTREL_OWNER_PASSPHRASE", "the owner key's passphrase"),
    ("KESTREL_BACKUP_PASSPHRASE", "the passphrase of an identity backup"),
    ("KESTREL_MODELS_DIR", "folder of model recipes (default: the checkout's models/)"),
    ("KESTREL_COLLECTOR_DB", "the collector's database (default ~/.local/share/kestrel/collector.db)"),
    ("KESTREL_BOARD_PROFILES", "extra folders of board profiles (':'-separated)"),
    ("KESTREL_LLM_API_KEY", "API key of an OpenAI-compatible LLM endpoint (docs/llm.md)"),
    ("KESTREL_MACHINE_ID_FILE", "machine id for machine-bound keystores (default /etc/machine-id)"),
)


def add_state_arg(p: argparse.ArgumentParser) -> None:
    """The ``--state DIR`` option every command that touches an agent takes."""
    p.add_argument("--state", metavar="DIR", help=STATE_HELP)


def add_passphrase_file_arg(p: argparse.ArgumentParser, help: str = PASSPHRASE_FILE_HELP) -> None:
    """``--passphrase-file FILE`` for commands that open the agent's keystore."""
    p.add_argument("--passphrase-file", metavar="FILE", help=help)


def environment_epilog() -> str:
    width = max(len(name) for name, _ in ENVIRONMENT)
    return "environment variables:\n" + "\n".join(f"  {name:<{width}}  {what}" for name, what in ENVIRONMENT)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, else ''."""
    import difflib  # only for a mistyped word: `kestrel run` does not load it

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_expiry(text: str, now: float) -> float:
    """An ``--expires`` value: a duration from ``now`` (``30d``, ``12h``, ``15m``, ``90s``) or a UTC time."""
    m = _DURATION.fullmatch(text.strip())
    if m:
        return now + int(m.group(1)) * _UNITS[m.group(2)]
    import calendar

    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        raise UsageError(
            f"--expires {text!r} is neither a duration (30d, 12h) nor a time like 2027-01-31T00:00:00Z"
        ) from None


def state_from(args: argparse.Namespace) -> Path:
    """The state directory a command works on: ``--state``, else $KESTREL_STATE, else the XDG default."""
    from .._internal.paths import resolve_state_dir

    return resolve_state_dir(getattr(args, "state", None))


def parse_extra_args(extra: list[str]) -> dict[str, Any]:
    """Action arguments after the options: ``--to a --subject "Hi there" --urgent`` ->
    ``{"to": "a", "subject": "Hi there", "urgent": True}``.

    One reading for every command that takes them (``kestrel call``, ``kestrel policy explain``),
    so that ``explain`` judges exactly what ``call`` would send. Values stay strings (handlers
    coerce where they must); ``--key=value`` works too; a bare ``--flag`` (last, or followed by
    another ``--key``) is ``True``; a key given twice becomes a list; ``-`` in keys becomes ``_``.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise UsageError(f"unexpected argument {tok!r}", hint="action arguments are written --key value")
        key, eq, text = tok[2:].partition("=")
        value: Any = text
        if not eq:
            if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                value = extra[i + 1]
                i += 1
            else:
                value = True
        key = key.replace("-", "_")
        if key in out:
            out[key] = (out[key] if isinstance(out[key], list) else [out[key]]) + [value]
        else:
            out[key] = value
        i += 1
    return out
