"""``kestrel models list|show|build|run``, ``kestrel deploy --model``, ``kestrel memory add|search|info``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import add_passphrase_file_arg, state_from
from ._common import add_state_arg as _state

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from ..ledger.recorder import Recorder

__all__ = ["register"]


def register(sub: Any) -> None:
    models = sub.add_parser(
        "models",
        help="list, show, build and run models",
        description="Models installed in the state directory, and host-side recipes.",
    )
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    models.set_defaults(func=lambda args, extra: (models.print_help(), 64)[1])

    p = msub.add_parser("list", help="installed models (name, version, runtime, task)")
    _state(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_list)

    p = msub.add_parser("show", help="a model's manifest (an installed NAME, or a folder holding manifest.json)")
    p.add_argument("name", help="installed model name, or a folder holding manifest.json")
    _state(p)
    p.set_defaults(func=_show)

    p = msub.add_parser("build", help="run a recipe from models/NAME (host-side; needs the [models] extra)")
    p.add_argument("names", nargs="*", metavar="NAME", help="recipes to build (default: all)")
    p.add_argument("--models-dir", help="folder of recipes (default $KESTREL_MODELS_DIR or the repository's models/)")
    p.add_argument("--force", action="store_true", help="rebuild even if the build is up to date")
    p.set_defaults(func=_build)

    p = msub.add_parser("run", help="run an installed model on JSON inputs and print its outputs")
    p.add_argument("name")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an input as a JSON array (dtype from the manifest); repeatable",
    )
    _state(p)
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "deploy",
        help="verify a model and install it into the state directory",
        description="Check every file against the manifest's sha256, install the model into "
        "STATE/models/ and record model.deployed in the ledger.",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="PATH|NAME",
        help="a model folder (with manifest.json), a recipe name built under models/NAME/build/, "
        "or local:PATH to register a local LLM (an optimum-exported decoder folder)",
    )
    p.add_argument("--models-dir", help="folder of recipes (for NAME)")
    _state(p)
    add_passphrase_file_arg(p)
    p.set_defaults(func=_deploy)

    mem = sub.add_parser("memory", help="the agent's vector memory (add, search, info)")
    memsub = mem.add_subparsers(dest="memory_command", metavar="SUBCOMMAND")
    mem.set_defaults(func=lambda args, extra: (mem.print_help(), 64)[1])
    p = memsub.add_parser("add", help="embed TEXT, store it, record its digest in the ledger")
    p.add_argument("text")
    p.add_argument("--meta", action="append", default=[], metavar="K=V", help="metadata; repeatable")
    p.add_argument("--model", default="minilm", help="installed embedding model (default minilm)")
    p.add_argument(
        "--capacity",
        type=int,
        default=10_000,
        help="entries kept before the oldest are evicted (only when the memory is created)",
    )
    _state(p)
    add_passphrase_file_arg(p)
    p.set_defaults(func=_memory_add)
    p = memsub.add_parser("search", help="the K memories nearest to QUERY")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5, help="how many (default 5)")
    p.add_argument("--model", default="minilm")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _state(p)
    p.set_defaults(func=_memory_search)
    p = memsub.add_parser("info", help="size, capacity, dimension and model of the memory")
    _state(p)
    p.set_defaults(func=_memory_info)


def _recording_ledger(args: argparse.Namespace) -> AbstractContextManager[Recorder]:
    """The running daemon's ledger (through its control socket), else the ledger opened here."""
    from .through import recording_ledger

    passphrase = None
    if getattr(args, "passphrase_file", None):
        from ..identity.secrets import read_passphrase_file

        passphrase = read_passphrase_file(args.passphrase_file)
    return recording_ledger(state_from(args), passphrase=passphrase)


def _list(args: argparse.Namespace, extra: list[str]) -> int:
    from ..inference.store import ModelStore

    manifests = ModelStore(state_from(args)).list()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": m.name,
                        "version": m.version,
                        "runtime": m.runtime,
                        "task": m.task,
                        "manifest_sha256": m.digest,
                    }
                    for m in manifests
                ],
                indent=2,
            )
        )
        return 0
    if not manifests:
        print("no models installed (kestrel deploy --model NAME)")
        return 0
    print(f"{'NAME':<24} {'VERSION':<10} {'RUNTIME':<8} {'TASK':<10} MANIFEST")
    for m in manifests:
        print(f"{m.name:<24} {m.version:<10} {m.runtime:<8} {m.task:<10} {m.digest[:16]}")
    return 0


def _show(args: argparse.Namespace, extra: list[str]) -> int:
    from ..inference.store import ModelStore, load_model_dir

    path = Path(args.name)
    model = load_model_dir(path) if (path / "manifest.json").exists() else ModelStore(state_from(args)).get(args.name)
    m = model.manifest
    print(f"{m.name} {m.version} ({m.runtime}, task {m.task}, license {m.license})")
    print(f"  path      {model.path}")
    print(f"  manifest  sha256 {m.digest}")
    for f in m.files:
        print(f"  file      {f.path:<20} {f.size:>10} bytes  sha256 {f.sha256}")
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for s in specs:
            dims = ", ".join("?" if d is None else str(d) for d in s.shape)
            print(f"  {kind:<9} {s.name}: {s.dtype}[{dims}]")
    for key in ("preprocessing", "postprocessing", "quantization", "source"):
        value = getattr(m, key)
        if value:
            print(f"  {key}: {json.dumps(value, sort_keys=True)}")
    return 0


