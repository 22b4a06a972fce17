"""E-mail addresses: exactly one bare addr-spec, ``local@domain``, nothing else.

The accepted form is a strict subset of RFC 5321/5322 that every SMTP library and relay
reads the same way: a dot-atom local part of ASCII ``atext`` without ``%`` and ``!``
(the percent and bang relay hacks), and a domain of LDH labels after IDNA (the Unicode
form is converted, full-width look-alikes folded by NFKC first). Display names, angle
brackets, comments, quoted local parts, lists inside one string, route syntax
(``@a:b@c``) and domain literals (``[1.2.3.4]``) are refused, never interpreted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ArgsError

__all__ = ["Address", "parse_address", "parse_domain"]

_ATEXT = r"[A-Za-z0-9#$&'*+/=?^_`{|}~-]"
_LOCAL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ONE_ADDRESS = (
    "give each recipient as its own list element: a bare address such as bob@example.com, "
    "without a display name, <>, or commas"
)


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str  # lower-case ASCII (IDNA A-labels)

    @property
    def text(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_domain(text: object, *, where: str = "domain") -> str:
    """The canonical (lower-case, IDNA A-label, no trailing dot) form of a DNS domain name."""
    if not isinstance(text, str) or not text or len(text) > 1024:
        raise ArgsError(f"{where}: {text!r} is not a domain name")
    name = text[:-1] if text.endswith(".") else text
    if not name.isascii():
        import unicodedata

        name = unicodedata.normalize("NFKC", name)
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ArgsError(f"{where}: {text!r} is not a valid internationalised domain name") from None
    name = name.lower()
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ArgsError(f"{where}: {text!r} is not a domain name (letters, digits, '-', labels separated by '.')")
    return name


def parse_address(text: object, *, where: str = "address") -> Address:
    """Exactly one bare addr-spec; :class:`ArgsError` for anything else (see the module text)."""
    if not isinstance(text, str):
        raise ArgsError(f"{where}: an e-mail address must be a string", hint=_ONE_ADDRESS)
    if len(text) > 254:
        raise ArgsError(f"{where}: address is longer than 254 characters")
    if text.count("@") != 1:
        raise ArgsError(
            f"{where}: {text!r} is not an e-mail address: exactly one bare local@domain is needed", hint=_ONE_ADDRESS
        )
    local, domain = text.split("@")
    if not local or len(local) > 64 or not _LOCAL.fullmatch(local):
        raise ArgsError(
            f"{where}: {text!r} is not an e-mail address this runtime sends to (its local part has "
            "characters that are not allowed: spaces, quotes, <>, ',', ';', '%', '!' or non-ASCII)",
            hint=_ONE_ADDRESS,
        )
    return Address(local, parse_domain(domain, where=where))
