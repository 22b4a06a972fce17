"""``fetch_data``: one bounded HTTP(S) GET of the URL the policy decided on.

The policy engine has checked the canonical URL (:func:`kestrel.policy.canonical.parse_url`)
against the network allow-list; this module fetches exactly that URL:

- the host name is resolved once, and the connection goes to that address (TLS still
  verifies the certificate for the name): no second lookup that DNS rebinding could
  answer differently. A name that resolves to a loopback, link-local, multicast or
  unspecified address is refused (a public name pointing inside the device);
- every redirect is a new policy decision (``authorize``), recorded like any other, and
  at most :data:`MAX_REDIRECTS` are followed; without ``authorize`` none are;
- no proxies, no content encodings, a size cap and a deadline.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError, TransportError
from ..policy.canonical import ArgsError, CanonicalUrl, canonicalize, parse_url

__all__ = [
    "FetchArgsError",
    "FetchResult",
    "RedirectDeniedError",
    "parse_fetch_args",
    "fetch_blocking",
    "MAX_REDIRECTS",
]

TEXT_REPLY_LIMIT = 64 * 1024
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchArgsError(DataError):
    """fetch_data arguments are missing or not an http(s) URL."""


class RedirectDeniedError(DataError):
    """A redirect led to a URL the policy does not permit (or redirects are not followed)."""


@dataclass(frozen=True)
class FetchResult:
    url: str
    status: int
    content_type: str
    body: bytes
    redirects: tuple[str, ...] = field(default=())  # the URLs followed before ``url``, in order

    def reply(self) -> dict[str, Any]:
        """What the caller gets back (the text itself when it is small UTF-8)."""
        out = self.record()
        if len(self.body) <= TEXT_REPLY_LIMIT:
            try:
                out["text"] = self.body.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return out

    def record(self) -> dict[str, Any]:
        """What the ledger gets: the digest and size, never the data."""
        out: dict[str, Any] = {
            "url": self.url,
            "status": self.status,
            "content_type": self.content_type,
            "bytes": len(self.body),
            "sha256": hashlib.sha256(self.body).hexdigest(),
        }
        if self.redirects:
            out["redirected_from"] = list(self.redirects)
        return out


def parse_fetch_args(args: dict[str, Any]) -> CanonicalUrl:
    """The canonical URL of fetch_data's arguments (the one ``url``)."""
    try:
        return parse_url(canonicalize("fetch_data", args)["url"])
    except ArgsError as exc:
        raise FetchArgsError(exc.message, hint=exc.hint) from None


def resolve_once(url: CanonicalUrl) -> str:
    """The one address ``url`` is fetched from (TransportError if the name does not resolve)."""
    import ipaddress
    import socket

    if url.ip:
        return url.host
    try:
        infos = socket.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TransportError(f"fetch_data: cannot resolve {url.host}: {exc}") from None
    if not infos:
        raise TransportError(f"fetch_data: {url.host} has no address")
    addr = str(infos[0][4][0])
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if url.host != "localhost" and (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified):
        raise DataError(
            f"fetch_data: {url.host} resolves to {addr}, an address inside this device or link; refused",
            hint="name the address itself in the URL (e.g. http://127.0.0.1/) if that is intended",
        )
    return addr


def _connection(url: CanonicalUrl, addr: str, timeout_s: float) -> Any:
    """An http.client connection to ``addr`` that speaks for ``url.host`` (Host header, SNI, certificate)."""
    import http.client
    import socket

    if url.scheme == "http":

        class Pinned(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.create_connection((addr, self.port), self.timeout)

        return Pinned(url.host, url.port, timeout=timeout_s)
    import ssl

    class PinnedTLS(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = socket.create_connection((addr, self.port), self.timeout)
            self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]

    return PinnedTLS(url.host, url.port, timeout=timeout_s, context=ssl.create_default_context())


def _get(url: CanonicalUrl, *, max_bytes: int, deadline: float, timeout_s: float) -> tuple[int, str, bytes, str]:
    """(status, content type, body, Location) of one GET; the body is read only for a non-redirect."""
    import http.client

    conn = _connection(url, resolve_once(url), timeout_s)
    try:
        conn.request(
            "GET",
            url.target,
            headers={"User-Agent": "kestrel/0.1", "Accept-Encoding": "identity", "Connection": "close"},
        )
        resp = conn.getresponse()
        location = resp.getheader("Location") or ""
        if resp.status in _REDIRECTS:
            return resp.status, "", b"", location
        if resp.status >= 400:
            raise TransportError(f"fetch_data: {url.text} answered HTTP {resp.status} {resp.reason}")
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise DataError(f"fetch_data: {url.text} is {declared} bytes, over the {max_bytes}-byte limit")
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise TransportError(f"fetch_data: {url.text} took longer than {timeout_s}s")
            chunk = resp.read(min(65536, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise DataError(f"fetch_data: {url.text} is over the {max_bytes}-byte limit")
        return resp.status, resp.getheader("Content-Type") or "", b"".join(chunks), location
    except (http.client.HTTPException, TimeoutError, OSError) as exc:
        raise TransportError(f"fetch_data: {url.text}: {exc or type(exc).__name__}") from None
    finally:
        conn.close()


def fetch_blocking(
    url: CanonicalUrl, *, max_bytes: int, timeout_s: float, authorize: Callable[[str], None] | None = None
) -> FetchResult:
    """GET ``url``; ``authorize(next_url)`` must return for each redirect to be followed (it raises
    :class:`RedirectDeniedError` or another KestrelError to stop)."""
    import urllib.parse

    deadline = time.monotonic() + timeout_s
    followed: list[str] = []
    while True:
        status, ctype, body, location = _get(url, max_bytes=max_bytes, deadline=deadline, timeout_s=timeout_s)
        if status not in _REDIRECTS:
            return FetchResult(url.text, status, ctype, body, tuple(followed))
        if not location:
            raise TransportError(f"fetch_data: {url.text} answered HTTP {status} without a Location")
        try:
            nxt = parse_url(urllib.parse.urljoin(url.text, location), where="redirect target")
        except ArgsError as exc:
            raise RedirectDeniedError(f"fetch_data: {url.text} redirects to an unusable URL: {exc.message}") from None
        if authorize is None:
            raise RedirectDeniedError(
                f"fetch_data: {url.text} redirects to {nxt.text}; redirects are not followed",
                hint="ask for the final URL, and allow its host in the policy",
            )
        if len(followed) >= MAX_REDIRECTS:
            raise TransportError(f"fetch_data: more than {MAX_REDIRECTS} redirects from {followed[0]}")
        authorize(nxt.text)
        followed.append(url.text)
        url = nxt
