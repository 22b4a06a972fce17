"""Registering a local LLM (``kestrel deploy --model local:PATH``) and opening it again.

A local LLM stays where it is (multi-GB weights are not copied into the state
directory); ``STATE/agent/llm.json`` (0600, format ``kestrel.llm/1``, see
docs/llm.md) records its path, the sha256 and size of every file, and the
name. Registration loads the model once (a corrupt file is refused then) and
records ``model.deployed`` in the ledger. :func:`open_local_llm` refuses a model
whose files changed size or time since (re-register it), and with
``verify=True`` re-hashes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._internal.fsutil import atomic_write, ensure_private_dir, read_bytes
from ...errors import DataError, KestrelError
from .base import ModelLoadError

if TYPE_CHECKING:
    from ...ledger.recorder import Recorder

__all__ = ["LocalLLM", "register_local_llm", "open_local_llm", "registered_llm", "LLM_FILE"]

LLM_FILE = "llm.json"
FORMAT = "kestrel.llm/1"


@dataclass(frozen=True)
class LocalLLM:
    name: str
    path: Path
    digest: str  # sha256 of {file: sha256} JSON (the model digest in planner.step records)
    files: Mapping[str, Mapping[str, Any]]  # name -> {"sha256", "size", "mtime_ns"}
    context_length: int
    registered_at: float


def _model_files(path: Path) -> list[Path]:
    names = [
        p
        for p in path.iterdir()
        if p.is_file() and (p.name.startswith("model.onnx") or p.name in ("tokenizer.json", "config.json"))
    ]
    return sorted(names, key=lambda p: p.name)


def local_llm_dir(path: str | os.PathLike[str]) -> Path:
    """The folder ``local:PATH`` names (a path, or a recipe's build), or ModelLoadError: a cheap check
    that callers make before they unlock anything."""
    folder = _locate(path)
    if not folder.is_dir():
        raise ModelLoadError(
            f"no model directory at {folder}",
            hint="local:PATH takes a folder holding a decoder exported to ONNX (model.onnx, "
            "tokenizer.json, config.json; docs/llm.md), e.g. local:models/tinylm/build "
            "after `kestrel models build tinylm`",
        )
    return folder


def _locate(path: str | os.PathLike[str]) -> Path:
    """A folder path as given, or a bare name (``local:tinylm``) for a recipe's build under models/."""
    given = Path(path).expanduser()
    if given.is_dir() or os.sep in str(path):
        return given.resolve()
    from ...inference.build import default_models_dir

    built = default_models_dir() / str(path) / "build"
    return built.resolve() if built.is_dir() else given.resolve()


def _combined(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """The model digest: sha256 of the JSON object {file name: file sha256} (sorted, compact)."""
    text = json.dumps({k: v["sha256"] for k, v in entries.items()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _record_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / "agent" / LLM_FILE


def register_local_llm(
    state_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    ledger: Recorder | None = None,
    name: str | None = None,
    threads: int | None = None,
) -> LocalLLM:
    """Check that ``path`` holds a loadable decoder, then record it as this agent's LLM.

    ``path`` is a folder, or a bare name whose recipe build exists (``models/NAME/build``).
    """
    from .onnx import OnnxLanguageModel, file_digest

    folder = local_llm_dir(path)
    files = _model_files(folder)
    entries = {}
    for f in files:
        st = f.stat()
        entries[f.name] = {"sha256": file_digest([f]), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = _combined(entries)
    model = OnnxLanguageModel(folder, threads=threads, digest=digest)  # raises ModelLoadError if corrupt
    default_name = folder.parent.name if folder.name == "build" else folder.name
    llm = LocalLLM(name or default_name, folder, digest, entries, model.context_length, time.time())
    record = {
        "format": FORMAT,
        "name": llm.name,
        "backend": "onnx",
        "path": str(folder),
        "digest": digest,
        "files": entries,
        "context_length": llm.context_length,
        "registered_at": llm.registered_at,
    }
    target = _record_path(state_dir)
    ensure_private_dir(target.parent)
    atomic_write(target, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    if ledger is not None:
        ledger.append(
            "model.deployed",
            {
                "name": llm.name,
                "runtime": "onnx",
                "task": "text-generation",
                "source": "local",
                "digest": digest,
                "files": {k: v["sha256"] for k, v in entries.items()},
            },
        )
    return llm


def registered_llm(state_dir: str | os.PathLike[str]) -> LocalLLM | None:
    """The registered local LLM, or None. Raises DataError if the record is corrupt."""
    target = _record_path(state_dir)
    if not target.exists():
        return None
    try:
        obj = json.loads(read_bytes(target, what="LLM registration", max_size=1 << 20))
        if obj.get("format") != FORMAT:
            raise ValueError(f"format {obj.get('format')!r}")
        return LocalLLM(
            str(obj["name"]),
            Path(obj["path"]),
            str(obj["digest"]),
            dict(obj["files"]),
            int(obj["context_length"]),
            float(obj["registered_at"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{target} is corrupt: {exc}", hint="register the model again: kestrel deploy --model local:PATH"
        ) from None


def open_local_llm(state_dir: str | os.PathLike[str], *, threads: int | None = None, verify: bool = False) -> Any:
    """Open the registered local LLM as an :class:`OnnxLanguageModel`."""
    from .onnx import OnnxLanguageModel, file_digest

    llm = registered_llm(state_dir)
    if llm is None:
        raise KestrelError(
            "no local LLM is registered",
            hint="register one: kestrel deploy --model local:PATH, or use --rules / --endpoint",
        )
    for fname, info in llm.files.items():
        f = llm.path / fname
        try:
            st = f.stat()
        except OSError:
            raise ModelLoadError(
                f"registered LLM file {f} is missing", hint="restore it, or register the model again"
            ) from None
        if st.st_size != info["size"] or st.st_mtime_ns != info["mtime_ns"]:
            raise ModelLoadError(
                f"registered LLM file {f} changed since it was registered",
                hint=f"if the change is intended: kestrel deploy --model local:{llm.path}",
            )
    if verify and any(file_digest([llm.path / n]) != i["sha256"] for n, i in llm.files.items()):
        raise ModelLoadError(
            f"the files of {llm.path} do not match their registered sha256",
            hint="the model is corrupt or was replaced; restore it or register it again",
        )
    return OnnxLanguageModel(llm.path, threads=threads, digest=llm.digest, name=llm.name)
