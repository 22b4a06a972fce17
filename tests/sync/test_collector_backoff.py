"""``kestrel collector run`` with no broker backs off (exponential, jittered), it does not retry twice a second."""

from __future__ import annotations

import subprocess
import sys

from tests.fixtures.procs import free_port


def test_no_broker_backs_off(tmp_path) -> None:
    port = free_port()  # nothing listens there
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kestrel.cli",
            "collector",
            "run",
            "--broker",
            f"127.0.0.1:{port}",
            "--db",
            str(tmp_path / "c.db"),
            "--duration",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    tries = [line for line in r.stderr.splitlines() if "unreachable" in line]
    # waits of 0.5-1, 1-2, 2-4 s: at most 4 attempts in 5 s (a fixed 0.5 s wait made 10)
    assert 1 <= len(tries) <= 4, r.stderr
    assert "next try in" in tries[0] and "Traceback" not in r.stderr
