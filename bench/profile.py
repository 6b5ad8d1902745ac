"""Where the time goes: a per-operation profile of one artifact, grouped into the parts of a detector.

``python -m edgead.bench.profile ARTIFACT [--engine openvino|onnxruntime] [--batch 1] [--iters 20] [--json F]``
runs the artifact through its engine's runner with the engine's own profiler on (``Runner.profile_runs``: OpenVINO
performance counters; ONNX Runtime's profiling trace),
and sums the measured time of every executed node into groups read from the exported graph's node names
(``/backbone/blocks.3/attn/...``, ``/post/TopK``) and the node types:

- ``products``: every matrix product, whatever kernel OpenVINO or ONNX Runtime picked for it: ``MatMul``,
  ``FullyConnected`` (oneDNN brgemm, MLAS ``gemm_mlas``, 1x1 ``brgconv``), the int8 ``FullyConnectedQuantizedLegacy``
  (``brgemm_avx512_i8``, AMX), ``MatMulInteger``/``QLinearMatMul``, and the patch-embedding convolution: what the
  roofline peak measures;
- ``attention``: softmax and the attention's own fused subgraphs;
- ``norm``: LayerNorm (OpenVINO's MVN) or DyT's elementwise chain (multiply, tanh, multiply, add);
- ``activation``, ``residual/elementwise``, ``layout`` (reorders, transposes, reshapes, concatenations);
- ``quantize``: FakeQuantize, Q/DQ and NNCF's smooth-quant scales;
- ``preprocess`` (cast, scale, mean/std, NHWC->NCHW), ``distance`` (the head's cosine/L2 maps),
  ``upsample``, ``blur``, ``score`` (TopK and mean) from the ``post`` module.

A node is grouped by its layer type and, for OpenVINO, its exec type (the kernel: ``brgemm_avx512_i8``,
``gemm_mlas_f32``, ``brgconv_avx512_1x1_f32`` ...), so a product kind added by a new plugin version still counts as
a product when its kernel is a GEMM. The per-group shares say what is left beyond the matrix products; the
products' share times the roofline share says
how far the products themselves are from the peak. Times are medians over ``iters`` inferences.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgead.registry import OPENVINO

GROUPS = ("products", "attention", "norm", "activation", "residual/elementwise", "layout", "quantize", "preprocess",
          "distance", "upsample", "blur", "score", "other")
_LAYOUT = {"Reorder", "Transpose", "Reshape", "Concat", "Split", "VariadicSplit", "Squeeze", "Unsqueeze", "Gather",
           "ShapeOf", "Broadcast", "Slice", "StridedSlice", "Flatten", "Shape", "Expand", "Pad", "Select", "Where",
           "Cast", "Convert", "Constant", "Equal"}
_PRODUCTS = {"MatMul", "FullyConnected", "FullyConnectedQuantized", "FullyConnectedQuantizedLegacy", "Gemm",
             "Convolution", "Conv", "MatMulInteger", "QLinearMatMul", "QLinearConv", "ConvInteger", "FusedMatMul",
             "FusedConv", "BrgemmCPU", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits"}
#: exec types (kernels) of OpenVINO's CPU plugin that compute a product: oneDNN brgemm / brgconv (1x1 or not) /
#: jit or ref gemm, MLAS, AMX tiles
_PRODUCT_KERNEL = re.compile(r"brgemm|brgconv|gemm|mlas|amx|_1x1")
#: nodes whose kernel name mentions a GEMM but which are not products themselves
_NOT_PRODUCTS = {"Reorder", "Subgraph", "Transpose", "Softmax"}
_QUANTIZE = {"FakeQuantize", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_ACT = {"Gelu", "Erf", "Elu", "Relu", "Tanh", "Sigmoid", "Swish", "BiasGelu", "FastGelu"}


@dataclass(frozen=True)
class GroupTime:
    group: str
    ms: float
    share: float
    nodes: int


def is_product(op: str, exec_type: str = "") -> bool:
    """Whether a node with layer type ``op`` run by kernel ``exec_type`` is a matrix product."""
    if op in _PRODUCTS or op.startswith(("FullyConnected", "MatMul")):
        return True
    return bool(exec_type) and op not in _NOT_PRODUCTS and bool(_PRODUCT_KERNEL.search(exec_type.lower()))


def classify(name: str, op: str, before_backbone: bool, exec_type: str = "", context: str = "") -> str:
    """The detector part a node belongs to, from its (exported) name, its op (layer) type and, for OpenVINO, the
    kernel that ran it. ``context``: the exported name of the node before it, for nodes the engine named itself."""
    if "nncf" in name.lower() or op in _QUANTIZE:  # FakeQuantize, Q/DQ, NNCF's smooth-quant scales
        return "quantize"
    n = (context or name).lower()
    if "/post/" in n:
        if op in ("Interpolate", "Resize"):
            return "upsample"
        if op in ("Convolution", "Conv", "Pad", "GroupConvolution"):
            return "blur"
        return "score"
    if is_product(op, exec_type):
        return "products"
    if re.search(r"/norm\d*/|/norm$|/norm/|layernorm|dyt", n) or op in ("MVN", "LayerNormalization"):
        return "norm"
    if op == "Softmax" or ("/attn/" in n and op in ("Subgraph", "PowerStatic", "Multiply", "Mul")):
        return "attention"
    if op in _ACT:
        return "activation"
    if op in _LAYOUT:
        return "layout"
    if not n.startswith("/backbone") and "student" not in n and "decoder" not in n and "bottleneck" not in n:
        return "preprocess" if before_backbone else "distance"
    return "residual/elementwise" if op in ("Add", "Multiply", "Mul", "MulAdd", "Eltwise", "Subgraph", "PowerStatic") \
        else "other"


def group_nodes(rows: Sequence[tuple[str, str, float] | tuple[str, str, float, str]]) -> list[GroupTime]:
    """Sum ``(name, op, ms[, exec_type])`` rows, in execution order, into the detector's groups."""
    ms: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    seen_backbone = False
    context = ""
    for name, op, t, *kernel in rows:
        seen_backbone = seen_backbone or name.startswith("/backbone")
        # a node the plugin made and named itself (``Multiply_8517``) belongs where the last exported node was
        context = name if name.startswith("/") or name in ("scores", "maps") or not context else context
        g = classify(name, op, not seen_backbone, kernel[0] if kernel else "", context)
        ms[g] += t
        count[g] += 1
    total = sum(ms.values()) or 1.0
    return [GroupTime(g, ms[g], ms[g] / total, count[g]) for g in GROUPS if g in ms]


