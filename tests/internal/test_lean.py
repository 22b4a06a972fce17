"""The daemon process imports asyncio without its TLS support and hashes without the system
libcrypto; ssl still loads afterwards, and the digests are the same."""

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
    await asyncio.sleep(0)  # kept: a coroutine that suspends once (the loop under test runs it)
    return 42
assert asyncio.run(main()) == 42
import ssl  # what paho, smtplib and urllib do when a config asks for TLS
assert ssl.create_default_context().check_hostname
print("ok")
"""


def _fresh_interpreter(code: str) -> str:
    """Run ``code`` in a new interpreter (these helpers act on sys.modules); return its output."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_asyncio_without_tls_then_real_ssl():
    assert _fresh_interpreter(SCRIPT) == "ok"


def test_noop_when_ssl_already_loaded():
    code = "import ssl\nfrom kestrel._internal.lean import import_asyncio_without_tls as f\nprint(f())"
    assert _fresh_interpreter(code) == "False"


HASHES = """
import sys
from kestrel._internal.lean import use_builtin_hashes
assert use_builtin_hashes() is True
import hashlib, hmac
assert hashlib.sha256(b"abc").hexdigest() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
assert hmac.new(b"key", b"The quick brown fox jumps over the lazy dog", "sha256").hexdigest() == (
    "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8")
assert type(hashlib.sha256()).__module__ != "_hashlib"
assert not any("libcrypto" in line for line in open("/proc/self/maps"))
assert use_builtin_hashes() is False  # hashlib is there: too late
import ssl  # a config that asks for TLS still gets it (and libcrypto with it)
assert ssl.create_default_context().check_hostname
print("ok")
"""


def test_builtin_hashes_same_digests_no_libcrypto_then_real_ssl():
    assert _fresh_interpreter(HASHES) == "ok"


def test_builtin_hashes_too_late_once_hashlib_is_loaded():
    code = "import hashlib\nfrom kestrel._internal.lean import use_builtin_hashes as f\nprint(f())"
    assert _fresh_interpreter(code) == "False"
