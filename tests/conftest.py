"""Test configuration shared by the whole suite (see docs/architecture.md, Tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.swtpm",
    "tests.fixtures.mosquitto",
    "tests.fixtures.pty",
]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """An empty state directory (mode 0700) for one agent."""
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d
