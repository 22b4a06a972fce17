"""The daemon process imports asyncio without its TLS support, and ssl still loads afterwards."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from kestrel._internal.lean import import_asyncio_without_tls
assert import_asyncio_without_tls() is True
import asyncio, asyncio.sslproto
assert "ssl" not in sys.modules and asyncio.sslproto.ssl is None
assert import_asyncio_without_tls() is False  # asyncio is there: nothing to do
async def main():
    await asyncio.sleep(0)
    return 42
assert asyncio.run(main()) == 42
import ssl  # what paho, smtplib and urllib do when a config asks for TLS
assert ssl.create_default_context().check_hostname
print("ok")
"""


def test_asyncio_without_tls_then_real_ssl():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_noop_when_ssl_already_loaded():
    code = "import ssl\nfrom kestrel._internal.lean import import_asyncio_without_tls as f\nprint(f())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr
