"""The one error of canonicalisation."""

from __future__ import annotations

from ...errors import DataError

__all__ = ["ArgsError"]


class ArgsError(DataError):
    """An action's arguments cannot be put in their canonical form (ambiguous, malformed or unsafe).

    The policy denies such a request (rule ``invalid-args``) and nothing is executed.
    """

    code = "invalid_args"
