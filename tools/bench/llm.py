"""Benchmark: the tiny decoder with and without the KV cache, and the planner's own cost per step.

Run (after building models/tinylm, e.g. ``python models/tinylm/recipe.py``)::

    .venv/bin/python tools/bench/llm.py [--tokens 256] [--repeat 3] [--threads 1] [--model DIR]

Prints, for ``--tokens`` generated tokens (EOS ignored so every run is the same length):
time to first token and tokens/s with the cache, the same with full recomputation
(the baseline), and their ratio; then the planner's overhead per step excluding
model time (prompt fitting, parsing, schema check, policy decision, ledger append)
beside a bare ``PolicyEngine.decide`` (which appends its own ledger record) as baseline.
``--model DIR`` measures any optimum-exported decoder (see docs/llm.md, Pi 5 procedure).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models" / "tinylm"))


def bench_decoder(model_dir: Path, *, tokens: int, repeat: int, threads: int) -> dict[str, float]:
    from kestrel.agent.llm import GenerationOptions, OnnxLanguageModel

    lm = OnnxLanguageModel(model_dir, threads=threads)
    lm.eos_ids = frozenset()  # benchmark only: always generate exactly `tokens` tokens
    import corpus

    from kestrel.agent.prompt import render

    prompt = lm.encode(render(tools=corpus.TOOLS_TEXT, memory=[], goal="turn on the fan", history=[]))
    opts = GenerationOptions(max_tokens=tokens)
    out: dict[str, float] = {}
    for label, cache in (("cache", True), ("full", False)):
        _ = lm.generate(prompt, options=GenerationOptions(max_tokens=4), use_cache=cache).result  # warm-up
        runs = [lm.generate(prompt, options=opts, use_cache=cache).result for _ in range(repeat)]
        assert all(r.completion_tokens == tokens for r in runs)
        out[f"{label}_ttft_ms"] = statistics.median(r.first_token_s for r in runs) * 1000  # type: ignore[misc]
        out[f"{label}_tok_s"] = statistics.median(r.completion_tokens / r.elapsed_s for r in runs)
    out["prompt_tokens"] = len(prompt)
    return out


class _Timed:
    """Wraps a model and sums the time spent inside it (to subtract from the planner's)."""

    def __init__(self, model):
        self._m = model
        self.name, self.digest, self.context_length = model.name, model.digest, model.context_length
        self.model_s = 0.0

    def count_tokens(self, text: str) -> int:
        return self._m.count_tokens(text)

    def generate(self, prompt, **kw):
        t0 = time.perf_counter()
        result = self._m.generate(prompt, **kw).result
        self.model_s += time.perf_counter() - t0

        class _Done:
            pass

        done = _Done()
        done.result = result  # type: ignore[attr-defined]
        return done


def bench_planner(runs: int, steps: int) -> dict[str, float]:
    import textwrap

    import corpus

    from kestrel.agent.llm import ScriptedModel
    from kestrel.agent.planner import Budgets, LLMPlanner
    from kestrel.agent.tools import ToolRegistry
    from kestrel.identity.keys import SoftwareSigner
    from kestrel.ledger import Ledger
    from kestrel.ota import apply_bundle, sign_bundle
    from kestrel.ota.build import make_bundle
    from kestrel.ota.store import OtaDir
    from kestrel.policy import PolicyEngine

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        ledger = Ledger.open(state / "ledger", signer=SoftwareSigner.generate())
        owner = SoftwareSigner.generate()
        OtaDir(state).init_root([owner.public_key.did], 1)
        now = time.time()
        policy = textwrap.dedent("actions:\n  - gpio.write\n").encode()
        bundle = make_bundle(policy=policy, counter=1, now=now, expires=now + 3600, agents=[ledger.public_key.did])
        apply_bundle(state, sign_bundle(bundle, owner), ledger=ledger, now=now)
        engine = PolicyEngine(state, ledger)
        timers = {"decide": 0.0, "record": 0.0}

        def decide(action, args):
            t = time.perf_counter()
            try:
                return engine.decide(action, args)
            finally:
                timers["decide"] += time.perf_counter() - t

        class Recorder:  # times the planner's own ledger appends
            def append(self, kind, body):
                t = time.perf_counter()
                try:
                    return ledger.append(kind, body)
                finally:
                    timers["record"] += time.perf_counter() - t

        tools = ToolRegistry(corpus.DEMO_TOOLS, executor=lambda a, args: {"ok": True})
        call = '{"action": "gpio.write", "args": {"actuator": "fan", "value": 1}}'
        total = model_s = 0.0
        for _ in range(runs):
            model = _Timed(ScriptedModel([call] * steps, context_length=1024))
            planner = LLMPlanner(
                model,
                tools,
                authorize=decide,
                ledger=Recorder(),
                budgets=Budgets(max_steps=steps, max_tokens=steps * 64, time_s=600),
            )
            t0 = time.perf_counter()
            out = planner.run("turn on the fan")
            total += time.perf_counter() - t0
            model_s += model.model_s
            assert len(out.steps) == steps
        n = runs * steps
        t1 = time.perf_counter()
        for _ in range(n):
            engine.decide("gpio.write", {"actuator": "fan", "value": 1})
        bare = time.perf_counter() - t1
        ledger.close()
    own = total - model_s - timers["decide"] - timers["record"]
    return {
        "planner_step_us": (total - model_s) / n * 1e6,
        "decide_us": bare / n * 1e6,
        "in_decide_us": timers["decide"] / n * 1e6,
        "in_record_us": timers["record"] / n * 1e6,
        "own_us": own / n * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "tinylm" / "build")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20, help="planner runs measured")
    ap.add_argument("--steps", type=int, default=5, help="steps per planner run")
    args = ap.parse_args(argv)
    if not (args.model / "model.onnx").is_file():
        print(f"no model at {args.model}; build it: python models/tinylm/recipe.py", file=sys.stderr)
        return 2
    d = bench_decoder(args.model, tokens=args.tokens, repeat=args.repeat, threads=args.threads)
    print(
        f"decoder {args.model} ({d['prompt_tokens']:.0f} prompt tokens, {args.tokens} generated, "
        f"{args.threads} thread(s), median of {args.repeat})"
    )
    print(f"  KV cache           : TTFT {d['cache_ttft_ms']:8.2f} ms   {d['cache_tok_s']:9.1f} tokens/s")
    print(f"  full recompute     : TTFT {d['full_ttft_ms']:8.2f} ms   {d['full_tok_s']:9.1f} tokens/s  (baseline)")
    print(f"  cache / baseline   : {d['cache_tok_s'] / d['full_tok_s']:.1f}x tokens/s")
    p = bench_planner(args.runs, args.steps)
    print(f"planner ({args.runs} runs x {args.steps} steps, scripted model, real policy engine + batched ledger)")
    print(f"  overhead per step excluding model time: {p['planner_step_us']:8.1f} us")
    print(f"    of which PolicyEngine.decide        : {p['in_decide_us']:8.1f} us (records policy.decision)")
    print(f"    of which planner.step ledger append : {p['in_record_us']:8.1f} us")
    print(f"    of which the planner's own work     : {p['own_us']:8.1f} us (prompt fit, parse, schema, execute)")
    print(
        f"  bare PolicyEngine.decide (baseline)   : {p['decide_us']:8.1f} us"
        f"   ratio {p['planner_step_us'] / p['decide_us']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
