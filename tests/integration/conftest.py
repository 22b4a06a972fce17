"""Fixtures of the integration tests: whole agents (identity key, ledger, owner, policy) wired together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kestrel.errors import KestrelError
from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger
from tests.fixtures.wait import wait_until

KESTREL = [sys.executable, "-m", "kestrel.cli"]


@dataclass
class Node:
    """One agent: its state directory, identity key, ledger and owner (who signs its bundles)."""

    state: Path
    signer: SoftwareSigner
    ledger: Ledger
    owner: SoftwareSigner = field(default_factory=SoftwareSigner.generate)
    counter: int = 0

    @property
    def did(self) -> str:
        return self.signer.public_key.did

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [r.body for r in self.ledger.records(kind=kind)]

    def bundle(self, policy: str, *, expires_in: float = 3600.0) -> bytes:
        """A policy bundle for this agent, signed by its owner, with the next security counter."""
        from kestrel.ota import sign_bundle
        from kestrel.ota.build import make_bundle

        self.counter += 1
        now = time.time()
        data = make_bundle(
            policy=textwrap.dedent(policy).encode(),
            counter=self.counter,
            now=now,
            expires=now + expires_in,
            agents=[self.did],
        )
        return sign_bundle(data, self.owner)

    def provision(self, policy: str) -> None:
        """Trust root of the owner and a first policy, applied before the daemon starts."""
        from kestrel.ota import apply_bundle
        from kestrel.ota.store import OtaDir

        OtaDir(self.state).init_root([self.owner.public_key.did], 1)
        apply_bundle(self.state, self.bundle(policy), ledger=self.ledger, now=time.time())


def make_node(root: Path) -> Node:
    root.mkdir(mode=0o700, parents=True)
    signer = SoftwareSigner.generate()
    return Node(root, signer, Ledger.open(root / "ledger", signer=signer, max_batch_delay_ms=1.0))


def mqtt_config(port: int, *, extra: str = "") -> str:
    return textwrap.dedent(f"""
    version: 1
    mqtt: {{host: 127.0.0.1, port: {port}, keepalive: 5, session_expiry: 86400}}
    sync: {{poll_s: 0.05, status_s: 0.2, offset_s: 0.05}}
    ota: {{mqtt_topic: "fleet/ota"}}
    sensors:
      button: {{type: gpio, pin: GPIO17}}
    actuators:
      lamp: {{type: gpio, pin: GPIO27}}
    """) + textwrap.dedent(extra)


def daemon_of(node: Node, config: str) -> Any:
    """The daemon of ``node`` running in this loop (sim board), with its signer: sync and peers start."""
    from tests.daemon.conftest import running

    return running(node, config, peers=True)  # type: ignore[arg-type]


def start_daemon(state: Path, config: Path, *args: str, timeout: float = 60.0) -> subprocess.Popen:
    """``kestrel run`` as a process; returns once its control socket reports health ok (the
    process is killed if it exits or does not come up in ``timeout`` seconds)."""
    from kestrel.sdk import Client

    proc = subprocess.Popen(
        [*KESTREL, "run", "--config", str(config), "--state", str(state), *args], stderr=subprocess.PIPE, text=True
    )

    def healthy() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        return Client(state, timeout=2).status()["health"] == "ok"

    try:
        wait_until(healthy, timeout=timeout, ignoring=(OSError, KestrelError), what="the daemon's health ok")
        return proc
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise


async def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``kestrel ARGV`` as a process (without blocking the loop the daemon runs on)."""
    proc = await asyncio.create_subprocess_exec(
        *KESTREL,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.contextmanager
def collecting(host: str, port: int, db: Path, *, client_id: str) -> Iterator[Any]:
    """A CollectorService on the broker, subscribed; yields a second connection to its SQLite
    database (the test reads while the service writes, as `kestrel collector status` would)."""
    from kestrel.sync.collector.service import CollectorService
    from kestrel.sync.collector.sqlite import SqliteStore

    store = SqliteStore(db)
    svc = CollectorService(store, host=host, port=port, client_id=client_id)
    svc.start()
    reader = SqliteStore(db)
    try:
        assert svc.subscribed.wait(20), "collector did not subscribe"
        yield reader
    finally:
        svc.stop()
        reader.close()
        store.close()


# built models (once per session), shared with tests/agent and tests/models
from tests.agent import conftest as _agent_fixtures  # noqa: E402
from tests.models import conftest as _model_fixtures  # noqa: E402

tinylm = _agent_fixtures.tinylm
sensor_build = _model_fixtures.sensor_build
minilm_build = _model_fixtures.minilm_build
