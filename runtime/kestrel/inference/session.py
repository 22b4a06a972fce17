"""Inference sessions behind one interface: onnxruntime and LiteRT (the I/O shell).

``open_session(model, options)`` returns a :class:`Session` whose ``run(inputs)`` takes a
mapping of input name to numpy array and returns a dict of output name to array. Inputs are
checked against the manifest (names, dtype, rank and fixed dimensions) before they reach the
runtime; at open, the manifest is checked against the model file itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from ..errors import DataError, TransportError
from .manifest import ManifestError, TensorSpec
from .options import RuntimeOptions
from .store import InstalledModel

__all__ = ["Session", "InputError", "InputChecker", "open_session", "OrtSession", "LiteRtSession", "check_inputs"]

log = logging.getLogger(__name__)


class InputError(DataError):
    """An input does not match the model's manifest (missing, extra, wrong dtype or shape)."""


class Session(Protocol):
    model: InstalledModel
    providers: tuple[str, ...]

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]: ...


def _input_error(model_name: str, specs: tuple[TensorSpec, ...], inputs: Mapping[str, Any]) -> InputError:
    """Say exactly what is wrong with ``inputs`` (the slow path, only after a check failed)."""
    names = {s.name for s in specs}
    if set(inputs) != names:
        return InputError(
            f"model {model_name}: inputs {sorted(inputs)} do not match the manifest's {sorted(names)}",
            hint="pass exactly the inputs listed by `kestrel models show`",
        )
    for spec in specs:
        arr = inputs[spec.name]
        dtype = getattr(arr, "dtype", None)
        if dtype is None or getattr(dtype, "name", None) != spec.dtype:
            return InputError(
                f"model {model_name}: input {spec.name!r} has dtype {getattr(dtype, 'name', type(arr).__name__)}, "
                f"expected {spec.dtype}",
                hint=f"convert it with numpy: arr.astype('{spec.dtype}')",
            )
        shape = tuple(getattr(arr, "shape", ()))
        if len(shape) != len(spec.shape) or any(
            isinstance(d, int) and d != got for d, got in zip(spec.shape, shape, strict=False)
        ):
            shown = ["?" if d is None else d for d in spec.shape]
            return InputError(
                f"model {model_name}: input {spec.name!r} has shape {list(shape)}, expected {shown}",
                hint="'?' or a name marks a free axis; every number must match",
            )
    return InputError(f"model {model_name}: inputs do not match the manifest")


class InputChecker:
    """Checks inputs against a manifest's specs; precomputed so a call costs microseconds."""

    def __init__(self, model_name: str, specs: tuple[TensorSpec, ...]) -> None:
        import numpy as np

        self.model_name = model_name
        self.specs = specs
        self._rules = [
            (
                s.name,
                np.dtype(s.dtype),
                len(s.shape),
                tuple((axis, d) for axis, d in enumerate(s.shape) if isinstance(d, int)),
            )
            for s in specs
        ]

    def __call__(self, inputs: Mapping[str, Any]) -> None:
        if len(inputs) != len(self._rules):
            raise _input_error(self.model_name, self.specs, inputs)
        for name, dtype, rank, fixed in self._rules:
            arr: Any = inputs.get(name)  # anything: a value without shape and dtype is refused below
            try:
                shape = arr.shape
                ok = arr.dtype == dtype and len(shape) == rank
            except AttributeError:
                ok = False
            if not ok or any(shape[axis] != d for axis, d in fixed):
                raise _input_error(self.model_name, self.specs, inputs)


