"""The JavaScript SDK's own tests (sdk/js/test, Node's built-in runner) against real `kestrel run` daemons.

They start their daemons with this interpreter (KESTREL_PYTHON), so they test this checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parents[2] / "sdk" / "js"


def test_node_sdk_suite(tmp_path):
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.fail("node is not installed: `./dev test` installs Debian's nodejs (apt-get install nodejs)")
    files = sorted(str(p.relative_to(SDK)) for p in (SDK / "test").glob("*.test.mjs"))
    assert files, "no sdk/js/test/*.test.mjs found"
    env = {**os.environ, "KESTREL_PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    env.pop("NOTIFY_SOCKET", None)
    r = subprocess.run([node, "--test", *files], cwd=SDK, env=env, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-20000:] + r.stderr[-5000:]
    assert "# fail 0" in r.stdout and "# pass " in r.stdout, r.stdout[-5000:]
