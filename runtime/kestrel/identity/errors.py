"""Errors raised by the identity package. Each says what, where, and what to do."""

from __future__ import annotations

from ..errors import DataError, TransportError, UsageError

__all__ = [
    "IdentityExistsError",
    "IdentityNotFoundError",
    "IdentityCorruptError",
    "WrongPassphraseError",
    "MachineBindingError",
    "KeystoreCorruptError",
    "PassphraseRequiredError",
    "NotExportableError",
    "TPMUnavailableError",
    "TPMKeyError",
]


class IdentityExistsError(DataError):
    """The state directory already holds an identity; identities are never replaced."""


class IdentityNotFoundError(DataError):
    """No identity in the state directory."""


class IdentityCorruptError(DataError):
    """identity.json is malformed or disagrees with the key material."""


class KeystoreCorruptError(DataError):
    """A keystore or backup file is damaged (bad magic, checksum, length or field)."""


class WrongPassphraseError(DataError):
    """The file is intact but the passphrase does not open it."""


class MachineBindingError(WrongPassphraseError):
    """A machine-bound keystore does not open on this machine (machine-id or secret differ)."""


class PassphraseRequiredError(UsageError):
    """A passphrase is needed and no source (argument, file, env, terminal) provided one."""


class NotExportableError(DataError):
    """The key cannot leave its keystore (TPM keys are never exportable)."""


class TPMUnavailableError(TransportError):
    """The TPM could not be reached through the configured TCTI."""


class TPMKeyError(DataError):
    """The TPM refused the stored key blob (different or cleared TPM, corrupt blob)."""