def check_inputs(model_name: str, specs: tuple[TensorSpec, ...], inputs: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` unless ``inputs`` match ``specs`` exactly (no silent casts)."""
    InputChecker(model_name, specs)(inputs)


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
_ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _check_against_model(
    model: InstalledModel, actual: dict[str, tuple[str, tuple[Any, ...]]], specs: tuple[TensorSpec, ...], what: str
) -> None:
    name = model.manifest.name
    for spec in specs:
        if spec.name not in actual:
            raise ManifestError(
                f"model {name}: manifest names {what} {spec.name!r}, which {model.manifest.model_file} does not have "
                f"(it has {sorted(actual)})",
                hint="fix the recipe's manifest and rebuild the model",
            )
        dtype, shape = actual[spec.name]
        if dtype != spec.dtype or len(shape) != len(spec.shape):
            raise ManifestError(
                f"model {name}: {what} {spec.name!r} is {dtype}{list(shape)} in the model but "
                f"{spec.dtype}{list(spec.shape)} in the manifest",
                hint="fix the recipe's manifest and rebuild the model",
            )
    if what == "input":
        missing = sorted(set(actual) - {s.name for s in specs})
        if missing:
            raise ManifestError(f"model {name}: the model needs inputs {missing} that the manifest does not name")


class OrtSession:
    """An onnxruntime session built from :class:`RuntimeOptions`. ``run`` is thread-safe."""

    def __init__(self, model: InstalledModel, options: RuntimeOptions) -> None:
        import onnxruntime as ort

        self.model = model
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.enable_cpu_mem_arena = options.cpu_arena
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        spin = "1" if options.spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        self.session_options = so
        self.providers = self._providers(ort, options)
        try:
            self._sess = ort.InferenceSession(str(model.model_path), sess_options=so, providers=list(self.providers))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ManifestError(
                f"model {model.manifest.name}: onnxruntime cannot load {model.model_path}: {exc}",
                hint="rebuild the model with `kestrel models build` and redeploy it",
            ) from None
        if options.require_accelerator and self.active_providers() == ["CPUExecutionProvider"]:
            # onnxruntime falls back to the CPU when an accelerator's libraries fail to load
            raise TransportError(
                f"model {model.manifest.name}: no accelerator could be used ({', '.join(options.providers)} "
                "asked for; onnxruntime fell back to the CPU)",
                hint="check the CUDA/TensorRT libraries (onnxruntime's log says which failed to load), "
                "or set require_accelerator: false in the board profile",
            )
        actual_in = {i.name: (_ORT_TYPES.get(i.type, i.type), tuple(i.shape)) for i in self._sess.get_inputs()}
        actual_out = {o.name: (_ORT_TYPES.get(o.type, o.type), tuple(o.shape)) for o in self._sess.get_outputs()}
        _check_against_model(model, actual_in, model.manifest.inputs, "input")
        _check_against_model(model, actual_out, model.manifest.outputs, "output")
        self._output_names = [o.name for o in model.manifest.outputs]
        self._check = InputChecker(model.manifest.name, model.manifest.inputs)

    @staticmethod
    def _providers(ort: Any, options: RuntimeOptions) -> tuple[Any, ...]:
        available = set(ort.get_available_providers())
        chosen: list[Any] = []
        for p in options.providers:
            full = _ORT_PROVIDERS[p]
            if p == "cpu":
                continue
            if full not in available:
                if options.require_accelerator:
                    raise TransportError(
                        f"execution provider {p} was asked for but this onnxruntime has only {sorted(available)}",
                        hint="install onnxruntime-gpu (Jetson: NVIDIA's wheel) or drop it from the board profile",
                    )
                log.warning("inference: provider %s unavailable, skipping", p)
                continue
            if p == "tensorrt":
                opts: dict[str, Any] = {"trt_fp16_enable": options.fp16}
                if options.engine_cache_dir is not None:
                    options.engine_cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    opts.update(
                        trt_engine_cache_enable=True,
                        trt_engine_cache_path=str(options.engine_cache_dir),
                        trt_timing_cache_enable=True,
                        trt_timing_cache_path=str(options.engine_cache_dir),
                    )
                chosen.append((full, opts))
            else:
                chosen.append(full)
        chosen.append("CPUExecutionProvider")
        return tuple(chosen)

    def active_providers(self) -> list[str]:
        return list(self._sess.get_providers())

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self._check(inputs)
        try:
            values = self._sess.run(self._output_names, inputs if type(inputs) is dict else dict(inputs))
        except Exception as exc:
            raise InputError(f"model {self.model.manifest.name}: onnxruntime refused the input: {exc}") from None
        return dict(zip(self._output_names, values, strict=False))


def _litert_interpreter() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise TransportError(
                "no LiteRT runtime: neither ai-edge-litert nor tflite-runtime is installed",
                hint="pip install ai-edge-litert (tflite-runtime 2.14 does not work with numpy 2)",
            ) from None
    return Interpreter


class LiteRtSession:
    """A LiteRT (TFLite) interpreter. Interpreters are not thread-safe, so ``run`` holds a lock."""

    def __init__(self, model: InstalledModel, options: RuntimeOptions) -> None:
        import numpy as np

        self.model = model
        self.providers: tuple[str, ...] = ("litert",)
        Interpreter = _litert_interpreter()
        try:
            self._interp = Interpreter(model_path=str(model.model_path), num_threads=max(1, options.intra_op_threads))
            self._interp.allocate_tensors()
        except Exception as exc:
            raise ManifestError(f"model {model.manifest.name}: LiteRT cannot load {model.model_path}: {exc}") from None
        ins = {d["name"]: d for d in self._interp.get_input_details()}
        outs = {d["name"]: d for d in self._interp.get_output_details()}
        as_spec = lambda d: (np.dtype(d["dtype"]).name, tuple(d["shape_signature"]))  # noqa: E731
        _check_against_model(model, {k: as_spec(v) for k, v in ins.items()}, model.manifest.inputs, "input")
        _check_against_model(model, {k: as_spec(v) for k, v in outs.items()}, model.manifest.outputs, "output")
        self._in = {s.name: ins[s.name] for s in model.manifest.inputs}
        self._out = {s.name: outs[s.name]["index"] for s in model.manifest.outputs}
        self._shapes = {k: tuple(d["shape"]) for k, d in self._in.items()}
        self._lock = threading.Lock()
        self._check = InputChecker(model.manifest.name, model.manifest.inputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self._check(inputs)
        with self._lock:
            resized = False
            for name, detail in self._in.items():
                shape = tuple(inputs[name].shape)
                if shape != self._shapes[name]:
                    self._interp.resize_tensor_input(detail["index"], list(shape))
                    self._shapes[name] = shape
                    resized = True
            if resized:
                self._interp.allocate_tensors()
            for name, detail in self._in.items():
                self._interp.set_tensor(detail["index"], inputs[name])
            self._interp.invoke()
            return {name: self._interp.get_tensor(idx).copy() for name, idx in self._out.items()}


def open_session(model: InstalledModel, options: RuntimeOptions | None = None) -> Session:
    """Open ``model`` with the backend its manifest names."""
    options = options or RuntimeOptions()
    if model.manifest.runtime == "onnx":
        return OrtSession(model, options)
    return LiteRtSession(model, options)
