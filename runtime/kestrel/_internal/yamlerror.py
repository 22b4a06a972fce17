"""One conversion from a PyYAML parse error to a :class:`~kestrel.errors.ConfigError` with position."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["yaml_config_error"]


def yaml_config_error(exc: Any, *, source: str, label: str, unmarked_label: str | None = None) -> ConfigError:
    """``label: problem`` at the error's line and column (1-based) when PyYAML knows them.

    ``exc`` is a ``yaml.YAMLError``; errors without a position (e.g. a reader error) get
    ``unmarked_label`` (default ``label``) and the error's own text.
    """
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None and problem is None:
        return ConfigError(f"{unmarked_label or label}: {exc}", path=source)
    return ConfigError(
        f"{label}: {problem or getattr(exc, 'context', None) or exc}",
        path=source,
        line=mark.line + 1 if mark else None,
        column=mark.column + 1 if mark else None,
    )
