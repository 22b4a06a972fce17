"""OTA errors. Every refusal carries a stable reason ``code`` (recorded in the ledger)."""

from __future__ import annotations

from ..errors import DataError

__all__ = [
    "BundleError",
    "BundleFormatError",
    "BundleSignatureError",
    "BundleExpiredError",
    "BundleTargetError",
    "BundleRollbackError",
    "BundleContentError",
    "BundleHealthError",
    "TrustRootError",
]


class BundleError(DataError):
    """A bundle was refused. ``code`` is a stable reason code (docs/bundle-format.md)."""

    code = "refused"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        if code is not None:
            self.code = code


class BundleFormatError(BundleError):
    """Not a well-formed bundle: bad magic, truncated, oversize, bad manifest, bad entry."""

    code = "malformed"


class BundleSignatureError(BundleError):
    """Not signed by a threshold of distinct trusted owner keys."""

    code = "threshold"


class BundleExpiredError(BundleError):
    code = "expired"


class BundleTargetError(BundleError):
    """Meant for another agent or group."""

    code = "wrong-target"


class BundleRollbackError(BundleError):
    """Its security counter is not above the device's."""

    code = "rollback"


class BundleContentError(BundleError):
    """Contents do not match the signed manifest (sizes, hashes)."""

    code = "hash-mismatch"


class BundleHealthError(BundleError):
    """The staged bundle failed its health check; the previous slot stays active."""

    code = "health"


class TrustRootError(DataError):
    """A trust root (or a rotation to a new one) is malformed or not signed as required."""

    code = "root"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        if code is not None:
            self.code = code
