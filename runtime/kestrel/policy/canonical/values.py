"""Plain JSON values with finite numbers: the only values an action's arguments may hold."""

from __future__ import annotations

import math
from typing import Any

from .errors import ArgsError

__all__ = ["MAX_DEPTH", "MAX_INT", "MAX_ITEMS", "plain_value"]

MAX_DEPTH = 16  # nesting of lists and objects inside one argument
MAX_INT = (1 << 63) - 1  # integers are signed 64-bit
MAX_ITEMS = 10_000  # elements of one list or object


def plain_value(value: Any, *, where: str, depth: int = 0) -> Any:
    """``value`` as plain JSON (dict with str keys, list, str, int, float, bool, None).

    Refuses NaN and infinities, integers outside the signed 64-bit range, non-string keys,
    nesting deeper than :data:`MAX_DEPTH` and any other Python type. Tuples become lists.
    """
    t = type(value)
    if t is str or value is None or t is bool:
        return value
    if t is int:
        if -MAX_INT - 1 <= value <= MAX_INT:
            return value
        raise ArgsError(f"{where}: integer out of range (signed 64-bit)")
    if t is float:
        if math.isfinite(value):
            return value
        raise ArgsError(f"{where}: {value!r} is not a finite number", hint="NaN and infinities are refused in requests")
    if depth >= MAX_DEPTH:
        raise ArgsError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            raise ArgsError(f"{where}: more than {MAX_ITEMS} elements")
        return [plain_value(v, where=f"{where}[{i}]", depth=depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ArgsError(f"{where}: more than {MAX_ITEMS} members")
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise ArgsError(f"{where}: object keys must be strings")
            out[k] = plain_value(v, where=f"{where}.{k}", depth=depth + 1)
        return out
    if isinstance(value, bool):  # a bool subclass
        return bool(value)
    if isinstance(value, int):
        return plain_value(int(value), where=where, depth=depth)
    if isinstance(value, float):
        return plain_value(float(value), where=where, depth=depth)
    if isinstance(value, str):
        return plain_value(str(value), where=where, depth=depth)
    raise ArgsError(f"{where}: a {type(value).__name__} is not a JSON value")
