"""What TensorRT's ONNX parser accepts in an explicit-quantization (Q/DQ) graph, checked on the CPU.

TensorRT quantizes symmetrically to signed INT8 and builds Q/DQ graphs strongly typed, so the calibrated
ONNX must already be what the engine will run:
- the default-domain opset is at least 13 (per-axis ``QuantizeLinear``/``DequantizeLinear``);
- every zero point is a constant int8 zero;
- activations are quantized per tensor (a scalar scale);
- weights are quantized per tensor or per output channel: axis N of a MatMul's ``[K, N]`` weights (the last
  axis), axis 0 of a Gemm's weights with ``transB=1`` (else 1), axis 0 of a Conv's weights;
- the FP32 islands (``edgead.export.islands``) are not quantized and read no dequantized tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgead.errors import ArtifactError
from edgead.export.islands import fp32_islands

MIN_OPSET = 13
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    consts = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    return consts


def _weight_axis(consumer: onnx.NodeProto, rank: int) -> int | None:
    """The output-channel axis TensorRT expects for per-channel weights of ``consumer``, None if unknown."""
    if consumer.op_type == "MatMul":
        return rank - 1
    if consumer.op_type == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if consumer.op_type in ("Conv", "ConvTranspose"):
        return 0 if consumer.op_type == "Conv" else 1
    return None


def qdq_problems(model: onnx.ModelProto) -> list[str]:
    """Everything in ``model`` TensorRT would reject or that breaks the FP32 islands (empty when fine)."""
    graph = model.graph
    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET} (per-channel Q/DQ needs opset 13)")
    consts = _constants(model)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def is_weight(name: str) -> bool:  # a constant, or the Q of a constant
        if name in consts:
            return True
        p = producer.get(name)
        return p is not None and p.op_type == "QuantizeLinear" and p.input[0] in consts

    for n in graph.node:
        if n.op_type not in _QDQ:
            continue
        if len(n.input) >= 3 and n.input[2]:
            zp = consts.get(n.input[2])
            if zp is None:
                problems.append(f"{n.name}: zero point is computed, not a constant")
            else:
                arr = numpy_helper.to_array(zp)
                if arr.dtype != np.int8 or np.any(arr != 0):
                    problems.append(f"{n.name}: {arr.dtype} zero point {arr.ravel()[:3].tolist()} (TensorRT "
                                    f"needs symmetric signed INT8, zero point 0)")
        scale = consts.get(n.input[1])
        if scale is None:
            problems.append(f"{n.name}: scale is computed, not a constant")
            continue
        per_channel = numpy_helper.to_array(scale).size > 1
        if not per_channel:
            continue
        if n.op_type == "QuantizeLinear" or not is_weight(n.input[0]):
            if not is_weight(n.input[0]):
                problems.append(f"{n.name}: activations must be quantized per tensor, found a per-channel scale")
            continue
        weight = consts.get(n.input[0]) or consts.get(producer[n.input[0]].input[0])
        rank = len(weight.dims)
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        axis = axis + rank if axis < 0 else axis
        for c in consumers.get(n.output[0], []):
            want = _weight_axis(c, rank)
            if want is not None and axis != want:
                problems.append(f"{n.name}: per-channel axis {axis} of the weights of {c.name} ({c.op_type}), "
                                f"TensorRT expects the output-channel axis {want}")
    for island in fp32_islands(model):
        node = next(m for m in graph.node if m.name == island.name)
        fed = [i for i in node.input if getattr(producer.get(i), "op_type", "") == "DequantizeLinear"]
        if fed:
            problems.append(f"{island.name} ({island.op_type}) is an FP32 island but reads the dequantized "
                            f"tensor {fed[0]}")
    return problems


def restore_island_inputs(model: onnx.ModelProto) -> int:
    """Let every FP32 island read the float tensor a Q/DQ pair was made from, not its dequantized copy.

    A quantizer puts one Q/DQ pair on a tensor and hands the dequantized copy to every consumer, so an island
    that shares its input with a quantized MatMul (the features an L2 normalisation reads, the attention
    logits a softmax reads) computes on INT8-rounded values. Rewired in place; Q/DQ pairs left without a
    consumer are removed. Returns the number of inputs rewired.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    islands = {i.name for i in fp32_islands(model)}
    rewired = 0
    for n in graph.node:
        if n.name not in islands:
            continue
        for k, name in enumerate(n.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            n.input[k] = q.input[0]
            rewired += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for _ in range(2):  # the DQ first, then the Q it read
        dead = [n for n in graph.node if n.op_type in _QDQ and not any(o in used for o in n.output)]
        for n in dead:
            graph.node.remove(n)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    return rewired


def check_qdq_for_tensorrt(model: onnx.ModelProto, where: str | Path = "Q/DQ model") -> int:
    """Number of QuantizeLinear nodes; raise ``ArtifactError`` when there are none or when TensorRT would
    reject the graph (see the module docstring for the rules)."""
    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        raise ArtifactError(f"{where} has no QuantizeLinear nodes; it is not a calibrated Q/DQ model")
    problems = qdq_problems(model)
    if problems:
        raise ArtifactError(
            f"{where} is not what TensorRT builds: {len(problems)} problems, e.g. {'; '.join(problems[:3])}; "
            f"requantize symmetrically (QInt8 activations and weights, per-channel weights)"
        )
    return sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
