"""Where the time goes: a per-operation profile of one artifact, grouped into the parts of a detector.

``python -m edgead.bench.profile ARTIFACT [--engine openvino|onnxruntime] [--batch 1] [--iters 20] [--json F]
[--precision-hint bf16] [--static-batch 8] [--mode throughput] [--threads N]``
runs the artifact through its engine's runner with the engine's own profiler on (``Runner.profile_runs``: OpenVINO
performance counters; ONNX Runtime's profiling trace), with the runner options the timing harnesses pass
(``precision_hint``, ``static_batch``, ``mode``: the same compiled model they time), and sums the measured time of
every executed node into groups read from the exported graph's node names (``/backbone/blocks.3/attn/...``,
``/post/TopK``) and the node types:

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
how far the products themselves are from the peak. Times are medians over ``iters`` inferences. OpenVINO's CPU
counters are running averages since compilation (``decumulate`` turns them back into each run's time; until
session 7 this module took medians of the running averages, which kept the first, slowest call in every figure).

A foreign OpenVINO IR (``ARTIFACT`` a ``model.xml`` with no edgead manifest beside it, e.g. anomalib's export) is
compiled as it is, its input reshaped to ``--batch`` x 3 x ``--size`` x ``--size`` when dynamic, with the
precision hint asked for (``--precision-hint``; OpenVINO's own default when none) and fed random [0, 1] floats.
Its node names are not edgead's, so its nodes are grouped by type and by position (``group_nodes(...,
positional=True)``): before the first product ``preprocess``, after the last one the head (``distance``,
``upsample``, ``blur`` from the map's blur on, ``score``).
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


def classify_positional(op: str, exec_type: str, where: str, name: str = "") -> str:
    """The group of a node of a graph whose names are not edgead's, from its type, its kernel and ``where`` it runs:
    ``pre`` (before the first product), ``body``, ``head`` (after the last product), ``post`` (the head from its
    first blur convolution on); a fused non-product node whose name says attention (``node_scaled_dot_product_
    attention_3/...``, ``.../attn/...``) is ``attention``."""
    if op in _QUANTIZE:
        return "quantize"
    if where in ("head", "post"):
        if op in ("Interpolate", "Resize"):
            return "upsample"
        if op in ("Convolution", "GroupConvolution", "Pad"):
            return "blur"
        if op in _LAYOUT and where == "head":
            return "layout"
        return "score" if where == "post" or op in ("TopK", "ReduceMean") else "distance"
    if is_product(op, exec_type):
        return "products"
    if op in ("MVN", "LayerNormalization"):
        return "norm"
    if op in ("Softmax", "ScaledDotProductAttention") or (op in ("Subgraph", "Multiply", "PowerStatic")
                                                          and re.search(r"attention|attn", name.lower())):
        return "attention"
    if op in _ACT:
        return "activation"
    if op in _LAYOUT:
        return "layout"
    if where == "pre":
        return "preprocess"
    return "residual/elementwise" if op in ("Add", "Multiply", "Mul", "MulAdd", "Eltwise", "Subgraph", "PowerStatic") \
        else "other"


def group_nodes(rows: Sequence[tuple[str, str, float] | tuple[str, str, float, str]],
                positional: bool = False) -> list[GroupTime]:
    """Sum ``(name, op, ms[, exec_type])`` rows, in execution order, into the detector's groups; ``positional``: for
    a graph not exported by edgead, by type and position (``classify_positional``) instead of by name."""
    ms: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    seen_backbone = False
    context = ""
    kinds = [(op, kernel[0] if kernel else "") for _, op, _, *kernel in rows]
    products = [i for i, (op, k) in enumerate(kinds) if is_product(op, k)]
    # the head starts after the last matrix product proper (a convolution after it is the map's blur)
    dense = [i for i in products if kinds[i][0] not in ("Convolution", "GroupConvolution")] or products
    first, last = (products[0], dense[-1]) if products else (len(rows), len(rows))
    blur = next((i for i in range(last + 1, len(rows)) if kinds[i][0] in ("Convolution", "GroupConvolution")),
                len(rows))
    for i, (name, op, t, *kernel) in enumerate(rows):
        if positional:
            where = "pre" if i < first else "body" if i <= last else "head" if i < blur else "post"
            g = classify_positional(op, kinds[i][1], where, name)
        else:
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


def runner_options(threads: int | None = None, precision_hint: str | None = None, static_batch: int | None = None,
                   mode: str | None = None) -> dict[str, Any]:
    """The runner options given (``None``: the runner's default), as ``edgead.runtimes.load`` takes them."""
    opts = {"threads": threads, "precision_hint": precision_hint, "static_batch": static_batch, "mode": mode}
    return {k: v for k, v in opts.items() if v is not None}


def _foreign_runs(xml: Path, batch: int, size: int, runs: int, threads: int | None, precision_hint: str | None,
                  mode: str | None) -> tuple[list[list[tuple[str, str, float, str]]], str]:
    """Performance counters of a foreign OpenVINO IR compiled as it is (reshaped to ``batch x 3 x size x size``
    where dynamic), and the inference precision OpenVINO chose."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    shape = model.input(0).get_partial_shape()
    if shape.is_dynamic:
        model.reshape({model.input(0): [batch, 3, size, size]})
    config: dict[str, Any] = {"PERF_COUNT": True}
    if precision_hint:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    if mode:
        config["PERFORMANCE_HINT"] = mode.upper()
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, "CPU", config)
    dims = [d.get_length() for d in compiled.input(0).get_partial_shape()]
    x = np.random.default_rng(0).random(dims, dtype=np.float32)
    from edgead.runtimes.openvino_runner import _product_precisions, _type_name, counter_runs

    out = counter_runs(compiled.create_infer_request(), x, runs)
    return out, _product_precisions(compiled) or _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))


def decumulate(runs: Sequence[Sequence[tuple[str, str, float, str]]]) -> list[list[tuple[str, str, float, str]]]:
    """Per-run node times from OpenVINO's CPU performance counters, which report each node's **average since the
    model was compiled** (run ``n`` reads ``(t_1 + ... + t_n) / n``, the first, slowest call included), not the
    last run's time: ``t_n = n * avg_n - (n - 1) * avg_(n-1)``. ``runs`` must be every run of a freshly compiled
    model, in order. A node missing from a run keeps its count (it was not executed then)."""
    out = []
    prev: dict[tuple[str, str, str], float] = {}
    for n, rows in enumerate(runs, start=1):
        cur = []
        for name, op, avg, kernel in rows:
            key = (name, op, kernel)
            cur.append((name, op, max(0.0, n * avg - (n - 1) * prev.get(key, avg)), kernel))
            prev[key] = avg
        out.append(cur)
    return out


def profile(folder: str | Path, engine: str = "openvino", batch: int = 1, iters: int = 20,
            threads: int | None = None, warmup: int = 3, precision_hint: str | None = None,
            static_batch: int | None = None, mode: str | None = None, size: int = 448) -> dict[str, Any]:
    """Per-group times of the artifact in ``folder`` run by ``engine``'s own profiler (its runner, loaded with
    ``profiling=True`` and the runner options given): medians over ``iters`` runs after ``warmup``. ``folder`` a
    ``.xml`` file with no manifest beside it: a foreign OpenVINO IR (``size``: its input side where dynamic)."""
    import edgead.runtimes as rt
    from edgead import registry
    from edgead.bench.machine import machine_info
    from edgead.errors import InputError

    folder = Path(folder)
    options = runner_options(threads, precision_hint, static_batch, mode)
    if folder.suffix == ".xml" and not (folder.parent / "manifest.json").exists():
        runs, hint = _foreign_runs(folder, batch, size, warmup + iters, threads, precision_hint, mode)
        groups = group_nodes(node_medians(decumulate(runs)[warmup:]), positional=True)
        engine_name, executed = OPENVINO.name, hint
    else:
        eng = registry.find(engine)
        if eng is None or not eng.profiler:
            names = " or ".join(e.name for e in registry.ENGINES.values() if e.profiler)
            raise InputError(f"expected --engine {names} for a per-op profile, found '{engine}'")
        runner = rt.load(folder, eng.name, profiling=True, **options)
        try:
            runs = runner.profile_runs(_images(runner.spec, batch), warmup + iters)
            executed = runner.executed_precision()
            runs = (decumulate(runs) if eng.name == OPENVINO.name else runs)[warmup:]
        finally:
            runner.close()
        groups = group_nodes(node_medians(runs))
        engine_name = eng.name
    return {"artifact": str(folder), "engine": engine_name, "batch": batch, "iters": iters, "options": options,
            "executes": executed, "total_ms": sum(g.ms for g in groups), "groups": [asdict(g) for g in groups],
            "machine": machine_info()}


def render(doc: dict[str, Any]) -> Any:
    from rich.table import Table

    flags = ", ".join(f for f, on in doc["machine"]["flags"].items() if on)
    opts = "".join(f", {k}={v}" for k, v in doc.get("options", {}).items())
    batch = doc["batch"]
    t = Table(title=f"{doc['engine']} per-op profile, batch {batch}{opts}, executes {doc.get('executes', '?')}: "
                    f"{doc['total_ms']:.1f} ms in nodes ({doc['total_ms'] / batch:.1f} ms/image; "
                    f"{doc['machine']['cores']} cores; {flags})", title_justify="left")
    for c in ("group", "ms", "ms/image", "share", "nodes"):
        t.add_column(c, justify="left" if c == "group" else "right")
    for g in doc["groups"]:
        t.add_row(g["group"], f"{g['ms']:.2f}", f"{g['ms'] / batch:.2f}", f"{100 * g['share']:.1f} %",
                  str(g["nodes"]))
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--engine", default=OPENVINO.name)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision-hint", default=None, help="OpenVINO INFERENCE_PRECISION_HINT (bf16, f32); "
                    "default: the artifact's own")
    ap.add_argument("--static-batch", type=int, default=None, help="fix the batch axis at compile time")
    ap.add_argument("--mode", choices=("latency", "throughput"), default=None)
    ap.add_argument("--size", type=int, default=448, help="input side of a foreign IR with a dynamic size")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from edgead.term import make_console

    doc = profile(a.artifact, a.engine, a.batch, a.iters, a.threads, precision_hint=a.precision_hint,
                  static_batch=a.static_batch, mode=a.mode, size=a.size)
    make_console().print(render(doc))
    if a.json:
        a.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
