"""The control-socket wire format (docs/control-protocol.md), pure.

One JSON object per line (UTF-8, ``\\n``-terminated, at most :data:`MAX_LINE` bytes).
A request is ``{"id": ID, "method": NAME, "params": {...}}``; the answer to it is
``{"id": ID, "result": ...}`` or ``{"id": ID, "error": {"code", "message", "hint"}}``.
A streaming method (``follow``, ``ask``) sends ``{"id": ID, "event": ...}`` lines before its answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .._internal.strictjson import StrictJsonError, loads_strict
from ..errors import DataError, KestrelError

__all__ = [
    "MAX_LINE",
    "METHODS",
    "Request",
    "ProtocolError",
    "RemoteError",
    "decode_request",
    "encode",
    "encode_result",
    "encode_error",
    "encode_event",
    "decode_reply",
    "to_json_value",
    "from_hex",
    "error_fields",
    "WIRE_CODES",
    "UPLOAD_CHUNK",
]

MAX_LINE = 256 * 1024
MAX_DEPTH = 32  # nesting of objects and lists in one request
METHODS = (
    "call",
    "status",
    "sim.drive",
    "sim.list",
    "follow",
    "reload",
    "ota.apply",
    "ota.rollback",
    "trust.apply",
    "peer.receive",
    "record",
    "ask",
)
RECORDABLE = frozenset(
    {"model.deployed", "memory.added", "peer.trusted", "peer.untrusted"}
)  # kinds `record` accepts (CLI commands' own work)
WIRE_CODES = frozenset({"bad_request", "forbidden", "denied", "failed", "internal", "unknown_action"})
UPLOAD_CHUNK = 96 * 1024  # raw bytes per ota.apply line (hex doubles it, under MAX_LINE)


class ProtocolError(DataError):
    """A line on the control socket is not a valid message."""

    code = "bad_request"


class RemoteError(KestrelError):
    """The daemon answered a request with an error."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        hint: str | None = None,
        reason: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.reason = reason  # the daemon-side error's own code (e.g. an OTA refusal's "expired")
        self.exit_code = (
            exit_code
            if isinstance(exit_code, int) and not isinstance(exit_code, bool) and 0 < exit_code < 126
            else {"denied": 5, "forbidden": 77, "bad_request": 2, "unknown_action": 2}.get(code, 1)
        )


@dataclass(frozen=True)
class Request:
    id: int | str | None
    method: str
    params: dict[str, Any] = field(default_factory=dict)


def decode_request(line: bytes) -> Request:
    """Parse one request line; raise ProtocolError (carrying the id when it could be read)."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request longer than {MAX_LINE} bytes")
    try:
        msg = loads_strict(line)
    except StrictJsonError as exc:
        raise ProtocolError(
            f"request is not strict JSON: {exc}",
            hint="one JSON object per line; finite numbers, 64-bit integers, no duplicate keys",
        ) from None
    if not isinstance(msg, dict):
        raise ProtocolError("request must be a JSON object")
    if _depth(msg) > MAX_DEPTH:
        raise ProtocolError(f"request is nested more than {MAX_DEPTH} levels deep")
    rid = msg.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (int, str))):
        raise ProtocolError("'id' must be an integer or a string")
    method = msg.get("method")
    if not isinstance(method, str) or method not in METHODS:
        err = ProtocolError(f"unknown method {method!r}", hint=f"methods: {', '.join(METHODS)}")
        err.request_id = rid  # type: ignore[attr-defined]
        raise err
    params = msg.get("params", {})
    if not isinstance(params, dict):
        err = ProtocolError("'params' must be a JSON object")
        err.request_id = rid  # type: ignore[attr-defined]
        raise err
    return Request(rid, method, params)


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def to_json_value(value: Any) -> Any:
    """Make a ledger/msgpack value JSON-safe: bytes become ``{"$hex": "..."}``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$hex": bytes(value).hex()}
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"


def encode_result(rid: Any, result: Any) -> bytes:
    return encode({"id": rid, "result": to_json_value(result)})


def encode_event(rid: Any, event: Any) -> bytes:
    return encode({"id": rid, "event": to_json_value(event)})


def encode_error(rid: Any, code: str, message: str, hint: str | None = None, **extra: Any) -> bytes:
    """``extra``: optional ``reason`` (the error's own code), ``exit`` (its CLI exit code) and, for a
    denial, ``decision``."""
    return encode(
        {
            "id": rid,
            "error": {
                "code": code,
                "message": message,
                "hint": hint,
                **{k: v for k, v in extra.items() if v is not None},
            },
        }
    )


def error_fields(exc: KestrelError) -> tuple[str, dict[str, Any]]:
    """The wire code of an error and its extra fields (its own code as ``reason``, its ``exit`` code)."""
    own = getattr(exc, "code", None)
    if isinstance(exc, ProtocolError):
        return "bad_request", {}
    if own in WIRE_CODES:  # a denial carries the decision that refused it: {action, rule, reason}
        return own, {"decision": getattr(exc, "decision", None)} if own == "denied" else {}
    return "failed", {"reason": own if isinstance(own, str) else None, "exit": exc.exit_code}


def from_hex(value: Any, *, what: str) -> bytes:
    """Bytes sent as ``{"$hex": "..."}``; ProtocolError otherwise."""
    if isinstance(value, dict) and set(value) == {"$hex"} and isinstance(value["$hex"], str):
        try:
            return bytes.fromhex(value["$hex"])
        except ValueError:
            pass
    raise ProtocolError(f'{what} must be bytes written as {{"$hex": "<hex>"}}')


def decode_reply(line: bytes) -> dict[str, Any]:
    """Parse one line from the daemon; raise ProtocolError if it is not a reply object."""
    try:
        msg = loads_strict(line)
    except StrictJsonError as exc:
        raise ProtocolError(f"daemon sent a line that is not JSON: {exc}") from None
    if not isinstance(msg, dict) or not ({"result", "error", "event"} & msg.keys()):
        raise ProtocolError("daemon sent a message that is not a reply")
    err = msg.get("error")
    if err is not None and not (isinstance(err, dict) and isinstance(err.get("message"), str)):
        raise ProtocolError("daemon sent a malformed error")
    return msg
