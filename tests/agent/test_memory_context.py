"""Memory context from the real vector memory (MiniLM embeddings + hnswlib), bounded by the context."""

from __future__ import annotations

import pytest

from kestrel.agent.context import MemoryContext
from kestrel.agent.llm import ScriptedModel
from kestrel.agent.planner import Budgets, LLMPlanner

from .conftest import ROOT

pytestmark = pytest.mark.models

NOTES = [
    "The greenhouse fan is the actuator named fan; it cools the plants.",
    "Alice is the owner; her address is alice@example.com.",
    "The pump waters the tomatoes every morning at six.",
    "The cat is called Miso and likes tuna.",
]


@pytest.fixture
def memory(env):
    built = ROOT / "models" / "minilm" / "build"
    if not (built / "manifest.json").is_file():
        pytest.skip("models/minilm is not built (kestrel models build minilm)")
    from kestrel.inference.store import ModelStore
    from kestrel.memory.text import TextMemory

    ModelStore(env.state).install(built, ledger=env.ledger)
    mem = TextMemory.open(env.state, ledger=env.ledger)
    for note in NOTES:
        mem.add(note, save=False)
    mem.vectors.save()
    try:
        yield mem
    finally:
        mem.close()


def test_top_k_retrieval_feeds_the_prompt_best_first(env, memory):
    ctx = MemoryContext(memory)
    top = ctx.search("cool down the greenhouse with the fan", 2)
    assert top[0] == NOTES[0]
    model = ScriptedModel(['{"final": "ok"}'])
    p = LLMPlanner(
        model, env.tools(), authorize=env.engine.decide, ledger=env.ledger, context=ctx, budgets=Budgets(memory_k=2)
    )
    p.run("cool down the greenhouse with the fan")
    prompt = model.prompts[0]
    assert NOTES[0] in prompt
    assert sum(n in prompt for n in NOTES) == 2
    assert len(env.records("memory.added")) == len(NOTES)


def test_memory_is_cut_to_the_context_length(env, memory):
    ctx = MemoryContext(memory)
    model = ScriptedModel(['{"final": "ok"}'], context_length=120)
    p = LLMPlanner(
        model,
        env.tools(),
        authorize=env.engine.decide,
        ledger=env.ledger,
        context=ctx,
        budgets=Budgets(memory_k=4, max_step_tokens=32),
    )
    p.run("water the tomatoes")
    prompt = model.prompts[0]
    assert model.count_tokens(prompt) <= 120 - 32
    kept = [n for n in NOTES if n in prompt]
    assert kept == [NOTES[2]]  # room for one note: the most similar one
