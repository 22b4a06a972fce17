"""``run_model(name, inputs)``: a model's output as a value for trigger rules and actions.

The daemon's trigger rules call :meth:`ModelRunner.run_model` (in an executor: it blocks) and
compare an output with a threshold, e.g. the sensor model's ``score`` against
``manifest.postprocessing["threshold"]``. Sessions are opened once per installed version and
reused; a redeploy (new manifest digest) opens a fresh session.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping
from typing import Any

from .options import RuntimeOptions
from .session import Session, open_session
from .store import InstalledModel, ModelStore

__all__ = ["ModelRunner", "run_model", "threshold_exceeded"]


class ModelRunner:
    """Sessions over one state directory's model store. Thread-safe."""

    def __init__(self, state_dir: str | os.PathLike[str], *, options: RuntimeOptions | None = None) -> None:
        self.store = ModelStore(state_dir)
        options = options or RuntimeOptions()
        if "tensorrt" in options.providers and options.engine_cache_dir is None:
            options = dataclasses.replace(options, engine_cache_dir=self.store.root / ".trt-cache")
        self.options = options
        self._sessions: dict[str, tuple[str, Session]] = {}
        self._lock = threading.Lock()

    def session(self, name: str) -> Session:
        """The session of the current version of ``name`` (verified against its manifest on open)."""
        with self._lock:
            cached = self._sessions.get(name)
            current = self._current_digest(name)
            if cached is not None and cached[0] == current:
                return cached[1]
            model: InstalledModel = self.store.get(name)
            sess = open_session(model, self.options)
            self._sessions[name] = (model.manifest.digest[:16], sess)
            return sess

    def _current_digest(self, name: str) -> str | None:
        try:
            return (self.store.root / name / "current").read_text().strip()
        except OSError:
            return None

    def run_model(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the installed model ``name``; returns output name -> numpy array."""
        return self.session(name).run(inputs)


_runners: dict[str, ModelRunner] = {}
_runners_lock = threading.Lock()


def run_model(
    name: str, inputs: Mapping[str, Any], *, state_dir: str | os.PathLike[str], options: RuntimeOptions | None = None
) -> dict[str, Any]:
    """Module-level convenience over a per-state-directory :class:`ModelRunner`."""
    key = os.fspath(state_dir)
    with _runners_lock:
        runner = _runners.get(key)
        if runner is None:
            runner = _runners[key] = ModelRunner(state_dir, options=options)
    return runner.run_model(name, inputs)


def threshold_exceeded(
    runner: ModelRunner,
    name: str,
    inputs: Mapping[str, Any],
    *,
    output: str | None = None,
    threshold: float | None = None,
) -> bool:
    """A ready-made trigger condition: does ``output`` (default: the manifest's
    ``postprocessing.output``) exceed ``threshold`` (default: ``postprocessing.threshold``) for any row?"""
    sess = runner.session(name)
    post = sess.model.manifest.postprocessing
    out_name = output or post.get("output") or sess.model.manifest.outputs[0].name
    limit = threshold if threshold is not None else post.get("threshold")
    if limit is None:
        from .manifest import ManifestError

        raise ManifestError(f"model {name}: no threshold given and postprocessing.threshold is not set")
    values = sess.run(inputs)[out_name]
    return bool((values > float(limit)).any())
