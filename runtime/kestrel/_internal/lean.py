"""Start-up footprint helpers for the long-running daemon process.

``import asyncio`` imports :mod:`ssl`, which maps the system OpenSSL (about 4.4 MB of resident
memory on a Pi-class board) although the daemon never uses asyncio's own TLS transports: TLS
happens in paho-mqtt (MQTT over TLS) and in ``smtplib``/``urllib`` (mail relay, fetch_data),
which import :mod:`ssl` themselves when a config asks for it. :func:`import_asyncio_without_tls`
imports asyncio while ``ssl`` is hidden, then un-hides it so that those later imports load the
real module. The cost: ``loop.create_connection(ssl=...)`` and ``start_tls`` are unavailable in
that process (asyncio raises ``RuntimeError`` if something asks for them).
"""

from __future__ import annotations

import sys

__all__ = ["import_asyncio_without_tls"]

_ABSENT = object()


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
