"""``kestrel run`` on a passphrase keystore: never a prompt without a terminal it owns; --passphrase-file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kestrel.identity import create_identity

KESTREL = [sys.executable, "-m", "kestrel.cli"]


@pytest.fixture
def locked_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    create_identity(state, name="locked", passphrase=b"open sesame")
    return state


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "KESTREL_PASSPHRASE"}


def test_no_terminal_fails_at_once_with_the_way_out(locked_state: Path) -> None:
    r = subprocess.run(
        [*KESTREL, "run", "--state", str(locked_state)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
    )
    assert r.returncode != 0
    assert "--passphrase-file" in r.stderr and "KESTREL_PASSPHRASE" in r.stderr
    assert "Traceback" not in r.stderr


def test_terminal_it_does_not_own_is_not_prompted(locked_state: Path) -> None:
    """stdin is a terminal, but not this process's foreground (as after `kestrel run &`)."""
    master, slave = os.openpty()
    try:
        r = subprocess.run(
            [*KESTREL, "run", "--state", str(locked_state)],
            stdin=slave,
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(),
            start_new_session=True,
        )
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode != 0 and "--passphrase-file" in r.stderr, r.stderr


def test_passphrase_file_starts_the_daemon(locked_state: Path, tmp_path: Path) -> None:
    pw = tmp_path / "agent.pass"
    pw.write_text("open sesame\n")
    pw.chmod(0o600)
    proc = subprocess.Popen(
        [*KESTREL, "run", "--state", str(locked_state), "--passphrase-file", str(pw)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
        text=True,
    )
    try:
        st = subprocess.run(
            [*KESTREL, "status", "--state", str(locked_state), "--wait", "30"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "health   ok" in st.stdout, st.stdout + st.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
