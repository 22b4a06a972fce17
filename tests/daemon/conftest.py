"""Fixtures of the daemon tests: a real ledger, a policy installed through a real signed OTA bundle,
and the daemon running in-process on the sim board."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kestrel.daemon.config import parse_device_config
from kestrel.daemon.runtime import Daemon
from kestrel.identity.keys import SoftwareSigner
from kestrel.io.boards import load_profile
from kestrel.io.gpio import open_pin_factory
from kestrel.ledger import Ledger
from tests.fixtures.wait import until  # noqa: F401 (the daemon tests import it from here)


def install_policy(state: Path, ledger: Ledger, policy: str, *, counter: int = 1) -> None:
    """Install ``policy`` the only way a device accepts one: a bundle signed by its owner."""
    from kestrel.ota import apply_bundle, sign_bundle
    from kestrel.ota.build import make_bundle
    from kestrel.ota.store import OtaDir

    owner = SoftwareSigner.generate()
    ota = OtaDir(state)
    ota.init_root([owner.public_key.did], 1)
    now = time.time()
    data = make_bundle(
        policy=textwrap.dedent(policy).encode(),
        counter=counter,
        now=now,
        expires=now + 3600,
        agents=[ledger.public_key.did],
    )
    apply_bundle(state, sign_bundle(data, owner), ledger=ledger, now=now)


@dataclass
class Agent:
    state: Path
    ledger: Ledger
    signer: SoftwareSigner

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [r.body for r in self.ledger.records(kind=kind)]


@pytest.fixture
def agent(state_dir: Path) -> Iterator[Agent]:
    signer = SoftwareSigner.generate()
    ledger = Ledger.open(state_dir / "ledger", signer=signer, max_batch_delay_ms=1.0)
    try:
        yield Agent(state_dir, ledger, signer)
    finally:
        ledger.close()


@contextlib.asynccontextmanager
async def running(
    agent: Agent,
    config: str,
    *,
    source: str = "device.yaml",
    config_path: Path | None = None,
    policy: str | None = None,
    peers: bool = False,
    bls_key: Any = None,
    **options: Any,
) -> AsyncIterator[Daemon]:
    """The daemon, started in this event loop with ``config`` (YAML text), stopped on exit.

    ``peers``: hand the daemon the agent's signer, so that it runs peer messaging over MQTT;
    ``bls_key``: and its BLS key, so that it takes part in group decisions (docs/quorum.md);
    ``options``: more keyword arguments of :class:`Daemon` (``clock``, ``monotonic``).
    """
    from kestrel.daemon.main import load_config

    if policy is not None:
        install_policy(agent.state, agent.ledger, policy)
    cfg = parse_device_config(textwrap.dedent(config), source=source)
    factory = open_pin_factory(load_profile("sim"))
    d = Daemon(
        config=cfg,
        state_dir=agent.state,
        ledger=agent.ledger,
        factory=factory,
        agent_id=agent.signer.public_key.did,
        load_config=(lambda: load_config(config_path)) if config_path else None,
        signer=agent.signer if peers else None,
        bls_key=bls_key,
        **options,
    )
    try:
        await d.start()
        yield d
    finally:
        await d.shutdown()
        factory.close()


async def in_thread(fn: Any, *args: Any, **kw: Any) -> Any:
    """Run a blocking call (the SDK) off the loop so the in-process daemon can answer it."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kw))


GPIO_CONFIG = """
    version: 1
    sensors:
      button: {type: gpio, pin: GPIO17, edge: both, bias: pull_down}
    actuators:
      lamp: {type: gpio, pin: GPIO27}
    triggers:
      - name: lamp_on
        when: "button == 1"
        action: gpio.write
        args: {actuator: lamp, value: 1}
      - name: lamp_off
        when: "button == 0"
        action: gpio.write
        args: {actuator: lamp, value: 0}
"""


# the tiny decoder (built once per session) and the sensor-anomaly model, shared with tests/agent, tests/models
from tests.agent import conftest as _agent_fixtures  # noqa: E402
from tests.models import conftest as _model_fixtures  # noqa: E402

tinylm = _agent_fixtures.tinylm
sensor_build = _model_fixtures.sensor_build
