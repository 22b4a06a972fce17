"""Recipe: the sensor anomaly model as a .tflite file, for the LiteRT path (host-side).

Trains the same autoencoder as ``models/sensor-anomaly`` (same seed, same code) and writes the
TFLite flatbuffer directly with the schema bindings that ship in ``ai-edge-litert``: no
TensorFlow needed. Dense weights are int8 per output channel (TFLite "hybrid" FULLY_CONNECTED:
float activations, int8 weights); standardisation and the score are inside the graph:

    RESHAPE -> SUB(mean) -> MUL(1/std) -> [FULLY_CONNECTED -> TANH] x3 -> FULLY_CONNECTED
            -> SQUARED_DIFFERENCE(z, reconstruction) -> MEAN(axis 1) = score
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

TOTAL_STEPS = 4


def _sensor_recipe() -> Any:
    path = Path(__file__).resolve().parent.parent / "sensor-anomaly" / "recipe.py"
    spec = importlib.util.spec_from_file_location("kestrel_recipe_sensor_anomaly_shared", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def tflite_bytes(weights: dict[str, Any], *, window: int, channels: int) -> bytes:
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as s

    buffers = [s.BufferT()]  # buffer 0: the empty sentinel
    tensors: list[Any] = []

    def tensor(
        name: str, shape: list[int], ttype: int, data: Any = None, quant: Any = None, signature: list[int] | None = None
    ) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type = name, shape, ttype
        t.shapeSignature = signature
        t.buffer = 0
        if data is not None:
            buf = s.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            buffers.append(buf)
            t.buffer = len(buffers) - 1
        t.quantization = quant
        tensors.append(t)
        return len(tensors) - 1

    F32, I32, I8 = s.TensorType.FLOAT32, s.TensorType.INT32, s.TensorType.INT8
    flat = window * channels
    codes: list[int] = []
    ops: list[Any] = []

    def op(code: int, inputs: list[int], outputs: list[int], opt_type: int = 0, opt: Any = None) -> None:
        if code not in codes:
            codes.append(code)
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = codes.index(code), inputs, outputs
        o.builtinOptionsType, o.builtinOptions = opt_type, opt
        ops.append(o)

    B = s.BuiltinOperator
    x = tensor("readings", [1, window, channels], F32, signature=[-1, window, channels])
    shape = tensor("flat_shape", [2], I32, np.array([-1, flat], np.int32))
    xf = tensor("flat", [1, flat], F32, signature=[-1, flat])
    ro = s.ReshapeOptionsT()
    ro.newShape = [-1, flat]
    op(B.RESHAPE, [x, shape], [xf], s.BuiltinOptions.ReshapeOptions, ro)
    mean = tensor("mean", [flat], F32, weights["mean"])
    cen = tensor("centered", [1, flat], F32, signature=[-1, flat])
    op(B.SUB, [xf, mean], [cen], s.BuiltinOptions.SubOptions, s.SubOptionsT())
    inv = tensor("inv_std", [flat], F32, (1.0 / weights["std"]).astype(np.float32))
    z = tensor("z", [1, flat], F32, signature=[-1, flat])
    op(B.MUL, [cen, inv], [z], s.BuiltinOptions.MulOptions, s.MulOptionsT())
    h = z
    p = weights["params"]
    for i in range(0, len(p), 2):
        layer = i // 2
        w = p[i].T.astype(np.float32)  # TFLite FULLY_CONNECTED weights are [out, in]
        scale = np.maximum(np.abs(w).max(axis=1), 1e-8) / 127.0
        q = s.QuantizationParametersT()
        q.scale, q.zeroPoint, q.quantizedDimension = scale.astype(np.float32).tolist(), [0] * len(scale), 0
        wq = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
        wt = tensor(f"W{layer}", list(w.shape), I8, wq, quant=q)
        bt = tensor(f"b{layer}", [w.shape[0]], F32, p[i + 1].astype(np.float32))
        out = tensor(f"pre{layer}", [1, w.shape[0]], F32, signature=[-1, w.shape[0]])
        fo = s.FullyConnectedOptionsT()
        fo.asymmetricQuantizeInputs = True
        op(B.FULLY_CONNECTED, [h, wt, bt], [out], s.BuiltinOptions.FullyConnectedOptions, fo)
        h = out
        if i < len(p) - 2:
            act = tensor(f"act{layer}", [1, w.shape[0]], F32, signature=[-1, w.shape[0]])
            op(B.TANH, [h], [act])
            h = act
    sq = tensor("sq", [1, flat], F32, signature=[-1, flat])
    op(B.SQUARED_DIFFERENCE, [z, h], [sq], s.BuiltinOptions.SquaredDifferenceOptions, s.SquaredDifferenceOptionsT())
    axis = tensor("axis", [1], I32, np.array([1], np.int32))
    score = tensor("score", [1], F32, signature=[-1])
    ro2 = s.ReducerOptionsT()
    ro2.keepDims = False
    op(B.MEAN, [sq, axis], [score], s.BuiltinOptions.ReducerOptions, ro2)

    sub = s.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs, sub.operators, sub.name = tensors, [x], [score], ops, "main"
    model = s.ModelT()
    model.version, model.description, model.subgraphs, model.buffers = 3, "kestrel sensor-anomaly-lite", [sub], buffers
    model.operatorCodes = []
    for code in codes:
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        model.operatorCodes.append(oc)
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def build(ctx: Any) -> None:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    sensor = _sensor_recipe()
    ctx.work.mkdir(parents=True, exist_ok=True)
    with ctx.step("training the autoencoder (shared with sensor-anomaly, seed 7)"):
        weights = train = sensor.train(progress=ctx.progress)
    with ctx.step("writing the TFLite flatbuffer (int8 hybrid FULLY_CONNECTED)"):
        out = ctx.out / "model.tflite"
        out.write_bytes(tflite_bytes(train, window=sensor.WINDOW, channels=sensor.CHANNELS))
    with ctx.step("checking it with LiteRT against the numpy reference"):
        rng = np.random.default_rng(sensor.SEED + 1)
        normal = sensor.make_windows(2000, rng=rng)
        anomalous = sensor.make_windows(1000, rng=rng, anomalous=True)
        interp = Interpreter(model_path=str(out))

        def scores(x: Any) -> Any:
            d = interp.get_input_details()[0]
            interp.resize_tensor_input(d["index"], list(x.shape))
            interp.allocate_tensors()
            interp.set_tensor(d["index"], x)
            interp.invoke()
            return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()

        s_norm, s_anom = scores(normal), scores(anomalous)
        threshold = float(np.quantile(s_norm, 0.995))
        quality = sensor.evaluate(s_norm, s_anom, threshold)
        quality["max_abs_error_vs_fp32"] = float(np.abs(sensor.reference_scores(weights, normal) - s_norm).max())
        ctx.note(
            f"threshold {threshold:.4f}: detection {quality['detection_rate']:.3f}, "
            f"false alarms {quality['false_alarm_rate']:.4f}"
        )
        if quality["detection_rate"] < 0.9:
            raise RuntimeError(f"detection rate {quality['detection_rate']:.3f} is below the 0.9 gate")
    with ctx.step("writing the manifest"):
        ctx.facts["quality"] = quality
        ctx.write_manifest(
            ["model.tflite"],
            postprocessing={
                "output": "score",
                "threshold": round(threshold, 6),
                "rule": "anomaly when score > threshold",
            },
        )
