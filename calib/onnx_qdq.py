"""INT8 Q/DQ ONNX: static post-training quantisation with ONNX Runtime, calibrated on run-time-prepared images.

The result runs in ONNX Runtime and is the input TensorRT builds explicit INT8 engines from, so quantisation is
symmetric (zero point 0, as TensorRT requires), per-channel for weights, and limited to the matrix products
(MatMul/Gemm) that carry the compute. The in-graph postprocessing stays float.

Accuracy-aware mode (an ``AccuracyTarget``, ``--max-drop``): when the fully quantised graph misses the budget,
each quantised layer is ranked by sensitivity — the graph is measured with that one layer back in float
(``float_island``: its inputs read the float tensors instead of the dequantised ones, its weight the original
float initializer) — and the most sensitive layers are put back in float, fewest first (doubling, then a
bisection), until the budget holds. The chosen layers are written into the manifest as
``extra.quantization.float_layers`` (a plain list of ONNX node names; TensorRT keeps them as FP32 islands).
``max_float_layers`` caps how many may go back to float (each costs speed); past it the build is refused.
"""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgead.calib import always_float
from edgead.calib.dataset import CalibrationSet
from edgead.calib.search import Search, fewest_float_layers
from edgead.calib.validation import AccuracyTarget
from edgead.errors import EdgeadError, require
from edgead.export.qdq_check import restore_island_inputs
from edgead.fidelity import Fidelity
from edgead.fsutil import atomic_dir
from edgead.registry import INPUT, ONNX, artifact_folder
from edgead.runtimes.manifest import read_manifest, write_manifest

MODEL = "model.onnx"
METHODS = ("minmax", "percentile", "entropy")
QUANTIZED_OPS = ("MatMul", "Gemm")
#: ONNX Runtime's quantiser options; ``quantize_static`` hands the ``Calib*`` ones to its calibrator as
#: ``_CALIB_OPTIONS`` renames them, and so does ``_calibration_ranges``
EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": 99.999,
                 "CalibTensorRangeSymmetric": True}
_CALIB_OPTIONS = {"CalibTensorRangeSymmetric": "symmetric", "CalibPercentile": "percentile"}


def _post_nodes(model: onnx.ModelProto, family: str = "") -> list[str]:
    """Nodes left in float whatever the budget: the postprocessing, and a density family's head."""
    patterns = [re.compile(p) for p in always_float(family)]
    return [n.name for n in model.graph.node if any(p.match(n.name) for p in patterns)]


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul/Gemm nodes that read at least one dequantised input, in graph order."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS
            and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)]


def still_quantised(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes (other than Q/DQ themselves) that read a dequantised tensor, in graph order."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dq for i in n.input)]


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis] = scale.size
    zp = 0 if zero is None else zero.astype(np.float32).reshape(shape)
    return ((q.astype(np.float32) - zp) * scale.astype(np.float32).reshape(shape)).astype(np.float32)


#: ops ONNX Runtime's Q/DQ quantiser carries quantised data through (same scale in and out)
PASSTHROUGH = ("Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten", "Slice", "Split", "Gather", "Concat",
               "Expand", "MaxPool", "Resize")


