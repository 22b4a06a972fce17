"""The smallest HTTP/1.1 the UI needs, on asyncio streams: bounded requests in, responses out.

No chunked request bodies (a ``Transfer-Encoding`` header is refused, so a request can never be
read two ways), no pipelining beyond keep-alive, head and body limits checked before reading,
and a deadline on every read (docs/ui.md, "HTTP").
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

__all__ = ["Request", "Response", "HttpError", "read_request", "write_response", "MAX_HEAD", "MAX_BODY"]

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
MAX_HEADERS = 64
BODY_TIMEOUT_S = 10.0
_REASONS = {
    200: "OK",
    303: "See Other",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HttpError(Exception):
    """A request that cannot be served: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    peer: str
    keep_alive: bool

    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body (first value of each name)."""
        ctype = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise HttpError(400, "expected a form (application/x-www-form-urlencoded)")
        try:
            pairs = parse_qsl(
                self.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=32
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpError(400, f"the form cannot be read: {exc}") from None
        out: dict[str, str] = {}
        for k, v in pairs:
            out.setdefault(k, v)
        return out

    def cookies(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in self.headers.get("cookie", "").split(";"):
            name, eq, value = part.strip().partition("=")
            if eq and name:
                out.setdefault(name, value)
        return out


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


async def read_request(
    reader: asyncio.StreamReader, *, peer: str, idle_s: float, max_body: int = MAX_BODY
) -> Request | None:
    """The next request on a connection; None when the client closed it or did not send a whole head
    within ``idle_s`` (the stream's limit bounds the head: LimitOverrunError becomes 431)."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle_s)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return None  # closed, or idle too long: the connection ends quietly
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    if len(head) > MAX_HEAD:
        raise HttpError(431, "request head too large")
    method, path, query, headers, version = _parse_head(head)
    if "transfer-encoding" in headers:
        raise HttpError(501, "chunked or encoded request bodies are not supported")
    body = b""
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or len(length) > 9:
            raise HttpError(400, "bad Content-Length")
        if int(length) > max_body:
            raise HttpError(413, f"request body larger than {max_body} bytes")
        try:
            body = await asyncio.wait_for(reader.readexactly(int(length)), BODY_TIMEOUT_S)
        except TimeoutError:
            raise HttpError(408, "request body not received in time") from None
        except asyncio.IncompleteReadError:
            return None
    elif method == "POST":
        raise HttpError(411, "a POST needs a Content-Length")
    conn = headers.get("connection", "").lower()
    keep = version == "HTTP/1.1" and "close" not in conn
    return Request(method, path, query, headers, body, peer, keep)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str], dict[str, str], str]:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if (
        len(parts) != 3
        or parts[2] not in ("HTTP/1.1", "HTTP/1.0")
        or not parts[0]
        or not set(parts[0]) <= _TOKEN_CHARS
        or not parts[1].startswith("/")
    ):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or not set(name) <= _TOKEN_CHARS:
            raise HttpError(400, "malformed header line")
        key = name.lower()
        if key in headers and key in ("host", "content-length", "authorization", "cookie", "transfer-encoding"):
            raise HttpError(400, f"duplicate {name} header")
        headers[key] = value.strip(" \t")
        if len(headers) > MAX_HEADERS:
            raise HttpError(431, "too many headers")
    raw_path, _, raw_query = target.partition("?")
    path = unquote(raw_path.split("#", 1)[0], errors="strict") if "%" in raw_path else raw_path
    try:
        query = dict(parse_qsl(raw_query, max_num_fields=16)) if raw_query else {}
    except ValueError:
        raise HttpError(400, "malformed query") from None
    return method, path, query, headers, version


SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),  # no-referrer would make browsers send "Origin: null" on form posts
    ("Cache-Control", "no-store"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)


def render_head(resp: Response, *, keep_alive: bool, extra: Iterable[tuple[str, str]] = SECURITY_HEADERS) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Status')}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    lines += [f"{k}: {v}" for k, v in (*extra, *resp.headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def write_response(
    writer: asyncio.StreamWriter, resp: Response, *, keep_alive: bool, head_only: bool = False
) -> None:
    writer.write(render_head(resp, keep_alive=keep_alive) + (b"" if head_only else resp.body))
    await writer.drain()
