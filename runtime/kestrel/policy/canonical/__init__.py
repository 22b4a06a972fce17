"""Canonical action arguments (pure): parse once, decide on that form, execute exactly that form.

:func:`canonicalize` turns a request's arguments into the one form the policy evaluates
and the action executes: e-mail recipients become a list of bare addr-specs with
IDNA-normalised domains, a URL is parsed once into scheme, host, port and target, an
MQTT topic has no wildcards, a GPIO level is 0 or 1, and every value of every action is
plain JSON with finite numbers. Anything that cannot be put in that form is refused
(:class:`ArgsError`), so the policy never allows a form that something downstream
(an SMTP library, a URL opener, a resolver) would read differently. docs/policy.md
("Canonical arguments") lists each action's form.
"""

from __future__ import annotations

from .actions import BUILTIN_ARGS, canonicalize
from .address import Address, parse_address, parse_domain
from .errors import ArgsError
from .url import CanonicalUrl, parse_host, parse_url
from .values import MAX_DEPTH, MAX_INT, plain_value

__all__ = [
    "Address",
    "ArgsError",
    "BUILTIN_ARGS",
    "CanonicalUrl",
    "MAX_DEPTH",
    "MAX_INT",
    "canonicalize",
    "parse_address",
    "parse_domain",
    "parse_host",
    "parse_url",
    "plain_value",
]
