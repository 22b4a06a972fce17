"""Fixtures of the web UI tests: the daemon tests' agent (in-process daemon) and provisioned state dir."""

from tests.daemon import conftest as _daemon_fixtures
from tests.daemon import test_process as _process_fixtures

agent = _daemon_fixtures.agent
provisioned = _process_fixtures.provisioned
