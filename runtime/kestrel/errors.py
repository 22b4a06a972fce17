"""One exception hierarchy for all of Kestrel.

Every error a user can see derives from :class:`KestrelError`. Its message says
what went wrong and where; its ``hint`` says what to do about it. The CLI prints
both and exits with ``exit_code``; it never shows a traceback for these.

Two families sit under the root, as in python-tuf's ngclient:

* :class:`DataError` - the bytes are wrong (corrupt ledger frame, bad signature,
  malformed config, rejected bundle). Retrying will not help.
* :class:`TransportError` - the bytes could not be moved (disk unreadable, TPM
  unreachable, broker down). Retrying later may help.

Sub-packages define their specific errors as subclasses of these families.
"""

from __future__ import annotations

__all__ = [
    "KestrelError",
    "DataError",
    "TransportError",
    "ConfigError",
    "UsageError",
]


class KestrelError(Exception):
    """Root of every Kestrel error. ``str(err)`` is the user-facing message."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class DataError(KestrelError):
    """Input data is malformed, corrupt, forged or refused. Retrying will not help."""

    exit_code = 2


class TransportError(KestrelError):
    """A device, file system, socket or broker could not be reached or used."""

    exit_code = 3


class ConfigError(DataError):
    """A configuration or profile file is malformed. Names the file, line and key."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = []
        if path:
            loc = path
            if line is not None:
                loc += f":{line}"
                if column is not None:
                    loc += f":{column}"
            where.append(loc)
        if key:
            where.append(f"key '{key}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message, hint=hint)
        self.path = path
        self.line = line
        self.column = column
        self.key = key


class UsageError(KestrelError):
    """The command line was used wrongly."""

    exit_code = 64
