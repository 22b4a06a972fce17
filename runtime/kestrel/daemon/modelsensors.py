"""Model sensors: an installed model fed from sensor readings, its outputs read by triggers.

Device config (docs/device-config.md, ``models:``)::

    models:
      anomaly:                        # triggers read anomaly.score and anomaly.alarm
        model: sensor-anomaly         # installed in STATE/models (kestrel deploy --model ...)
        inputs: [temp, humidity, vibration, current]   # one column per row; NAME or NAME.field
        window: 16                    # rows: the last N samples
        every: 0.5                    # seconds between samples; absent: a sample per reading
        output: score                 # default: the manifest's postprocessing.output
        threshold: 0.05               # default: postprocessing.threshold (alarm = score > threshold)

:func:`parse_models` is pure (part of ``parse_device_config``). :class:`ModelFeeds` is
the shell: at start it checks each model against the store and its manifest
(ConfigError naming the config file, line and key), then runs inferences in one
bounded worker thread (never on the loop), at most one in flight per model sensor
(newer windows coalesce), and reports ``{"score", "alarm", "runs"}`` as the sensor-like
value ``NAME``. numpy and onnxruntime are imported only here, inside the worker.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._internal.yamlnode import Fields, Node
from ..errors import ConfigError, KestrelError
from .expr import Expression, compile_expression

__all__ = ["ModelSensor", "parse_models", "ModelFeeds"]

log = logging.getLogger("kestrel.daemon.models")
_FLOAT_DTYPES = ("float32", "float64", "float16")


@dataclass(frozen=True)
class ModelSensor:
    name: str
    model: str
    inputs: tuple[Expression, ...]
    window: int
    every_s: float | None = None
    output: str | None = None
    threshold: float | None = None
    source: str = "<config>"
    line: int | None = None  # of the entry, for errors found at start

    @property
    def reads(self) -> frozenset[str]:
        """The sensors this model samples."""
        return frozenset().union(*(e.names for e in self.inputs))

    def error(self, message: str, *, key: str, hint: str | None = None) -> ConfigError:
        return ConfigError(message, path=self.source, line=self.line, key=f"models.{self.name}.{key}", hint=hint)


def parse_models(node: Node, *, names_ok: Callable[[Node, str], str]) -> tuple[ModelSensor, ...]:
    """The ``models:`` mapping (pure). ``names_ok(node, name)`` validates an entry's name."""
    out = []
    for name, entry in node.items():
        f = Fields(entry, {"model", "inputs", "window", "every", "output", "threshold"})
        inputs_node = f.node_of("inputs")
        exprs = []
        for item in inputs_node.sequence():
            try:
                exprs.append(compile_expression(item.as_str()))
            except KestrelError as exc:
                if isinstance(exc, ConfigError):
                    raise
                raise item.error(exc.message) from None
        if not exprs:
            raise inputs_node.error("a model sensor needs at least one input (a sensor name per column)")
        out.append(
            ModelSensor(
                name=names_ok(entry, name),
                model=f.get("model", Node.as_str),
                inputs=tuple(exprs),
                window=f.get("window", Node.as_int, 1, min=1, max=4096),
                every_s=f.get("every", Node.as_float, None, min=0.01, max=86_400),
                output=f.get("output", Node.as_str, None),
                threshold=f.get("threshold", Node.as_float, None),
                source=entry.source,
                line=entry.line,
            )
        )
    return tuple(out)


class _Feed:
    def __init__(
        self,
        spec: ModelSensor,
        *,
        input_name: str,
        dtype: str,
        shape: tuple[int, ...],
        output: str,
        threshold: float | None,
    ) -> None:
        self.spec = spec
        self.input_name, self.dtype, self.shape = input_name, dtype, shape
        self.output, self.threshold = output, threshold
        self.rows: collections.deque[tuple[float, ...]] = collections.deque(maxlen=spec.window)
        self.running = self.again = False
        self.runs = self.skipped = self.errors = 0
        self.failing: str | None = None

    def sample(self, values: Mapping[str, Any]) -> bool:
        row = []
        for e in self.spec.inputs:
            try:
                v = e.evaluate(values)
            except KestrelError:
                v = None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.skipped += 1  # not every input has a number yet
                return False
            row.append(float(v))
        self.rows.append(tuple(row))
        return len(self.rows) == self.spec.window


