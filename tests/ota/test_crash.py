"""Crash during apply: a process SIGKILLed at each write, rename and fsync of ``apply_bundle``.

After each kill a fresh process finds the old or the new bundle active, complete (every
content matches its manifest), never a mix; the ledger verifies; applying again converges.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger
from kestrel.ota import active_policy, apply_bundle
from kestrel.ota.apply import MANIFEST_FILE, current_counter
from kestrel.ota.build import make_bundle
from kestrel.ota.bundle import parse_manifest, sign_bundle
from kestrel.ota.store import OtaDir

OLD = b"actions: [send_email]\n"
NEW = b"actions: [schedule_event]\n"

CHILD = r"""
import os, signal, sys, time
from cryptography.hazmat.primitives.asymmetric import ed25519
from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger
from kestrel.ota import apply_bundle
state, key, bundle, target = sys.argv[1:5]
signer = SoftwareSigner(ed25519.Ed25519PrivateKey.from_private_bytes(open(key, "rb").read()))
ledger = Ledger.open(os.path.join(state, "ledger"), signer=signer)
def step(name):
    if name == target:
        os.kill(os.getpid(), signal.SIGKILL)
apply_bundle(state, open(bundle, "rb").read(), ledger=ledger, now=time.time(), on_step=step)
ledger.close()
print("completed")
"""


def _slot_complete(state: Path) -> str:
    """The active policy digest, after checking every file of the active slot against its manifest."""
    ota = OtaDir(state)
    ref = ota.read_pointer()["active"]
    slot = ota.slot(ref["slot"])
    mbytes = (slot / MANIFEST_FILE).read_bytes()
    assert hashlib.sha256(mbytes).hexdigest() == ref["digest"]
    contents = parse_manifest(mbytes).contents
    assert contents
    for e in contents:
        assert hashlib.sha256((slot / e.name).read_bytes()).hexdigest() == e.sha256
    return active_policy(state)[0].digest


@pytest.fixture
def template(tmp_path: Path) -> tuple[Path, Path, Path, SoftwareSigner]:
    """A device with bundles 1 (slot a) and 2 (slot b) applied, and bundle 3 ready to apply."""
    priv = ed25519.Ed25519PrivateKey.generate()
    key = tmp_path / "agent.key"
    key.write_bytes(
        priv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    )
    agent = SoftwareSigner(priv)
    owner = SoftwareSigner.generate()
    state = tmp_path / "template"
    state.mkdir(mode=0o700)
    OtaDir(state).init_root([owner.public_key.did], 1)
    now = time.time()

    def bundle(counter: int, policy: bytes) -> bytes:
        data = make_bundle(
            policy=policy,
            models=(("m.onnx", bytes([counter]) * 4096),),
            counter=counter,
            now=now,
            expires=now + 3600,
            agents=[agent.public_key.did],
        )
        return sign_bundle(data, owner)

    with Ledger.open(state / "ledger", signer=agent) as ledger:
        apply_bundle(state, bundle(1, b"actions: [a]\n"), ledger=ledger, now=now)
        apply_bundle(state, bundle(2, OLD), ledger=ledger, now=now)
    new = tmp_path / "new.kbundle"
    new.write_bytes(bundle(3, NEW))
    return state, key, new, agent


def _steps(template, tmp_path: Path) -> list[str]:
    state, _, new, agent = template
    trial = tmp_path / "trace"
    shutil.copytree(state, trial)
    seen: list[str] = []
    with Ledger.open(trial / "ledger", signer=agent) as ledger:
        apply_bundle(trial, new.read_bytes(), ledger=ledger, now=time.time(), on_step=seen.append)
    return seen


def test_kill_at_every_step(template, tmp_path: Path) -> None:
    state, key, new, agent = template
    steps = _steps(template, tmp_path)
    for kind in ("write:", "fsync:", "rename:", "fsync-dir:"):
        assert any(s.startswith(kind) for s in steps), steps
    old_d, new_d = hashlib.sha256(OLD).hexdigest(), hashlib.sha256(NEW).hexdigest()
    outcomes = {}
    for i, step in enumerate(steps):
        run = tmp_path / f"run{i}"
        shutil.copytree(state, run)
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(run), str(key), str(new), step],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == -9, (step, proc.stdout, proc.stderr)
        # "Restart": a new ledger handle (recovers a torn tail) and a fresh look at the slots.
        with Ledger.open(run / "ledger", signer=agent) as ledger:
            ledger.verify()
            digest = _slot_complete(run)
            assert digest in (old_d, new_d), step
            outcomes[step] = digest == new_d
            if digest == new_d:
                assert current_counter(OtaDir(run), ledger)[0] == 3
            apply_bundle(run, new.read_bytes(), ledger=ledger, now=time.time())
            assert _slot_complete(run) == new_d
            assert not (run / "ota" / "slots" / ".staging").exists()
        shutil.rmtree(run)
    # Before the pointer rename the old bundle runs; after it, the new one.
    switch = steps.index("rename:active.json")
    assert not any(outcomes[s] for s in steps[: switch + 1])
    assert all(outcomes[s] for s in steps[switch + 1 :])
