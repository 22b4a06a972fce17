"""Turning sensor bytes into values for triggers, pure (docs/device-config.md, "Sensor values")."""

from __future__ import annotations

from typing import Any

from .._internal.strictjson import StrictJsonError, loads_strict
from ..errors import DataError

__all__ = ["PayloadError", "decode_payload", "decode_frame", "parse_nmea", "MAX_DEPTH"]

MAX_DEPTH = 16


class PayloadError(DataError):
    """Sensor bytes are not what the sensor's format says (bad JSON, bad msgpack, bad text)."""


def _check_shape(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise PayloadError(f"value nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise PayloadError("map keys must be strings")
            _check_shape(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_shape(v, depth + 1)
    elif isinstance(value, float) and value != value:
        raise PayloadError("NaN is not a sensor value")
    elif not (value is None or isinstance(value, (str, int, float, bool, bytes))):
        raise PayloadError(f"unsupported value type {type(value).__name__}")
    return value


def decode_payload(fmt: str, payload: bytes, *, max_size: int) -> Any:
    """Decode an MQTT payload of format json | msgpack | text, at most ``max_size`` bytes."""
    if len(payload) > max_size:
        raise PayloadError(f"payload of {len(payload)} bytes is over the {max_size}-byte limit")
    if fmt == "msgpack":
        import msgpack

        try:
            value = msgpack.unpackb(payload, raw=False, strict_map_key=True, timestamp=0)
        except Exception as exc:  # msgpack raises a zoo of exception types on garbage
            raise PayloadError(f"not valid msgpack: {type(exc).__name__}: {exc}"[:200]) from None
        return _check_shape(value)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if fmt == "text":
        return text
    try:
        value = loads_strict(text)
    except StrictJsonError as exc:
        raise PayloadError(f"not valid JSON: {exc}"[:200]) from None
    return _check_shape(value)


def parse_nmea(sentence: str) -> dict[str, Any]:
    """``$GPGGA,...*hh`` -> {"type": "GPGGA", "fields": [...]} (checksum already checked by framing)."""
    s = sentence.strip()
    if not s or s[0] not in "$!":
        raise PayloadError(f"not an NMEA sentence: {s[:40]!r}")
    body = s[1:].split("*", 1)[0]
    parts = body.split(",")
    if not parts[0].isalnum():
        raise PayloadError(f"bad NMEA sentence type {parts[0][:10]!r}")
    return {"type": parts[0], "fields": parts[1:]}


def decode_frame(fmt: str, data: bytes) -> Any:
    """Decode one serial frame of format text | nmea | json | bytes."""
    if fmt == "bytes":
        return data.hex()
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"frame is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if fmt == "nmea":
        return parse_nmea(text)
    if fmt == "json":
        try:
            return _check_shape(loads_strict(text))
        except StrictJsonError as exc:
            raise PayloadError(f"frame is not valid JSON: {exc}"[:200]) from None
    if any(ord(c) < 32 and c not in "\t" for c in text):
        raise PayloadError("frame holds control characters")
    return text