def _build(args: argparse.Namespace, extra: list[str]) -> int:
    from ..inference.build import build_model, default_models_dir, recipe_names

    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    names = args.names or recipe_names(models_dir)
    if not names:
        from ..errors import UsageError

        raise UsageError(f"no recipes in {models_dir}")
    for name in names:
        build_model(name, models_dir=models_dir, force=args.force)
    return 0


def _resolve_model_source(args: argparse.Namespace) -> Path:
    from ..errors import UsageError
    from ..inference.build import default_models_dir

    path = Path(args.model)
    if path.exists():
        return path
    if "/" not in args.model:
        models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
        built = models_dir / args.model / "build"
        if (built / "manifest.json").exists():
            return built
        raise UsageError(
            f"model {args.model!r} is not built ({built}/manifest.json is missing)",
            hint=f"build it first: kestrel models build {args.model}",
        )
    raise UsageError(f"no model folder at {path}")


def _deploy(args: argparse.Namespace, extra: list[str]) -> int:
    from ..inference.store import ModelStore, load_model_dir

    if args.model.startswith("local:"):  # a local LLM: `kestrel deploy --model local:PATH`
        from ..agent.llm import register_local_llm
        from ..agent.llm.registry import local_llm_dir

        local_llm_dir(args.model[len("local:") :])  # before unlocking the identity: a wrong path fails fast
        with _recording_ledger(args) as ledger:
            llm = register_local_llm(state_from(args), args.model[len("local:") :], ledger=ledger)
        print(
            f"registered local LLM {llm.name} (model sha256 {llm.digest[:16]}, context {llm.context_length}) "
            f"from {llm.path}"
        )
        return 0
    source = _resolve_model_source(args)
    load_model_dir(source)  # verify before unlocking the identity: a bad model fails fast
    with _recording_ledger(args) as ledger:
        model = ModelStore(state_from(args)).install(source, ledger=ledger)
    m = model.manifest
    print(f"deployed {m.name} {m.version} ({m.runtime}) manifest sha256 {m.digest[:16]} -> {model.path}")
    return 0


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    import numpy as np

    from ..errors import UsageError
    from ..inference.runner import ModelRunner

    runner = ModelRunner(state_from(args))
    sess = runner.session(args.name)
    specs = {s.name: s for s in sess.model.manifest.inputs}
    feed = {}
    for item in args.input:
        name, sep, value = item.partition("=")
        if not sep or name not in specs:
            raise UsageError(f"--input {item!r}: expected NAME=JSON with NAME one of {sorted(specs)}")
        try:
            feed[name] = np.asarray(json.loads(value), dtype=specs[name].dtype)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--input {name}: not a JSON array of {specs[name].dtype}: {exc}") from None
    outputs = sess.run(feed)
    print(json.dumps({k: np.asarray(v).tolist() for k, v in outputs.items()}))
    return 0


def _parse_meta(items: list[str]) -> dict[str, str]:
    from ..errors import UsageError

    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta {item!r}: expected KEY=VALUE")
        if key == "text":
            raise UsageError("--meta text=... is reserved for the memory's own text")
        meta[key] = value
    return meta


def _memory_add(args: argparse.Namespace, extra: list[str]) -> int:
    from ..inference.store import ModelStore
    from ..memory.text import TextMemory

    meta = _parse_meta(args.meta)
    ModelStore(state_from(args)).get(args.model)  # installed? (before unlocking the identity)
    with _recording_ledger(args) as ledger:
        with TextMemory.open(state_from(args), model=args.model, capacity=args.capacity, ledger=ledger) as memory:
            result = memory.add(args.text, meta)
            total = len(memory.vectors)
    evicted = f", evicted {list(result.evicted)}" if result.evicted else ""
    print(f"added memory {result.id} ({total} stored{evicted})")
    return 0


def _no_memory(args: argparse.Namespace) -> bool:
    from .._internal.paths import StateLayout
    from ..memory.store import FILE_NAME

    if (StateLayout(state_from(args)).memory / FILE_NAME).exists():
        return False
    print("no memories yet (kestrel memory add TEXT)")
    return True


def _memory_search(args: argparse.Namespace, extra: list[str]) -> int:
    from ..memory.text import TextMemory

    if _no_memory(args):
        return 0
    with TextMemory.open(state_from(args), model=args.model, read_only=True) as memory:
        hits = memory.search(args.query, args.k)
    if args.json:
        print(
            json.dumps(
                [{"id": h.id, "score": round(h.score, 4), "text": h.text, "meta": h.meta} for h in hits], indent=2
            )
        )
        return 0
    if not hits:
        print("no memories yet (kestrel memory add TEXT)")
    for h in hits:
        meta = " ".join(f"{k}={v}" for k, v in h.meta.items())
        print(f"{h.score:6.3f}  #{h.id}  {h.text}" + (f"  [{meta}]" if meta else ""))
    return 0


def _memory_info(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.paths import StateLayout
    from ..memory.store import VectorMemory

    if _no_memory(args):
        return 0
    with VectorMemory.open(StateLayout(state_from(args)).memory, read_only=True) as mem:
        p = mem.params
        print(
            f"entries {len(mem)} / capacity {p.capacity}, dimension {p.dim}, space {p.space}, "
            f"M {p.M}, ef_construction {p.ef_construction}, ef {p.ef}"
        )
        for k, v in mem.info.items():
            print(f"  {k}: {v}")
    return 0
