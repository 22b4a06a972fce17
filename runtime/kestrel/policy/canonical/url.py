"""URLs for network actions: parsed once, into the one form that is checked and fetched.

Accepted: ``http`` or ``https``; no user information; a host that is a DNS name (IDNA,
lower case, no trailing dot), four decimal IPv4 numbers, or a bracketed IPv6 address
without a zone; an optional port. Refused as ambiguous: backslashes, white space and
control characters anywhere, the legacy IPv4 spellings that resolvers accept
(``127.1``, ``0x7f.0.0.1``, ``2130706433``), malformed percent escapes. The target (path
and query) is normalised as RFC 3986 section 6.2.2 describes: escapes of unreserved
characters decoded, other escapes in upper case, other bytes percent-encoded as UTF-8,
dot segments removed; the fragment is dropped (it is never sent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .address import parse_domain
from .errors import ArgsError

__all__ = ["CanonicalUrl", "parse_url", "parse_host", "MAX_URL"]

MAX_URL = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_PORT = re.compile(r"[0-9]{1,5}")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_KEEP = frozenset(b"!$&'()*+,;=:@/?")  # sub-delims and the separators a target may hold as they are


@dataclass(frozen=True, slots=True)
class CanonicalUrl:
    scheme: str  # "http" | "https"
    host: str  # DNS name (A-labels) or IP address text (IPv6 without brackets)
    port: int  # always set: the scheme's default when the URL names none
    target: str  # path and query, ASCII, starting with "/"
    ip: bool  # the host is an IP address literal

    @property
    def text(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.target}"

    @property
    def authority(self) -> str:
        """``host[:port]`` as an HTTP ``Host`` header writes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"


def parse_url(text: object, *, where: str = "url") -> CanonicalUrl:
    if not isinstance(text, str) or not text:
        raise ArgsError(f"{where} must be an http:// or https:// URL")
    if len(text) > MAX_URL:
        raise ArgsError(f"{where} is longer than {MAX_URL} characters")
    if any(c <= " " or c == "\x7f" or c == "\\" for c in text):
        raise ArgsError(
            f"{where}: white space, control characters and backslashes are not allowed in a URL",
            hint="percent-encode them (%20 for a space)",
        )
    m = _SCHEME.match(text)
    scheme = m.group(1).lower() if m else ""
    if scheme not in DEFAULT_PORTS:
        raise ArgsError(f"{where}: {text[:80]!r} is not an http:// or https:// URL")
    rest = text[m.end() :]  # type: ignore[union-attr]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:]
    if "@" in authority:
        raise ArgsError(f"{where}: user names and passwords in a URL are not allowed")
    host, ip, port = _host_port(authority, where)
    return CanonicalUrl(scheme, host, port if port is not None else DEFAULT_PORTS[scheme], _target(target, where), ip)


def _host_port(authority: str, where: str) -> tuple[str, bool, int | None]:
    port_text: str | None = None
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ArgsError(f"{where}: unterminated IPv6 address")
        inner, after = authority[1:end], authority[end + 1 :]
        if after and not after.startswith(":"):
            raise ArgsError(f"{where}: unexpected text after the IPv6 address")
        port_text = after[1:] if after else None
        host, ip = _ipv6(inner, where), True
    else:
        name, colon, port_part = authority.partition(":")
        port_text = port_part if colon else None
        if not name:
            raise ArgsError(f"{where} has no host")
        host, ip = _host(name, where)
    port = None
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise ArgsError(f"{where} has an invalid port", hint="a port is a number from 1 to 65535")
        port = int(port_text)
    return host, ip, port


def parse_host(text: object, *, where: str = "host") -> tuple[str, bool]:
    """(canonical host, is an IP literal) of a bare host: a DNS name, four decimal IPv4 numbers, or an
    IPv6 address (bracketed or not, no zone); the same rules as a URL's host."""
    if not isinstance(text, str) or not text:
        raise ArgsError(f"{where} must be a host name or address")
    if text.startswith("[") and text.endswith("]"):
        return _ipv6(text[1:-1], where), True
    if ":" in text:
        return _ipv6(text, where), True
    return _host(text, where)


def _ipv6(inner: str, where: str) -> str:
    import ipaddress

    try:
        if "%" in inner:
            raise ValueError("zone")
        return str(ipaddress.IPv6Address(inner))
    except ValueError:
        raise ArgsError(f"{where}: [{inner}] is not an IPv6 address (zones are not allowed)") from None


def _host(name: str, where: str) -> tuple[str, bool]:
    import ipaddress
    import socket

    try:
        return str(ipaddress.IPv4Address(name)), True
    except ValueError:
        pass
    try:
        socket.inet_aton(name)
    except OSError:
        pass
    else:
        raise ArgsError(
            f"{where}: {name!r} is an ambiguous IPv4 spelling",
            hint="write an IPv4 address as four decimal numbers, e.g. 192.0.2.7",
        )
    host = parse_domain(name, where=where)
    if host.rsplit(".", 1)[-1].isdigit():
        raise ArgsError(f"{where}: {name!r} is neither a host name nor an IPv4 address")
    return host, False


def _target(target: str, where: str) -> str:
    target = target.split("#", 1)[0]
    path, q, query = target.partition("?")
    path = _remove_dot_segments(_normalise(path, where)) or "/"
    if not path.startswith("/"):
        path = "/" + path
    return path + (("?" + _normalise(query, where)) if q else "")


def _normalise(part: str, where: str) -> str:
    if "%" in part and part.count("%") != len(_ESCAPE.findall(part)):
        raise ArgsError(f"{where}: a '%' in the URL does not start a %XX escape")
    raw = _ESCAPE.sub(
        lambda m: chr(int(m.group(1), 16)) if int(m.group(1), 16) in _UNRESERVED else "%" + m.group(1).upper(), part
    )
    out = []
    for ch in raw:
        o = ord(ch)
        if o < 128 and (o in _UNRESERVED or o in _KEEP or ch == "%"):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, on a path whose escapes are already normalised."""
    if "." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/".join(out)
