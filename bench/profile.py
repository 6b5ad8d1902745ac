"""Where the time goes: a per-operation profile of one artifact, grouped into the parts of a detector.

``python -m edgead.bench.profile ARTIFACT [--engine openvino|onnxruntime] [--batch 1] [--iters 20] [--json F]``
runs the artifact with the engine's own profiler (OpenVINO performance counters; ONNX Runtime's profiling trace),
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
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def profile_openvino(folder: Path, batch: int, iters: int, threads: int | None) -> list[GroupTime]:
    import openvino as ov

    from edgead.runtimes.manifest import read_manifest

    m = read_manifest(folder)
    core = ov.Core()
    cfg: dict[str, Any] = {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY",
                           "INFERENCE_PRECISION_HINT": m.extra.get("inference_precision", "f32")}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(folder / m.model)), "CPU", cfg)
    req = compiled.create_infer_request()
    x = _images(m.spec, batch)
    for _ in range(3):
        req.infer({0: x})
    per_node: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    order: list[tuple[str, str, str]] = []
    for _ in range(iters):
        req.infer({0: x})
        for p in req.profiling_info:
            if str(p.status).endswith("EXECUTED") and not str(p.status).endswith("NOT_EXECUTED"):
                key = (p.node_name, p.node_type, p.exec_type)
                if key not in per_node:
                    order.append(key)
                per_node[key].append(p.real_time.total_seconds() * 1e3)
    return group_nodes([(k[0], k[1], statistics.median(per_node[k]), k[2]) for k in order])


def profile_onnxruntime(folder: Path, batch: int, iters: int, threads: int | None) -> list[GroupTime]:
    import onnxruntime as ort

    from edgead.runtimes.manifest import read_manifest

    m = read_manifest(folder)
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="edgead-ortprof-")) / "ort")
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(folder / m.model), opts, providers=["CPUExecutionProvider"])
    x = _images(m.spec, batch)
    name = sess.get_inputs()[0].name
    for _ in range(3 + iters):
        sess.run(None, {name: x})
    trace = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[tuple[str, str], list[float]] = defaultdict(list)
    order: list[tuple[str, str]] = []
    runs = 0
    for ev in trace:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs += 1
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time") or runs <= 3:
            continue
        key = (ev["name"][: -len("_kernel_time")], ev.get("args", {}).get("op_name", ""))
        if key not in per_node:
            order.append(key)
        per_node[key].append(ev["dur"] / 1e3)
    return group_nodes([(k[0], k[1], statistics.median(per_node[k])) for k in order])


def profile(folder: str | Path, engine: str = "openvino", batch: int = 1, iters: int = 20,
            threads: int | None = None) -> dict[str, Any]:
    from edgead.bench.machine import machine_info

    fn = {"openvino": profile_openvino, "onnxruntime": profile_onnxruntime}.get(engine)
    if fn is None:
        from edgead.errors import InputError

        raise InputError(f"expected --engine openvino or onnxruntime for a per-op profile, found '{engine}'")
    groups = fn(Path(folder), batch, iters, threads)
    return {"artifact": str(folder), "engine": engine, "batch": batch, "iters": iters,
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
    ap.add_argument("--engine", default="openvino")
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
