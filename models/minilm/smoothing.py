"""SmoothQuant-style activation smoothing for the fused MiniLM graph (host-side, build time only).

Dynamic int8 quantization scales each activation tensor with one number, so a few input
channels with large values (outliers) leave the other channels only a few quantization steps.
Smoothing divides input channel ``k`` of a MatMul by ``s_k`` and multiplies row ``k`` of its
weight by ``s_k``: the fp32 product is unchanged, the activation range is flattened and the
difficulty moves to the weights, which are quantized per output channel. With
``s_k = amax_x[k] ** alpha / amax_w[k] ** (1 - alpha)`` (``amax_x`` measured on calibration
text, ``amax_w`` the weight row's max magnitude) the activation outliers shrink.

Where ``1/s`` goes:

- ``attn_out`` (the attention output projection): folded into the value columns (the last
  third) of the producing ``Attention`` node's packed QKV weight and bias: no new node, exact;
- ``ffn_up``, ``ffn_down``, ``attn_in`` (inputs that are also a residual, or come from a GELU):
  a ``Mul`` node by a constant vector is inserted on the edge into the MatMul or Attention only.

:func:`activation_ranges` measures ``amax_x`` (runs onnxruntime); :func:`smooth` is pure
(a ``ModelProto`` and the ranges in, a new ``ModelProto`` out).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

KINDS = ("attn_in", "attn_out", "ffn_up", "ffn_down")
_SCALE_CLIP = (1e-2, 1e2)


def node_kind(node: Any) -> str | None:
    """Which of ``KINDS`` a node of the fused BERT graph is, or None (not a smoothing target)."""
    if node.op_type == "Attention":
        return "attn_in"
    if node.op_type != "MatMul":
        return None
    for part, kind in (
        ("/attention/output/", "attn_out"),
        ("/intermediate/", "ffn_up"),
        ("/output/dense/", "ffn_down"),
    ):
        if part in node.name:
            return kind
    return None


def _targets(model: Any, kinds: Iterable[str], nodes: Iterable[str] = ()) -> list[Any]:
    inits = {i.name for i in model.graph.initializer}
    wanted, named = set(kinds), set(nodes)
    return [
        n
        for n in model.graph.node
        if node_kind(n) is not None
        and (node_kind(n) in wanted or n.name in named)
        and len(n.input) > 1
        and n.input[1] in inits
    ]


def activation_ranges(
    model: Any, feeds: Iterable[Mapping[str, Any]], *, kinds: Iterable[str] = KINDS
) -> dict[str, Any]:
    """Per-channel max |x| of each target's input tensor over ``feeds`` (one onnxruntime session)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    probe = copy.deepcopy(model)
    names = sorted({n.input[0] for n in _targets(model, kinds)})
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    amax: dict[str, Any] = {}
    for feed in feeds:
        for name, value in zip(names, sess.run(names, dict(feed)), strict=False):
            row = np.abs(value).reshape(-1, value.shape[-1]).max(0)
            amax[name] = np.maximum(amax[name], row) if name in amax else row
    if not amax:
        raise ValueError("activation_ranges: no calibration feeds, or no smoothing target in the graph")
    return amax


def smooth(
    model: Any, amax: Mapping[str, Any], *, alpha: float, kinds: Iterable[str] = (), nodes: Iterable[str] = ()
) -> Any:
    """A copy of ``model`` with the inputs of every target of ``kinds``, and of the targets named
    in ``nodes``, smoothed (fp32 output unchanged)."""
    import numpy as np
    from onnx import helper, numpy_helper

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), not {alpha!r}")
    kinds, nodes = tuple(kinds), tuple(nodes)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown smoothing kinds {sorted(unknown)}; known: {KINDS}")
    missing = set(nodes) - {n.name for n in _targets(model, KINDS)}
    if missing:
        raise ValueError(f"no smoothing target named {sorted(missing)} in the graph")
    model = copy.deepcopy(model)
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1

    def get(name: str) -> Any:
        return numpy_helper.to_array(inits[name]).astype(np.float32)  # a writable copy

    def put(name: str, value: Any) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    inserts = []
    for node in _targets(model, kinds, nodes):
        x = node.input[0]
        if x not in amax:
            raise ValueError(f"no activation range for {x!r} (input of {node.name})")
        w = get(node.input[1])
        s = np.asarray(amax[x], np.float64).clip(1e-5) ** alpha / np.abs(w).max(1).clip(1e-5) ** (1 - alpha)
        s = s.clip(*_SCALE_CLIP).astype(np.float32)
        src = producer.get(x)
        if node_kind(node) == "attn_out" and src is not None and src.op_type == "Attention" and uses[x] == 1:
            qkv, bias = get(src.input[1]), get(src.input[2])
            v = 2 * qkv.shape[1] // 3  # packed [Q | K | V]; the output's channel k is V's channel k
            qkv[:, v:] /= s
            bias[v:] /= s
            put(src.input[1], qkv)
            put(src.input[2], bias)
        else:
            base = (node.name or node.output[0]).strip("/").replace("/", "_") + "_smooth"
            model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), base + "_scale"))
            inserts.append((node, helper.make_node("Mul", [x, base + "_scale"], [base + "_out"], name=base)))
            node.input[0] = base + "_out"
        put(node.input[1], w * s[:, None])
    for node, mul in inserts:  # keep the node list topologically sorted
        model.graph.node.insert(list(model.graph.node).index(node), mul)
    return model
