"""Recipe: a tiny GPT-2 decoder for tests and demos (host-side; needs the `[models]` extra).

Everything is made here, offline (HF_HUB_OFFLINE=1, nothing downloaded):

1. a corpus of planner transcripts (``corpus.py``: goals, tool calls, results) ;
2. a byte-level BPE tokenizer trained on it with `tokenizers` (vocabulary 512) ;
3. a GPT-2 config with 2 layers, hidden size 64, 4 heads, 1024 positions ;
4. a few hundred AdamW steps on the corpus (seeded, CPU), so greedy output is a
   well-formed tool call rather than noise ;
5. ``optimum.exporters.onnx.main_export`` with task ``text-generation-with-past``:
   ``model.onnx`` takes ``past_key_values.{i}.key|value`` and returns ``present.*``.

Run it with ``kestrel models build tinylm`` (``build(ctx)``, the project's recipe
interface: the build lands in ``models/tinylm/build/``, gitignored, with
``manifest.json``) or ``python models/tinylm/recipe.py [--force]`` (the same, through
``kestrel.inference.build.build_model``). ``build.json`` records the digest of
everything the weights depend on (hyper-parameters, corpus, prompt format, built-in
tool schemas) and the sha256 of each file; a build whose digest matches is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402  (the recipe's own corpus module)

DEFAULT_OUT = HERE / "build"
TOTAL_STEPS = 2
SEED = 1234
VOCAB = 512
LAYERS, HIDDEN, HEADS, POSITIONS = 2, 64, 4, 1024
STEPS, BATCH, SEQ, LR = 400, 16, 160, 3e-3
FILES = ("model.onnx", "tokenizer.json", "config.json")


def recipe_digest() -> str:
    """sha256 over what the weights depend on: hyper-parameters, corpus, prompt format, tool schemas."""
    import kestrel.agent.actions as actions
    import kestrel.agent.prompt as prompt_format

    h = hashlib.sha256(json.dumps([SEED, VOCAB, LAYERS, HIDDEN, HEADS, POSITIONS, STEPS, BATCH, SEQ, LR]).encode())
    for path in (HERE / "corpus.py", Path(prompt_format.__file__), Path(actions.__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_current(out: Path) -> bool:
    stamp = out / "build.json"
    if not stamp.is_file():
        return False
    try:
        info = json.loads(stamp.read_text())
        return info["recipe"] == recipe_digest() and all(_sha256(out / name) == info["files"][name] for name in FILES)
    except (ValueError, KeyError, OSError):
        return False


def train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_model(tok, texts: list[str], log):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    eos = tok.token_to_id("<|endoftext|>")
    config = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=POSITIONS,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    model = GPT2LMHeadModel(config)
    stream: list[int] = []
    for text in texts:
        stream.extend(tok.encode(text).ids + [eos])
    data = torch.tensor(stream, dtype=torch.long)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS, pct_start=0.1)
    model.train()
    for step in range(STEPS):
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=gen)
        batch = torch.stack([data[s : s + SEQ] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == STEPS - 1:
            log(f"step {step:4d} loss {loss.item():.3f}")
    model.eval()
    return model


def make(out: Path = DEFAULT_OUT, *, log=lambda msg: print(msg, flush=True)) -> Path:
    """Train and export the tiny decoder into ``out`` (replaced atomically); return ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from optimum.exporters.onnx import main_export
    from transformers import PreTrainedTokenizerFast

    t0 = time.monotonic()
    texts = corpus.transcripts(seed=SEED)
    tok = train_tokenizer(texts)
    model = train_model(tok, texts, log)
    work = out.parent / "out"  # scratch space; /models/*/out/ is gitignored
    shutil.rmtree(work, ignore_errors=True)
    hf_dir = work / "hf"
    model.save_pretrained(hf_dir)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    ).save_pretrained(hf_dir)
    onnx_dir = work / "onnx"
    main_export(str(hf_dir), output=onnx_dir, task="text-generation-with-past", device="cpu", do_validation=False)
    tok.save(str(onnx_dir / "tokenizer.json"))  # the exact trained tokenizer, one file
    stamp = {
        "name": "tinylm",
        "recipe": recipe_digest(),
        "files": {name: _sha256(onnx_dir / name) for name in FILES},
        "architecture": {
            "type": "gpt2",
            "layers": LAYERS,
            "hidden": HIDDEN,
            "heads": HEADS,
            "positions": POSITIONS,
            "vocab": tok.get_vocab_size(),
        },
        "training": {"steps": STEPS, "batch": BATCH, "seq": SEQ, "lr": LR, "seed": SEED},
    }
    (onnx_dir / "build.json").write_text(json.dumps(stamp, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(onnx_dir, out)
    shutil.rmtree(work, ignore_errors=True)
    log(f"tinylm trained and exported in {time.monotonic() - t0:.1f}s -> {out}")
    return out


def build(ctx) -> None:
    """The recipe interface of ``kestrel models build`` (kestrel.inference.build.BuildContext)."""
    if is_current(ctx.out):
        ctx.note("weights current (build.json digest matches); rewriting the manifest only")
    else:
        with ctx.step(f"train a {LAYERS}-layer decoder ({STEPS} steps) and export it with its KV cache"):
            make(ctx.out, log=ctx.note)
    with ctx.step("write manifest"):
        info = json.loads((ctx.out / "build.json").read_text())
        ctx.facts.update({"weights_digest": info["recipe"], "training": info["training"]})
        ctx.write_manifest(list(FILES))


def main(argv: list[str] | None = None) -> int:
    from kestrel.inference.build import build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="retrain even if the build is current")
    args = parser.parse_args(argv)
    if args.force:
        (DEFAULT_OUT / "build.json").unlink(missing_ok=True)
    build_model("tinylm", models_dir=HERE.parent, force=args.force or not is_current(DEFAULT_OUT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