class ModelFeeds:
    """The running model sensors of one config (rebuilt on reload)."""

    def __init__(
        self,
        specs: tuple[ModelSensor, ...],
        *,
        state_dir: Any,
        report: Callable[[str, Any], None],
        fault: Callable[[str, str, dict[str, Any]], None],
        options: Any = None,
    ) -> None:
        self.specs = specs
        self.state_dir = state_dir
        self._report, self._fault = report, fault
        self._options = options
        self._feeds: dict[str, _Feed] = {}
        self._by_sensor: dict[str, list[_Feed]] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._runner: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._values: Mapping[str, Any] = {}

    async def start(self, values: Mapping[str, Any]) -> None:
        """Check every model against the store (ConfigError on a mismatch), then start sampling."""
        self._values = values
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kestrel-model")
        loop = asyncio.get_running_loop()
        try:
            feeds = await loop.run_in_executor(self._pool, self._check_all)
        except BaseException:
            self._pool.shutdown(wait=False)
            raise
        for feed in feeds:
            self._feeds[feed.spec.name] = feed
            if feed.spec.every_s is None:
                for sensor in feed.spec.reads:
                    self._by_sensor.setdefault(sensor, []).append(feed)
            else:
                task = loop.create_task(self._periodic(feed), name=f"model:{feed.spec.name}")
                self._tasks.add(task)

    def _check_all(self) -> list[_Feed]:
        from ..inference.runner import ModelRunner

        self._runner = ModelRunner(self.state_dir, options=self._options)
        return [self._check(spec) for spec in self.specs]

    def _check(self, spec: ModelSensor) -> _Feed:
        from ..inference.store import ModelNotFoundError

        try:
            manifest = self._runner.store.get(spec.model).manifest
        except ModelNotFoundError as exc:
            raise spec.error(f"model {spec.model!r} is not installed", key="model", hint=exc.hint) from None
        except KestrelError as exc:
            raise spec.error(
                f"model {spec.model!r} cannot be used: {exc.message}", key="model", hint=exc.hint
            ) from None
        if len(manifest.inputs) != 1:
            raise spec.error(
                f"model {spec.model!r} takes {len(manifest.inputs)} inputs; a model sensor feeds one", key="model"
            )
        inp = manifest.inputs[0]
        dims = tuple(inp.shape)
        want = (spec.window, len(spec.inputs))
        fixed = [d if isinstance(d, int) else None for d in dims]
        if (
            len(dims) not in (2, 3)
            or inp.dtype not in _FLOAT_DTYPES
            or any(f is not None and f != w for f, w in zip(fixed[-2:], want, strict=False))
            or (len(dims) == 3 and fixed[0] not in (None, 1))
        ):
            shown = "[" + ", ".join("?" if d is None else str(d) for d in fixed) + "]"
            raise spec.error(
                f"model {spec.model!r} expects {inp.name}: {inp.dtype}{shown}; this config feeds "
                f"[{spec.window}, {len(spec.inputs)}] (window x inputs)",
                key="inputs",
                hint="set window to the model's rows and list one input per feature column",
            )
        post = manifest.postprocessing or {}
        output = spec.output or post.get("output") or manifest.outputs[0].name
        if output not in {o.name for o in manifest.outputs}:
            raise spec.error(
                f"model {spec.model!r} has no output {output!r}",
                key="output",
                hint="outputs: " + ", ".join(o.name for o in manifest.outputs),
            )
        threshold = spec.threshold if spec.threshold is not None else post.get("threshold")
        shape = (1, spec.window, len(spec.inputs)) if len(dims) == 3 else want
        return _Feed(
            spec,
            input_name=inp.name,
            dtype=inp.dtype,
            shape=shape,
            output=output,
            threshold=None if threshold is None else float(threshold),
        )

    # -- sampling ----------------------------------------------------------------------------
    def on_reading(self, sensor: str, values: Mapping[str, Any]) -> None:
        for feed in self._by_sensor.get(sensor, ()):
            if feed.sample(values):
                self._schedule(feed)

    async def _periodic(self, feed: _Feed) -> None:
        assert feed.spec.every_s is not None
        while True:
            await asyncio.sleep(feed.spec.every_s)
            if feed.sample(self._values):
                self._schedule(feed)

    def _schedule(self, feed: _Feed) -> None:
        if feed.running:
            feed.again = True  # coalesce: the run after this one sees the newest window
            return
        feed.running = True
        task = asyncio.get_running_loop().create_task(self._run(feed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, feed: _Feed) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                feed.again = False
                rows = list(feed.rows)
                try:
                    score = await loop.run_in_executor(self._pool, self._infer, feed, rows)
                except Exception as exc:  # a model that fails must not stop the daemon
                    self._failed(feed, exc)
                else:
                    self._succeeded(feed, score)
                if not feed.again:
                    return
        finally:
            feed.running = False

    def _infer(self, feed: _Feed, rows: list[tuple[float, ...]]) -> float:
        import numpy as np

        x = np.asarray(rows, dtype=feed.dtype).reshape(feed.shape)
        out = self._runner.run_model(feed.spec.model, {feed.input_name: x})[feed.output]
        return float(np.max(out))

    def _succeeded(self, feed: _Feed, score: float) -> None:
        feed.runs += 1
        if feed.failing is not None:
            feed.failing = None
            self._fault(feed.spec.name, "recovered", {"model": feed.spec.model})
        alarm = None if feed.threshold is None else score > feed.threshold
        self._report(feed.spec.name, {"score": score, "alarm": alarm, "runs": feed.runs})

    def _failed(self, feed: _Feed, exc: Exception) -> None:
        feed.errors += 1
        why = exc.message if isinstance(exc, KestrelError) else f"{type(exc).__name__}: {exc}"
        if feed.failing != why:  # one record per new failure, not per window
            feed.failing = why
            self._fault(feed.spec.name, "model-error", {"model": feed.spec.model, "error": why[:300]})

    def describe(self) -> dict[str, Any]:
        return {
            name: {
                "model": f.spec.model,
                "runs": f.runs,
                "skipped": f.skipped,
                "errors": f.errors,
                "rows": len(f.rows),
                "error": f.failing,
            }
            for name, f in self._feeds.items()
        }

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
