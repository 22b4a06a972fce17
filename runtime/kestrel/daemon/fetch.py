"""``fetch_data``: one bounded HTTP(S) GET (urllib, run in an executor thread).

The policy engine has already checked the URL against the network allow-list.
This module keeps the request inside what was allowed: http/https only, no
redirects (a redirect could leave the allowed host), a size cap and a deadline.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..errors import DataError, TransportError

__all__ = ["FetchArgsError", "FetchResult", "parse_fetch_args", "fetch_blocking"]

TEXT_REPLY_LIMIT = 64 * 1024


class FetchArgsError(DataError):
    """fetch_data arguments are missing or not an http(s) URL."""


@dataclass(frozen=True)
class FetchResult:
    url: str
    status: int
    content_type: str
    body: bytes

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
        return {"url": self.url, "status": self.status, "content_type": self.content_type,
                "bytes": len(self.body), "sha256": hashlib.sha256(self.body).hexdigest()}


def parse_fetch_args(args: dict[str, Any]) -> str:
    url = args.get("url")
    if not isinstance(url, str) or len(url) > 2048:
        raise FetchArgsError("fetch_data needs 'url', an http:// or https:// address")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchArgsError(f"fetch_data: {url!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise FetchArgsError("fetch_data: credentials in the URL are not allowed")
    unknown = set(args) - {"url"}
    if unknown:
        raise FetchArgsError(f"fetch_data: unknown argument(s) {', '.join(sorted(unknown))}")
    return url


def _opener() -> Any:
    """urllib with no redirects and no proxies (imported on first use: the daemon stays lean)."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
            raise TransportError(f"fetch_data: {req.full_url} redirects to {newurl}; redirects are not followed",
                                 hint="ask for the final URL, and allow its host in the policy")

    return urllib.request.build_opener(NoRedirect, urllib.request.ProxyHandler({}))


def fetch_blocking(url: str, *, max_bytes: int, timeout_s: float) -> FetchResult:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    req = urllib.request.Request(url, headers={"User-Agent": "kestrel/0.1", "Accept-Encoding": "identity"})
    try:
        with _opener().open(req, timeout=timeout_s) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise DataError(f"fetch_data: {url} is {declared} bytes, over the {max_bytes}-byte limit")
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise TransportError(f"fetch_data: {url} took longer than {timeout_s}s")
                chunk = resp.read(min(65536, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise DataError(f"fetch_data: {url} is over the {max_bytes}-byte limit")
            return FetchResult(url, resp.status, resp.headers.get("Content-Type", ""), b"".join(chunks))
    except urllib.error.HTTPError as exc:
        raise TransportError(f"fetch_data: {url} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise TransportError(f"fetch_data: cannot reach {url}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise TransportError(f"fetch_data: {url}: {exc}") from None
