"""Host-side model building: runs ``models/<name>/recipe.py`` with a progress display.

Only ``kestrel models build`` imports this module; recipes import the host extra
(``pip install 'kestrel-sovereign[models]'``: torch, transformers, optimum, onnx) inside
their ``build(ctx)``. The device runtime never imports it.

A recipe writes its files into ``ctx.out`` (``models/<name>/build/``) and calls
``ctx.write_manifest(...)``, which merges ``models/<name>/manifest.template.json`` with
the measured sha256 and size of every file and the recipe's own digest. A build whose
manifest still verifies and whose recipe digest is unchanged is reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ..errors import DataError, KestrelError, UsageError
from .manifest import MANIFEST_FORMAT, MANIFEST_NAME, encode_manifest
from .store import InstalledModel, hash_file, load_model_dir

__all__ = ["BuildContext", "BuildError", "default_models_dir", "recipe_names", "build_model"]

TEMPLATE_NAME = "manifest.template.json"


class BuildError(KestrelError):
    """A recipe failed or its result missed its quality gate."""


def default_models_dir() -> Path:
    """``$KESTREL_MODELS_DIR``, else the repository's ``models/`` (editable installs), else ``./models``."""
    env = os.environ.get("KESTREL_MODELS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3] / "models"
    return repo if repo.is_dir() else Path.cwd() / "models"


def recipe_names(models_dir: Path) -> list[str]:
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if (p / "recipe.py").is_file())


def _recipe_digest(folder: Path) -> str:
    """sha256 over the folder's *.py, *.json, *.txt files and the files named in ``depends.txt``
    (one path per line, relative to the folder: code a recipe borrows from another)."""
    h = hashlib.sha256()
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in (".py", ".json", ".txt")]
    deps = folder / "depends.txt"
    if deps.is_file():
        files += [folder / line.strip() for line in deps.read_text().splitlines() if line.strip()]
    for p in files:
        try:
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
        except OSError as exc:
            raise BuildError(f"recipe {folder.name}: cannot read {p}: {exc.strerror or exc}") from None
    return h.hexdigest()


class BuildContext:
    """What a recipe gets: where to write, steps with progress, and the manifest writer."""

    def __init__(
        self,
        name: str,
        folder: Path,
        *,
        stream: TextIO = sys.stderr,
        total_steps: int = 0,
        shared: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.folder = folder
        self.out = folder / "build"
        self.work = self.out / "work"
        self.stream = stream
        self.total_steps = total_steps
        self.recipe_digest = _recipe_digest(folder)
        self.facts: dict[str, Any] = {}
        self.shared = dict(shared or {})
        self._step = 0
        self._tty = stream.isatty()

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """``[i/n] title ... done in 1.2s`` on the stream."""
        self._step += 1
        total = f"/{self.total_steps}" if self.total_steps else ""
        self.stream.write(f"[{self.name} {self._step}{total}] {title} ...")
        self.stream.flush()
        t0 = time.monotonic()
        try:
            yield
        except BaseException:
            self.stream.write(" failed\n")
            raise
        self.stream.write(f" done in {time.monotonic() - t0:.1f}s\n")
        self.stream.flush()

    def progress(self, done: int, total: int, note: str = "") -> None:
        """Fine-grained progress inside a step (a bar on terminals, nothing in logs)."""
        if self._tty:
            width = 24
            filled = int(width * done / max(total, 1))
            self.stream.write(f"\r    [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {note}   ")
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(f"    {text}\n")
        self.stream.flush()

    def template(self) -> dict[str, Any]:
        path = self.folder / TEMPLATE_NAME
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BuildError(f"{path}: cannot read the manifest template: {exc}") from None

    def write_manifest(self, files: list[str], **fields: Any) -> InstalledModel:
        """Measure ``files`` in ``ctx.out`` and write ``manifest.json`` (template + ``fields``)."""
        obj = self.template()
        obj.update(fields)
        obj["format"] = MANIFEST_FORMAT
        obj["name"] = self.name
        obj["files"] = {}
        for f in files:
            digest, size = hash_file(self.out / f)
            obj["files"][f] = {"sha256": digest, "size": size}
        obj["build"] = {**obj.get("build", {}), "recipe_sha256": self.recipe_digest, **self.facts}
        (self.out / MANIFEST_NAME).write_bytes(encode_manifest(obj))
        return load_model_dir(self.out)


def _load_recipe(folder: Path) -> Any:
    path = folder / "recipe.py"
    spec = importlib.util.spec_from_file_location(f"kestrel_recipe_{folder.name.replace('-', '_')}", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load recipe {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def up_to_date(folder: Path) -> InstalledModel | None:
    """The existing build, if its manifest verifies and was made by the current recipe."""
    try:
        model = load_model_dir(folder / "build")
    except (KestrelError, OSError):
        return None
    if model.manifest.build.get("recipe_sha256") != _recipe_digest(folder):
        return None
    return model


def build_model(
    name: str, *, models_dir: Path | None = None, force: bool = False, stream: TextIO = sys.stderr
) -> InstalledModel:
    """Run the recipe of ``name`` (unless its build is up to date) and return the verified build."""
    models_dir = models_dir or default_models_dir()
    folder = models_dir / name
    if not (folder / "recipe.py").is_file():
        known = ", ".join(recipe_names(models_dir)) or "none"
        raise UsageError(f"no recipe {folder / 'recipe.py'} (recipes here: {known})")
    if not force:
        cached = up_to_date(folder)
        if cached is not None:
            stream.write(f"[{name}] up to date: {cached.path / MANIFEST_NAME}\n")
            return cached
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a model hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    recipe = _load_recipe(folder)
    ctx = BuildContext(name, folder, stream=stream, total_steps=getattr(recipe, "TOTAL_STEPS", 0))
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / MANIFEST_NAME).unlink(missing_ok=True)  # a half-done build never looks complete
    t0 = time.monotonic()
    try:
        recipe.build(ctx)
    except ImportError as exc:
        raise BuildError(
            f"recipe {name} needs {exc.name}, which is not installed",
            hint="install the host-side model tooling (about 2 GB): from a checkout `./dev setup "
            "--models`, else pip install 'kestrel-sovereign[models]'",
        ) from None
    except KestrelError:
        raise
    except Exception as exc:
        raise BuildError(f"recipe {name} failed: {type(exc).__name__}: {exc}") from exc
    model = load_model_dir(ctx.out)
    if model.manifest.build.get("recipe_sha256") != ctx.recipe_digest:
        raise DataError(f"recipe {name} did not write its manifest with ctx.write_manifest")
    stream.write(f"[{name}] built in {time.monotonic() - t0:.1f}s: {model.path / MANIFEST_NAME}\n")
    return model
