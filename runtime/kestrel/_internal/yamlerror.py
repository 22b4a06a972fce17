"""One conversion from a PyYAML parse error to a :class:`~kestrel.errors.ConfigError` with position."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["yaml_config_error", "yaml_problem"]


def yaml_problem(exc: Any) -> tuple[str, int | None, int | None, bool]:
    """(what went wrong, line, column, whether PyYAML marked it) of a ``yaml.YAMLError``; 1-based."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None and problem is None:
        return str(exc), None, None, False
    text = str(problem or getattr(exc, "context", None) or exc)
    return text, (mark.line + 1 if mark else None), (mark.column + 1 if mark else None), True


def yaml_config_error(exc: Any, *, source: str, label: str, unmarked_label: str | None = None) -> ConfigError:
    """``label: problem`` at the error's line and column (1-based) when PyYAML knows them.

    ``exc`` is a ``yaml.YAMLError``; errors without a position (e.g. a reader error) get
    ``unmarked_label`` (default ``label``) and the error's own text.
    """
    text, line, column, marked = yaml_problem(exc)
    return ConfigError(f"{label if marked else unmarked_label or label}: {text}", path=source, line=line, column=column)
