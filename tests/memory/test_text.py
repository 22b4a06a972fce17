"""Text memory on real MiniLM, with a real identity and ledger; the `kestrel memory` commands."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from kestrel.memory import DimensionMismatchError, IndexParams, TextMemory, VectorMemory

pytestmark = pytest.mark.models

PASS = "memory-test-passphrase"


@pytest.fixture
def agent_state(minilm_build, state_dir):
    from kestrel.agent import Agent
    from kestrel.inference import ModelStore

    Agent.create(state_dir, name="mem-test", passphrase=PASS).close()
    ModelStore(state_dir).install(minilm_build.path)
    return state_dir


def kestrel(*args, state):
    env = {**os.environ, "KESTREL_PASSPHRASE": PASS}
    return subprocess.run(
        [sys.executable, "-m", "kestrel.cli", *args, "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_text_memory_records_digest_not_text(agent_state):
    from kestrel.agent import Agent

    with Agent.open(agent_state, passphrase=PASS) as agent:
        with TextMemory.open(agent_state, ledger=agent.ledger) as mem:
            a = mem.add("The greenhouse door was left open overnight.", {"room": "greenhouse"})
            mem.add("Bob likes his coffee black with no sugar.")
            mem.add("The invoice for the solar panels is due on Friday.")
            hits = mem.search("Was the greenhouse door left open?", k=2)
            assert hits[0].id == a.id and hits[0].meta == {"room": "greenhouse"}
            assert hits[0].score > hits[1].score
        records = list(agent.ledger.records(kind="memory.added"))
    assert len(records) == 3
    body = records[0].body
    assert body["digest"] == hashlib.sha256(b"The greenhouse door was left open overnight.").hexdigest()
    assert "greenhouse" not in json.dumps(body)  # the text itself never enters the ledger


def test_memory_made_with_another_dimension_is_refused(agent_state, embedder):
    VectorMemory.create(agent_state / "memory", IndexParams(dim=16)).close()
    with pytest.raises(DimensionMismatchError, match="16-dimensional"):
        TextMemory.open(agent_state)
    with pytest.raises(DimensionMismatchError, match="384-dimensional"):
        TextMemory(VectorMemory.open(agent_state / "memory", read_only=True), embedder)


def test_cli_memory_add_and_search(agent_state):
    out = kestrel("memory", "add", "Feed the cat at seven every evening.", "--meta", "source=owner", state=agent_state)
    assert out.returncode == 0, out.stderr
    assert "added memory 0" in out.stdout
    kestrel("memory", "add", "The car needs new winter tyres.", state=agent_state)
    kestrel("memory", "add", "Quarterly taxes are due in April.", state=agent_state)
    res = kestrel("memory", "search", "when should the cat eat?", "-k", "2", "--json", state=agent_state)
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)
    assert len(hits) == 2 and hits[0]["text"] == "Feed the cat at seven every evening."
    assert hits[0]["meta"] == {"source": "owner"}
    info = kestrel("memory", "info", state=agent_state)
    assert "entries 3" in info.stdout and "dimension 384" in info.stdout
    log = kestrel("audit", "log", state=agent_state)
    assert log.stdout.count("memory.added") == 3 and "Feed the cat" not in log.stdout


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["memory", "add", "   "], 2, "non-empty"),
        (["memory", "add", "x", "--meta", "novalue"], 64, "KEY=VALUE"),
        (["memory", "add", "x", "--model", "nosuch"], 2, "not installed"),
        (["memory", "search", "x", "-k", "0"], 64, "k must be"),
    ],
)
def test_cli_memory_bad_input(agent_state, args, code, words):
    if args[1] == "search":
        assert kestrel("memory", "add", "something to find", state=agent_state).returncode == 0
    out = kestrel(*args, state=agent_state)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert words in out.stderr and "Traceback" not in out.stderr
