"""One strict JSON reader for every untrusted JSON input (control socket, MQTT, bundles, CLI).

Refused, each with a message that says what was wrong: input that is not UTF-8, duplicate
object keys, ``NaN``/``Infinity`` and numbers that overflow to them (``1e999``), integers
outside the signed 64-bit range (so a 5,000-digit number is an error, not a traceback),
escapes of lone UTF-16 surrogates (not Unicode text), and nesting deeper than the
interpreter can follow. The caller bounds the input's size
before calling.
"""

from __future__ import annotations

import json
import math
import re

__all__ = ["StrictJsonError", "loads_strict", "MAX_INT"]

MAX_INT = (1 << 63) - 1
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class StrictJsonError(ValueError):
    """The text is not strict JSON (``str(err)`` says why)."""


def _pairs(items: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in items:
        if k in out:
            raise StrictJsonError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _constant(name: str) -> object:
    raise StrictJsonError(f"{name} is not allowed (numbers must be finite)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJsonError(f"number {text[:40]} is out of range (numbers must be finite)")
    return value


def _int(text: str) -> int:
    if len(text) > 20:
        raise StrictJsonError(f"integer {text[:24]}... is out of range (signed 64-bit)")
    value = int(text)
    if not -MAX_INT - 1 <= value <= MAX_INT:
        raise StrictJsonError(f"integer {text} is out of range (signed 64-bit)")
    return value


def _no_lone_surrogates(value: object) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise StrictJsonError("a string holds a lone surrogate escape (not Unicode text)") from None
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def loads_strict(data: bytes | str) -> object:
    """Parse ``data``; :class:`StrictJsonError` for anything that is not strict JSON."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, parse_int=_int)
        if _SURROGATE_ESCAPE.search(text):  # rare: only then walk the value
            _no_lone_surrogates(value)
        return value
    except StrictJsonError:
        raise
    except UnicodeDecodeError as exc:
        raise StrictJsonError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise StrictJsonError("nested too deeply") from None
    except ValueError as exc:
        raise StrictJsonError(str(exc)) from None
