"""Test configuration shared by the whole suite (see docs/architecture.md, Tests)."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.swtpm",
    "tests.fixtures.mosquitto",
    "tests.fixtures.pty",
    "tests.fixtures.postgres",
]

#: Seconds an ``async def`` test may run; override per test with @pytest.mark.async_timeout(N).
ASYNC_TEST_TIMEOUT = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "async_timeout(seconds): time limit of an async test")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Run ``async def`` tests in a fresh event loop (no pytest-asyncio needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    marker = pyfuncitem.get_closest_marker("async_timeout")
    timeout = float(marker.args[0]) if marker else ASYNC_TEST_TIMEOUT
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout))
    return True


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """An empty state directory (mode 0700) for one agent."""
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d
