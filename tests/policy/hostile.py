"""Hostile e-mail recipients shared by the pure canonicalisation tests and the through-the-daemon tests."""

from __future__ import annotations

__all__ = ["HOSTILE_RECIPIENTS", "RECIPIENT_FRAGMENTS"]

# Each is one string that a lax reader could take for an example.com recipient, but that
# an SMTP library would deliver (also) elsewhere. None may have a canonical form.
HOSTILE_RECIPIENTS = [
    "eve@evil.com, bob@example.com",
    "Eve <eve@evil.com>, x@example.com",
    "<eve@evil.com>@example.com",
    "eve@evil.com;bob@example.com",
    "eve@evil.com bob@example.com",
    "bob@example.com (eve@evil.com)",
    '"eve@evil.com"@example.com',
    "eve%evil.com@example.com",
    "evil.com!eve@example.com",
    "@evil.com:bob@example.com",
    "eve@evil.com＠example.com",  # full-width commercial at
    "bob@example.com\n",
    "bob@example.com\r\nRCPT TO:<eve@evil.com>",
    "bob@[192.0.2.1]",
    "Bob <bob@example.com>",
    "bob@example.com,",
    "",
    "bob@",
    "@example.com",
]

# Pieces that hypothesis joins into recipient strings: separators, brackets, quotes, relay hacks,
# look-alikes, case and IDNA prefixes around the permitted and a foreign domain.
RECIPIENT_FRAGMENTS = [
    "bob",
    "eve",
    "@",
    "example.com",
    "evil.com",
    ",",
    ";",
    " ",
    "<",
    ">",
    '"',
    "(",
    ")",
    ":",
    "%",
    "!",
    ".",
    "＠",
    "\n",
    "[",
    "]",
    "EXAMPLE.COM",
    "example.com.evil.com",
    "xn--",
    "\\",
]
