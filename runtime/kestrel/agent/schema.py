"""A small, strict JSON Schema subset for action arguments (pure).

Supported keywords: ``type`` (object, string, integer, number, boolean, array,
null, or a list of them), ``properties``, ``required``, ``additionalProperties``
(default **false**: an argument the schema does not name is refused), ``enum``,
``const``, ``minimum``, ``maximum``, ``minLength``, ``maxLength``, ``pattern``
(``re.search``), ``items``, ``maxItems``, ``description``. Unknown keywords are a
schema error, so a typo cannot silently widen what the model may send.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from .._internal.linregex import LinearRegex, RegexError, compile_linear
from ..errors import ConfigError

__all__ = ["check_schema", "schema_errors"]

_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "const",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "items",
    "maxItems",
    "description",
    "default",
}
_TYPES = {"object", "string", "integer", "number", "boolean", "array", "null"}
_PY = {"object": dict, "string": str, "boolean": bool, "array": list, "null": type(None)}


@lru_cache(maxsize=256)
def _pattern(text: str) -> LinearRegex:
    """A schema ``pattern``, matched in linear time (a model writes the text it is matched against)."""
    if not isinstance(text, str):
        raise TypeError("a pattern must be a string")
    return compile_linear(text, mode="search")


def check_schema(schema: Mapping[str, Any], *, where: str) -> None:
    """Raise ConfigError if ``schema`` uses anything outside the supported subset."""
    if not isinstance(schema, Mapping):
        raise ConfigError("a schema must be a mapping", key=where)
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise ConfigError(f"unsupported schema keywords {sorted(unknown)}", key=where)
    types = schema.get("type", [])
    for t in [types] if isinstance(types, str) else types:
        if t not in _TYPES:
            raise ConfigError(f"unknown schema type {t!r}", key=where)
    for name, sub in (schema.get("properties") or {}).items():
        check_schema(sub, where=f"{where}.{name}")
    if "items" in schema:
        check_schema(schema["items"], where=f"{where}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        check_schema(schema["additionalProperties"], where=f"{where}.*")
    if "pattern" in schema:
        try:
            _pattern(schema["pattern"])
        except (RegexError, TypeError) as exc:
            raise ConfigError(f"bad pattern: {exc}", key=where) from None


def _type_ok(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _PY[t])


def schema_errors(value: Any, schema: Mapping[str, Any], *, path: str = "args") -> list[str]:
    """Every way ``value`` breaks ``schema``, as short messages naming the path."""
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        tlist = [types] if isinstance(types, str) else list(types)
        if not any(_type_ok(value, t) for t in tlist):
            return [f"{path}: expected {'/'.join(tlist)}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {schema['enum']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: must be <= {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            errors.append(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors.extend(schema_errors(item, schema["items"], path=f"{path}[{i}]"))
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                errors.append(f"{path}: missing required {name!r}")
        extra = schema.get("additionalProperties", False)
        for name, item in value.items():
            if name in props:
                errors.extend(schema_errors(item, props[name], path=f"{path}.{name}"))
            elif extra is False:
                errors.append(f"{path}: unexpected argument {name!r}")
            elif isinstance(extra, Mapping):
                errors.extend(schema_errors(item, extra, path=f"{path}.{name}"))
    return errors