def float_island(qmodel: onnx.ModelProto, layers: list[str], float_weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``qmodel`` in which each node of ``layers`` reads float inputs (no Q/DQ), unused nodes pruned.

    An activation input is traced back through Q/DQ pairs and through the data-movement ops the quantiser
    carries quantised data through (a float copy of each is added) to the float tensor; a weight goes back to
    its original float initializer from ``float_weights`` (``<name>`` for ``<name>_quantized``), else to its
    dequantised values. The layer's output stays as it was: the next layer decides its own precision.
    """
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    memo: dict[str, str] = {}
    added: list[onnx.NodeProto] = []

    def weight(dq: onnx.NodeProto) -> str:
        src = dq.input[0]
        base = src.removesuffix("_quantized")
        new = base if base in float_weights else f"{src}_float"
        if new not in inits:
            if base in float_weights:
                arr = float_weights[base]
            else:
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else None
                arr = _dequantize(numpy_helper.to_array(inits[src]), numpy_helper.to_array(inits[dq.input[1]]),
                                  zero, axis)
            inits[new] = numpy_helper.from_array(arr, new)
            g.initializer.append(inits[new])
        return new

    def float_source(name: str) -> str:
        if name in memo:
            return memo[name]
        p = producer.get(name)
        out = name
        if p is not None and p.op_type == "DequantizeLinear":
            src = p.input[0]
            if src in inits:
                out = weight(p)
            elif src in producer and producer[src].op_type == "QuantizeLinear":
                out = float_source(producer[src].input[0])
        elif p is not None and p.op_type in PASSTHROUGH:
            ins = [float_source(i) if i else i for i in p.input]
            if ins != list(p.input):
                copy = onnx.NodeProto()
                copy.CopyFrom(p)
                copy.name = f"{p.name}_float"
                del copy.input[:]
                copy.input.extend(ins)
                del copy.output[:]
                copy.output.extend(f"{o}_float" for o in p.output)
                added.append(copy)
                for o in p.output:
                    memo[o] = f"{o}_float"
                out = f"{name}_float"
        memo[name] = out
        return out

    wanted = set(layers)
    still_int8 = set(quantized_layers(qmodel)) - wanted
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for node in g.node:
        if node.name in wanted:
            for k, name in enumerate(node.input):
                node.input[k] = float_source(name)
    # every other reader of a quantised activation (residual adds, the head's distance, data movement) reads the
    # float tensor: only the INT8 layers' inputs carry Q/DQ
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits]:
        for reader in consumers.get(dq.output[0], []):
            if reader.name not in still_int8 and reader.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                reader.input[:] = [float_source(i) if i == dq.output[0] else i for i in reader.input]
    # a float copy must come before its readers: put each right after the node it copies
    for copy in added:
        idx = next(i for i, n in enumerate(g.node) if n.name == copy.name.removesuffix("_float"))
        g.node.insert(idx + 1, copy)
    _prune(m)
    return m


def _prune(m: onnx.ModelProto) -> None:
    """Drop nodes none of whose outputs are used, then initializers nothing reads."""
    g = m.graph
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def _session(model: onnx.ModelProto, optimize: bool = True) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """An in-memory model as a function of one batch; ``optimize=False`` runs Q/DQ as written (half the session
    set-up time)."""
    ort = require("onnxruntime", "onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]

    def infer(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, mp = sess.run(outs, {name: images})
        return np.asarray(s, np.float32).reshape(-1), np.asarray(mp, np.float32)

    return infer


def _run(model: onnx.ModelProto, images: np.ndarray, batch: int = 8, optimize: bool = True
         ) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of an in-memory model on ``images``, ``batch`` at a time (see ``_session``)."""
    infer = _session(model, optimize)
    parts = [infer(images[i : i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate([s for s, _ in parts]), np.concatenate([m for _, m in parts])


def search_float_layers(qmodel: onnx.ModelProto, float_weights: dict[str, np.ndarray], target: AccuracyTarget,
                        progress: Any = None, max_float: int | None = None) -> Search:
    """Fewest layers of ``qmodel`` to keep in float for ``target``'s budget (``edgead.calib.search``)."""

    def measure(layers: list[str], quick: bool = False) -> Fidelity:
        # images 8 at a time, or a tiled set's frames cut, run and stitched (``ValidationSet.run``)
        infer = _session(float_island(qmodel, layers, float_weights), optimize=not quick)
        return target.measure_infer(infer, f"Q/DQ with {len(layers)} float layers", "int8")

    layers = quantized_layers(qmodel)
    return fewest_float_layers(layers, measure, target.budget, "Q/DQ INT8", progress, max_float,
                               still_quantised(float_island(qmodel, layers, float_weights)))


def _histograms(outputs: Callable[[], Iterator[dict[str, np.ndarray]]], collector: Any) -> dict[str, tuple]:
    """The histograms ONNX Runtime's ``HistogramCollector.collect`` builds from every image's outputs at once (its
    ``histogram_dict``, for ``collector``'s method and options), built with one image's outputs in memory at a time.

    ``outputs()`` yields each image's ``{tensor: values}``; it is read twice. The first pass finds each tensor's
    range over all images (ORT's bins span the range of all the values it is given), the second histograms each
    image on those bins and adds the counts up. ``np.histogram`` places each value by itself once the edges are
    fixed, so the sums are ORT's counts exactly (same edges, same minimum and maximum), not an approximation.
    The percentile method with a symmetric range histograms ``|x|`` from its smallest to its largest value
    (ORT's ``collect_absolute_value``); the others ``x`` on ``[-t, t]``, ``t`` its largest magnitude
    (``collect_value``). (ORT's own way to collect in parts, calling ``collect`` again, merges by extending the
    first part's bins: its thresholds then depend on how the images were split.)
    """
    absolute = collector.method == "percentile" and bool(collector.symmetric)  # as HistogramCollector.collect
    ranges: dict[str, list] = {}  # tensor -> [min, max] (+ [min |x|, max |x|] when absolute)
    empty: dict[str, list[np.ndarray]] = {}
    for outs in outputs():
        for name, a in outs.items():
            if a.size == 0:
                empty.setdefault(name, []).append(a)
                continue
            r = [np.nanmin(a), np.nanmax(a)]
            if absolute:
                m = np.absolute(a)
                r += [m.min(), m.max()]
                del m
            old = ranges.get(name)
            ranges[name] = r if old is None else [f(o, v) for f, o, v in zip((min, max, min, max), old, r,
                                                                                strict=False)]
    hists: dict[str, list] = {}  # tensor -> [counts, edges, dtype]
    for outs in outputs():
        for name, a in outs.items():
            if a.size == 0:
                continue
            lo, hi, *mag = ranges[name]
            if absolute:
                counts, edges = np.histogram(np.absolute(a.ravel()), bins=collector.num_bins, range=(mag[0], mag[1]))
            else:
                t = np.array(max(abs(lo), abs(hi)), dtype=a.dtype)
                counts, edges = np.histogram(a.ravel(), collector.num_bins, range=(-t, t))
            if name in hists:
                hists[name][0] += counts
            else:
                hists[name] = [counts, edges, a.dtype]
    out: dict[str, tuple] = {}
    for name, (lo, hi, *_) in ranges.items():
        counts, edges, dtype = hists[name]
        if absolute:
            out[name] = (counts, edges.astype(dtype), lo, hi)
        else:
            out[name] = (counts, edges, lo, hi, np.array(max(abs(lo), abs(hi)), dtype=dtype))
    if any(k not in ranges for k in empty):  # tensors without a single value: ORT's collector itself, on nothing
        collector.collect({k: v for k, v in empty.items() if k not in ranges})
        out.update({k: collector.histogram_dict[k] for k in empty if k not in ranges})
    return out


def _calibration_ranges(q: Any, pre: Path, data: CalibrationSet, calibrate: Any, work: Path) -> Any:
    """ONNX Runtime's calibration result (``TensorsData``) for ``pre`` on ``data``: the same numbers
    ``quantize_static`` computes, with memory bounded in the number of images.

    ``quantize_static`` calls its calibrator's ``collect_data`` once with every image: the histogram calibrators
    (percentile, entropy) keep every image's intermediate outputs (every MatMul input and output) until the end,
    about 140 MB an image on ViT-S/14 at 224 px (18.5 GB peak for 120 images). Here the same calibrator (same
    augmented model, same options) runs one image at a time and its histograms are built by ``_histograms``;
    min-max keeps only a minimum and a maximum per tensor and image, so its ``collect_data`` is used as is.
    """
    calibrator = q.create_calibrator(
        pre, list(QUANTIZED_OPS), augmented_model_path=str(work / "augmented.onnx"), calibrate_method=calibrate,
        extra_options={key: EXTRA_OPTIONS[name] for name, key in _CALIB_OPTIONS.items() if name in EXTRA_OPTIONS})
    if calibrate == q.CalibrationMethod.MinMax:
        calibrator.collect_data(_Reader(data))
        return calibrator.compute_data()
    from onnxruntime.quantization.calibrate import HistogramCollector

    sess = calibrator.infer_session
    names = [o.name for o in sess.get_outputs()]
    wanted = calibrator.tensors_to_calibrate

    def outputs() -> Iterator[dict[str, np.ndarray]]:
        for b in data.batches(1):
            yield {n: a for n, a in zip(names, sess.run(None, {INPUT: b}), strict=True) if n in wanted}

    collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                   num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                   percentile=calibrator.percentile, scenario=calibrator.scenario)
    collector.histogram_dict = _histograms(outputs, collector)
    calibrator.collector = collector
    return calibrator.compute_data()


class _Reader:
    """ONNX Runtime's calibration data reader over ``data``, one image a call."""

    def __init__(self, data: CalibrationSet) -> None:
        self._it = iter(data.batches(1))

    def get_next(self) -> dict | None:
        b = next(self._it, None)
        return None if b is None else {INPUT: b}


def quantize_qdq(artifact_dir: str | Path, calib: CalibrationSet | str | Path, out: str | Path | None = None,
                 method: str = "percentile", limit: int = 300, target: AccuracyTarget | None = None,
                 max_float_layers: int | None = None) -> Path:
    """The ONNX Runtime int8 artifact folder in ``OUT`` (a calibrated Q/DQ model.onnx and its manifest), made
    from the FP32 export in ``OUT``."""
    from edgead.export.onnx import set_metadata, source_onnx

    if method not in METHODS:
        raise EdgeadError(f"calibration method must be one of {', '.join(METHODS)}, found '{method}'")
    q = require("onnxruntime.quantization", "onnxruntime", "INT8 Q/DQ quantisation")
    ort = require("onnxruntime", "onnxruntime")
    artifact_dir = Path(artifact_dir)
    onnx_path, src = source_onnx(artifact_dir)
    data = calib if isinstance(calib, CalibrationSet) else CalibrationSet(calib, src.spec, batch_size=1,
                                                                          limit=limit)

    calibrate = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
                 "entropy": q.CalibrationMethod.Entropy}[method]
    model = onnx.load(str(onnx_path))
    out = Path(out) if out else artifact_folder(artifact_dir, ONNX.name, "int8")
    post = _post_nodes(model, src.spec.family)
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as work:
        pre = Path(work) / "pre.onnx"
        q.quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        with contextlib.redirect_stdout(sys.stderr):  # ONNX Runtime prints progress; stdout is for --json
            if hasattr(q, "save_tensors_data"):  # an ORT with a calibration cache: quantize_static reads our ranges
                cache = Path(work) / "ranges.json"
                q.save_tensors_data(_calibration_ranges(q, pre, data, calibrate, Path(work)), cache)
                feed: dict[str, Any] = {"calibration_cache_path": str(cache)}
            else:  # older ORT calibrates here itself, holding every image's outputs (see _calibration_ranges)
                feed = {"calibration_data_reader": _Reader(data)}
            q.quantize_static(
                str(pre), str(tmp / MODEL),
                quant_format=q.QuantFormat.QDQ,
                per_channel=True,
                activation_type=q.QuantType.QInt8,
                weight_type=q.QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=post,
                calibrate_method=calibrate,
                extra_options=dict(EXTRA_OPTIONS),
                **feed,
            )
        qm = onnx.load(str(tmp / MODEL))
        restore_island_inputs(qm)  # FP32 islands read float tensors, not a dequantized copy (TensorRT builds this)
        quant: dict[str, Any] = {"tool": "onnxruntime", "quantized_ops": list(QUANTIZED_OPS), "symmetric": True,
                                 "per_channel_weights": True, "always_float": post,
                                 "accuracy_control": target is not None, "float_layers": []}
        weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(pre)).graph.initializer}
        if target is None:
            qm = float_island(qm, [], weights)  # Q/DQ on the INT8 layers' inputs only
        else:
            found = search_float_layers(qm, weights, target, max_float=max_float_layers)
            qm = float_island(qm, found.float_layers, weights)
            quant.update(float_layers=found.float_layers, float_reason="most sensitive layers, kept in float "
                         "until the budget held", sensitivity=found.sensitivity, search=found.steps,
                         budget={"metric": target.budget.metric, "max_drop": target.budget.max_drop,
                                 "min_map_r": target.budget.min_map_r})
        quant["quantized_layers"] = len(quantized_layers(qm))
        set_metadata(qm, {p.key: p.value for p in model.metadata_props})
        onnx.save(qm, str(tmp / MODEL))
        extra = {"calibration": {**data.describe(), "method": method},
                 "quantization": quant, "source": onnx_path.name,
                 # kept for readers of the first manifest layout
                 "quantized_ops": list(QUANTIZED_OPS), "symmetric": True}
        write_manifest(tmp, ONNX.manifest_name, "int8", MODEL, src.spec, {"onnxruntime": ort.__version__}, src.batch,
                       extra)
    read_manifest(out)
    return out
