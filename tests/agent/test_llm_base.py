"""The shared generation driver: budgets, stop strings, cancellation, sync and async streaming."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from kestrel.agent.llm import GenerationOptions, ScriptedModel
from kestrel.agent.llm.base import StopMatcher
from kestrel.agent.llm.sampling import Sampler
from kestrel.errors import UsageError


def test_stop_matcher_holds_back_partial_stop_and_cuts_at_it():
    m = StopMatcher(["END"])
    assert m.feed("abc E") == ("abc ", False)  # "E" may start "END"
    assert m.feed("N") == ("", False)
    assert m.feed("D tail") == ("", True)
    m2 = StopMatcher(["END"])
    assert m2.feed("xE") == ("x", False)
    assert m2.feed("x") == ("Ex", False)  # the held "E" was not a stop after all
    assert m2.flush() == ""


def test_stream_stops_at_stop_string_and_reports_reason():
    model = ScriptedModel(['{"final": "ok"}\nignored words'])
    result = model.generate("p", options=GenerationOptions(stop=("\n",))).result
    assert result.text == '{"final": "ok"}'
    assert result.stop_reason == "stop"


def test_max_tokens_budget_ends_generation():
    model = ScriptedModel(["one two three four five six"])
    result = model.generate("p", options=GenerationOptions(max_tokens=3)).result
    assert result.stop_reason == "length"
    assert result.completion_tokens == 3
    assert result.text == "one two three "


def test_time_budget_ends_generation():
    model = ScriptedModel(["w " * 200], delay_s=0.01)
    result = model.generate("p", options=GenerationOptions(max_tokens=500, time_budget_s=0.1)).result
    assert result.stop_reason == "time"
    assert 1 <= result.completion_tokens < 200


def test_eos_when_backend_runs_out():
    result = ScriptedModel(["a b"]).generate("p").result
    assert (result.text, result.stop_reason) == ("a b", "eos")
    assert result.first_token_s is not None and result.first_token_s <= result.elapsed_s


def test_cancel_from_another_thread():
    model = ScriptedModel(["w " * 1000], delay_s=0.005)
    cancel = threading.Event()
    stream = model.generate("p", options=GenerationOptions(max_tokens=1000), cancel=cancel)
    seen = []
    for event in stream:
        seen.append(event)
        if len(seen) == 5:
            threading.Thread(target=cancel.set).start()
    assert stream.result.stop_reason == "cancelled"
    assert 5 <= len(seen) < 1000


def test_async_iteration_and_task_cancellation():
    async def main() -> tuple[list[str], str]:
        model = ScriptedModel(["a b c d"])
        texts = [ev.text async for ev in model.generate("p")]
        slow = ScriptedModel(["w " * 1000], delay_s=0.01).generate("p", options=GenerationOptions(max_tokens=1000))

        got: list[object] = []
        first = asyncio.Event()

        async def consume() -> None:
            async for ev in slow:
                got.append(ev)
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 10)  # cancelled while tokens flow
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return texts, slow.result.stop_reason

    texts, reason = asyncio.run(main())
    assert "".join(texts) == "a b c d"
    assert reason == "cancelled"


@pytest.mark.parametrize(
    "kwargs", [{"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"stop": ("",)}, {"time_budget_s": 0}]
)
def test_bad_options_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        GenerationOptions(**kwargs)


def test_sampler_greedy_seeded_and_top_k():
    logits = np.array([0.1, 3.0, 2.9, -1.0, 0.5], dtype=np.float32)
    assert Sampler(GenerationOptions()).pick(logits) == 1
    a = [Sampler(GenerationOptions(temperature=1.0, seed=7)).pick(logits) for _ in range(3)]
    s1 = Sampler(GenerationOptions(temperature=1.0, seed=7))
    s2 = Sampler(GenerationOptions(temperature=1.0, seed=7))
    seq1 = [s1.pick(logits) for _ in range(50)]
    seq2 = [s2.pick(logits) for _ in range(50)]
    assert seq1 == seq2 and len(set(a)) == 1
    assert len(set(seq1)) > 1  # it does sample
    top2 = Sampler(GenerationOptions(temperature=5.0, top_k=2, seed=1))
    assert {top2.pick(logits) for _ in range(200)} == {1, 2}
    nucleus = Sampler(GenerationOptions(temperature=1.0, top_p=0.5, seed=1))
    assert {nucleus.pick(logits) for _ in range(200)} <= {1, 2}