def _images(spec: Any, batch: int) -> np.ndarray:
    h, w = spec.input_size
    return np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)


def node_medians(runs: Sequence[Sequence[tuple[str, str, float, str]]]) -> list[tuple[str, str, float, str]]:
    """Each node's median time over ``runs`` (``Runner.profile_runs``), in the order nodes first executed."""
    per_node: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    order: list[tuple[str, str, str]] = []
    for rows in runs:
        for name, op, ms, kernel in rows:
            key = (name, op, kernel)
            if key not in per_node:
                order.append(key)
            per_node[key].append(ms)
    return [(k[0], k[1], statistics.median(per_node[k]), k[2]) for k in order]


def profile(folder: str | Path, engine: str = "openvino", batch: int = 1, iters: int = 20,
            threads: int | None = None, warmup: int = 3) -> dict[str, Any]:
    """Per-group times of the artifact in ``folder`` run by ``engine``'s own profiler (its runner, loaded with
    ``profiling=True``): medians over ``iters`` runs after ``warmup``."""
    import edgead.runtimes as rt
    from edgead import registry
    from edgead.bench.machine import machine_info
    from edgead.errors import InputError

    eng = registry.find(engine)
    if eng is None or not eng.profiler:
        names = " or ".join(e.name for e in registry.ENGINES.values() if e.profiler)
        raise InputError(f"expected --engine {names} for a per-op profile, found '{engine}'")
    runner = rt.load(folder, eng.name, profiling=True, threads=threads)
    try:
        runs = runner.profile_runs(_images(runner.spec, batch), warmup + iters)[warmup:]
    finally:
        runner.close()
    groups = group_nodes(node_medians(runs))
    return {"artifact": str(folder), "engine": eng.name, "batch": batch, "iters": iters,
            "total_ms": sum(g.ms for g in groups), "groups": [asdict(g) for g in groups], "machine": machine_info()}


def render(doc: dict[str, Any]) -> Any:
    from rich.table import Table

    flags = ", ".join(f for f, on in doc["machine"]["flags"].items() if on)
    t = Table(title=f"{doc['engine']} per-op profile, batch {doc['batch']}: {doc['total_ms']:.1f} ms in nodes "
                    f"({doc['machine']['cores']} cores; {flags})", title_justify="left")
    for c in ("group", "ms", "share", "nodes"):
        t.add_column(c, justify="left" if c == "group" else "right")
    for g in doc["groups"]:
        t.add_row(g["group"], f"{g['ms']:.2f}", f"{100 * g['share']:.1f} %", str(g["nodes"]))
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--engine", default=OPENVINO.name)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from edgead.term import make_console

    doc = profile(a.artifact, a.engine, a.batch, a.iters, a.threads)
    make_console().print(render(doc))
    if a.json:
        a.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
