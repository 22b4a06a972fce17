"""Argument templates: a literal value, or strings with ``${expr}`` parts filled from sensor values.

The expressions inside ``${...}`` are the trigger language (:mod:`.expr`); a template whose
whole text is one ``${x}`` keeps ``x``'s type, otherwise the parts are joined as text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .expr import Expression, as_text, compile_expression

__all__ = ["Template"]

_TEMPLATE = re.compile(r"\$\{([^}]*)\}")


@dataclass(frozen=True)
class Template:
    """An argument value: a literal, or a string with ``${expr}`` parts filled from sensor values."""

    literal: Any
    parts: tuple[tuple[str, Expression | None], ...] = ()

    @classmethod
    def of(cls, value: Any) -> Template:
        if isinstance(value, str) and "${" in value:
            parts: list[tuple[str, Expression | None]] = []
            pos = 0
            for m in _TEMPLATE.finditer(value):
                if m.start() > pos:
                    parts.append((value[pos : m.start()], None))
                parts.append((m.group(1), compile_expression(m.group(1))))
                pos = m.end()
            if pos < len(value):
                parts.append((value[pos:], None))
            return cls(value, tuple(parts))
        if isinstance(value, dict):
            return cls({k: cls.of(v) for k, v in value.items()})
        if isinstance(value, list):
            return cls([cls.of(v) for v in value])
        return cls(value)

    def render(self, values: Mapping[str, Any]) -> Any:
        if self.parts:
            if len(self.parts) == 1 and self.parts[0][1] is not None:
                return self.parts[0][1].evaluate(values)  # "${x}" keeps x's type
            return "".join(as_text(e.evaluate(values)) if e else text for text, e in self.parts)
        if isinstance(self.literal, dict):
            return {k: t.render(values) for k, t in self.literal.items()}
        if isinstance(self.literal, list):
            return [t.render(values) for t in self.literal]
        return self.literal
