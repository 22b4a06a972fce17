"""Start-up footprint helpers for the long-running daemon process.

Two shared libraries the daemon does not need at idle would otherwise be mapped at start:

* ``import asyncio`` imports :mod:`ssl` (libssl), although the daemon never uses asyncio's own
  TLS transports: TLS happens in paho-mqtt (MQTT over TLS) and in ``smtplib``/``urllib`` (mail
  relay, fetch_data), which import :mod:`ssl` themselves when a config asks for it.
  :func:`import_asyncio_without_tls` imports asyncio while ``ssl`` is hidden, then un-hides it so
  that those later imports load the real module. The cost: ``loop.create_connection(ssl=...)``
  and ``start_tls`` are unavailable in that process (asyncio raises ``RuntimeError``).
* ``import hashlib`` imports ``_hashlib``, which maps the system libcrypto (3.9 MB of resident
  memory measured with the daemon here) only to compute SHA-256: signatures, AEAD and KDFs go
  through ``cryptography``, which carries its own OpenSSL. :func:`use_builtin_hashes` keeps
  ``_hashlib`` out, so :mod:`hashlib` and :mod:`hmac` use the interpreter's built-in SHA-2
  (same results; ~1.8 µs instead of ~0.9 µs per ledger record, 4 ms instead of 0.7 ms per MiB).
  When a config asks for TLS, :mod:`ssl` maps libcrypto as usual.
"""

from __future__ import annotations

import sys

__all__ = ["import_asyncio_without_tls", "use_builtin_hashes"]


def import_asyncio_without_tls() -> bool:
    """Import asyncio with its TLS support off; False if asyncio or ssl was already imported."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` raise ImportError
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]
    return True


def use_builtin_hashes() -> bool:
    """Make :mod:`hashlib` use the built-in SHA-2 for this process; False if it is too late."""
    if "hashlib" in sys.modules or "_hashlib" in sys.modules:
        return False
    sys.modules["_hashlib"] = None  # type: ignore[assignment]  # hashlib and hmac fall back, by design
    return True
