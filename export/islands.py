"""FP32 islands: the one rule saying which nodes of an exported detector stay FP32 in a reduced-precision graph.

Both precision graphs read it: the FP16 conversion blocks these nodes from conversion (``edgead.export.fp16``)
and the INT8 Q/DQ check refuses a graph that quantizes them or feeds them quantized values
(``edgead.export.qdq_check``). TensorRT builds those graphs strongly typed, so what is FP32 in the ONNX is FP32
in the engine: no per-layer pinning happens in TensorRT any more.

The islands are where reduced precision hurts an anomaly detector:
- norm statistics (``LayerNormalization``, ``ReduceMean``): a mean/variance over hundreds of features;
- softmax: FP16 ``exp`` overflows and flattens small probabilities;
- L2/cosine normalisation and distances: a sum of squares exceeds FP16's 65504 or loses the small feature
  differences that are the anomaly signal (the reductions, roots and powers, the products being reduced, the
  eps clamp, the division by the norm, ``1 - cos``);
- the postprocessing (``/post/`` nodes: per-patch distance, upsampling, smoothing, the TopK image score).

Q/DQ nodes are looked through. Pure Python over the ONNX graph: no onnxruntime, no tensorrt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import onnx

POST_PREFIX = "/post/"  # the exporter names every postprocessing node under the ``post`` module


@dataclass(frozen=True)
class Fp32Node:
    name: str
    op_type: str
    outputs: tuple[str, ...]
    reason: str


_NORM = ("L2/cosine normalisation: a sum of squares over hundreds of ViT features exceeds FP16's 65504 or "
         "loses the small differences that make the anomaly signal")
_STATS = "norm statistics: mean and variance over hundreds of features lose precision in FP16"
#: ops that are an island wherever they appear
ISLAND_OPS = {
    "ReduceSum": _NORM, "ReduceSumSquare": _NORM, "ReduceL2": _NORM, "LpNormalization": _NORM,
    "Sqrt": _NORM, "Pow": _NORM,
    "TopK": "image score: FP16 rounding turns near-equal map pixels into ties and changes which k are kept",
    "LayerNormalization": _STATS, "ReduceMean": _STATS,
    "Softmax": "softmax: FP16 exp overflows and flattens small probabilities",
}
_POST = "postprocessing (distance, upsampling, smoothing, image score) runs in FP32"
#: element-wise ops that take part in an island's computation (the product being reduced, the eps clamp,
#: the division by the norm, 1 - cos)
ELEMENTWISE = {"Mul", "Sub", "Add", "Div", "Abs", "Neg", "Reciprocal", "Clip", "Max", "Min"}
_REDUCTIONS = {"ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMean"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_SEEDS_THAT_SPREAD = {"ReduceSum", "ReduceSumSquare", "ReduceL2", "LpNormalization", "Sqrt", "Pow", "TopK"}
#: how many element-wise hops after a normalisation/distance op stay FP32 (the norm division, 1 - cos, ...)
FOLLOW_HOPS = 3


def fp32_islands(model: onnx.ModelProto | onnx.GraphProto) -> list[Fp32Node]:
    """Nodes that must stay FP32 under FP16/INT8, in graph order, each with the reason (see module doc)."""
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    nodes = [n for n in graph.node if n.op_type not in _QDQ]
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def producers_of(n: onnx.NodeProto) -> Iterable[onnx.NodeProto]:
        for i in n.input:
            p = producer.get(i)
            while p is not None and p.op_type in _QDQ:
                p = producer.get(p.input[0])
            if p is not None:
                yield p

    def consumers_of(n: onnx.NodeProto) -> Iterable[onnx.NodeProto]:
        todo = list(n.output)
        while todo:
            for c in consumers.get(todo.pop(), []):
                if c.op_type in _QDQ:
                    todo.extend(c.output)
                else:
                    yield c

    reasons: dict[str, str] = {}
    for n in nodes:
        if n.op_type in ISLAND_OPS:
            reasons[n.name] = ISLAND_OPS[n.op_type]
        elif n.name.startswith(POST_PREFIX):
            reasons[n.name] = _POST
    seeds = [n for n in nodes if n.op_type in _SEEDS_THAT_SPREAD]
    for n in seeds:  # what a normalisation/distance reduction reduces
        if n.op_type in _REDUCTIONS:
            for p in producers_of(n):
                if p.op_type in ELEMENTWISE and p.name not in reasons:
                    reasons[p.name] = f"computes what {n.name} ({n.op_type}) reduces"
    queue = deque((n, 0) for n in seeds)
    while queue:  # what such a result flows into, a few element-wise hops
        n, hops = queue.popleft()
        if hops >= FOLLOW_HOPS:
            continue
        for c in consumers_of(n):
            if c.op_type in ELEMENTWISE and c.name not in reasons:
                reasons[c.name] = f"uses the result of {n.name} ({n.op_type}) in FP32"
                queue.append((c, hops + 1))
    return [Fp32Node(n.name, n.op_type, tuple(n.output), reasons[n.name]) for n in nodes if n.name in reasons]
