"""Fixtures of the agent tests: the tiny decoder (built once per session), a real ledger and a
policy installed through a real signed OTA bundle, a tool registry that records what ran."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]
TINYLM = ROOT / "models" / "tinylm"

DEFAULT_POLICY = """\
actions:
  - gpio.write
  - action: send_email
    args:
      to: {domain: example.com}
restrictions:
  - no_external_network unless explicitly permitted
"""


def load_corpus() -> Any:
    """The recipe's corpus module (its DEMO_TOOLS are the schemas the tiny model was trained on)."""
    spec = importlib.util.spec_from_file_location("tinylm_corpus", TINYLM / "corpus.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="session")
def tinylm() -> Path:
    """models/tinylm/build: built by the recipe (a subprocess, so torch stays out of this process)."""
    build = TINYLM / "build"
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("optimum") is None:
        if not (build / "model.onnx").is_file():
            pytest.skip("the tinylm recipe needs the [models] extra (torch, transformers, optimum)")
        return build
    proc = subprocess.run([sys.executable, str(TINYLM / "recipe.py")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return build


def install_policy(state: Path, ledger: Ledger, policy: str) -> None:
    """Install ``policy`` the only way a device accepts one: a bundle signed by its owner."""
    from kestrel.ota import apply_bundle, sign_bundle
    from kestrel.ota.build import make_bundle
    from kestrel.ota.store import OtaDir

    owner = SoftwareSigner.generate()
    OtaDir(state).init_root([owner.public_key.did], 1)
    now = time.time()
    data = make_bundle(
        policy=textwrap.dedent(policy).encode(), counter=1, now=now, expires=now + 3600, agents=[ledger.public_key.did]
    )
    apply_bundle(state, sign_bundle(data, owner), ledger=ledger, now=now)


@dataclass
class Env:
    """A device: state dir, ledger, the real policy engine and a registry whose executor logs calls."""

    state: Path
    ledger: Ledger
    engine: Any
    executed: list[tuple[str, dict]] = field(default_factory=list)

    def tools(self, specs: Any = None) -> Any:
        from kestrel.agent.tools import ToolRegistry

        def execute(action: str, args: dict) -> dict:
            self.executed.append((action, args))
            return {"done": action, **args}

        return ToolRegistry(load_corpus().DEMO_TOOLS if specs is None else specs, executor=execute)

    def records(self, kind: str) -> list[dict]:
        self.ledger.flush()
        return [r.body for r in self.ledger.records(kind=kind)]


def make_env(state: Path, policy: str | None) -> Env:
    from kestrel.policy import PolicyEngine

    ledger = Ledger.open(state / "ledger", signer=SoftwareSigner.generate())
    if policy is not None:
        install_policy(state, ledger, policy)
    return Env(state, ledger, PolicyEngine(state, ledger))


@pytest.fixture
def env_with(state_dir: Path) -> Iterator[Any]:
    """``env_with(policy_text | None) -> Env`` in this test's state directory; closed after the test."""
    made: list[Env] = []

    def make(policy: str | None) -> Env:
        made.append(make_env(state_dir, policy))
        return made[-1]

    try:
        yield make
    finally:
        for e in made:
            e.ledger.close()


@pytest.fixture
def env(env_with: Any) -> Env:
    return env_with(DEFAULT_POLICY)
