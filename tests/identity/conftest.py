"""Fixtures for identity tests: cheap KDF parameters and identity factories."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kestrel.identity import Identity, KdfParams, create_identity

PASS = b"correct horse battery staple"
# Tests use a cheap Argon2id cost; the default (64 MiB, t=3, p=4) is exercised by the CLI tests.
FAST_KDF = KdfParams.argon2id(memory_kib=8192, iterations=1, lanes=1)


@pytest.fixture(autouse=True)
def _clean_kestrel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their own passphrases, TCTI and machine id: ignore the caller's KESTREL_*."""
    for key in list(os.environ):
        if key.startswith("KESTREL_"):
            monkeypatch.delenv(key)


@pytest.fixture
def fast_kdf() -> KdfParams:
    return FAST_KDF


@pytest.fixture
def make_identity(state_dir: Path) -> Callable[..., Identity]:
    def make(**kw) -> Identity:
        kw.setdefault("name", "test-agent")
        if not kw.get("machine_bound") and kw.get("backend", "file") == "file":
            kw.setdefault("passphrase", PASS)
        if kw.get("backend", "file") == "file":
            kw.setdefault("kdf", FAST_KDF)
        return create_identity(kw.pop("state", state_dir), **kw)

    return make


def sign_concurrently(signer, public_key, *, threads: int = 8, each: int = 25) -> list[Exception]:
    """Sign distinct messages from several threads at once; return the failures."""
    import threading

    errors: list[Exception] = []

    def work(i: int) -> None:
        for j in range(each):
            msg = f"{i}/{j}".encode()
            try:
                public_key.verify(signer.sign(msg), msg)
            except Exception as exc:  # collected and asserted empty by the caller
                errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real `kestrel` command in a subprocess (no TTY on stdin)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREL_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", "from kestrel.cli import run; run()", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli
