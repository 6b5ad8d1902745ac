"""``edgead compile OUT --engine trt --precision fp16|int8``: a TensorRT 10 engine beside the ONNX export.

Builds ``OUT/trt-<precision>/`` (model.engine, timing.cache, for entropy INT8 calibration.cache,
manifest.json) from the end-to-end ONNX with TensorRT's ONNX parser and one optimization profile over the
batch range. INT8 comes two ways: ``qdq`` (recommended) builds from the calibrated symmetric Q/DQ ONNX in
``OUT/onnx-int8`` (explicit quantization); ``entropy`` calibrates the FP32 graph with
``IInt8EntropyCalibrator2`` on the same calibration images. Precision-sensitive layers of the distance and
the score are pinned to FP32 (see ``fp32_nodes``).

Only the build functions import tensorrt; profile parsing, the FP32 selection rules and the Q/DQ check
are pure Python so they are tested on machines without a GPU.
"""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgead.errors import ArtifactError, EdgeadError, InputError, require
from edgead.fsutil import atomic_dir, sha256_file
from edgead.registry import MANIFEST, ONNX, TENSORRT, artifact_folder
from edgead.runtimes.manifest import read_manifest, write_manifest

ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"
PRECISIONS = TENSORRT.compiles
INT8_MODES = ("qdq", "entropy")


# -- the optimization profile --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of the optimization profile: kernels tuned for ``opt``, valid from ``min`` to ``max``."""

    min: int
    opt: int
    max: int

    def shapes(self, input_size: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
        h, w = input_size
        return tuple((b, h, w, 3) for b in (self.min, self.opt, self.max))

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


def parse_batch(value: str | Sequence[int] | BatchProfile) -> BatchProfile:
    """``"MIN:OPT:MAX"`` (``--batch 1:4:8``), ``"N"`` for a fixed batch, or a 3-tuple -> ``BatchProfile``."""
    if isinstance(value, BatchProfile):
        parts: list[Any] = [value.min, value.opt, value.max]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.strip().split(":")]
    else:
        parts = list(value)
    expected = "expected --batch MIN:OPT:MAX (or N) with integers 1 <= MIN <= OPT <= MAX"
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise InputError(f"{expected}, found '{_show(value)}' ({len(parts)} values)")
    try:
        lo, opt, hi = (_to_int(p) for p in parts)
    except ValueError:
        raise InputError(f"{expected}, found '{_show(value)}' (not integers)") from None
    if lo < 1:
        raise InputError(f"{expected}, found '{_show(value)}' (MIN must be at least 1)")
    if not lo <= opt <= hi:
        raise InputError(f"{expected}, found '{_show(value)}' (not in increasing order)")
    return BatchProfile(lo, opt, hi)


def _to_int(p: Any) -> int:
    if isinstance(p, bool) or (isinstance(p, float) and not p.is_integer()):
        raise ValueError(p)
    if isinstance(p, str) and not p.isdigit():
        raise ValueError(p)
    return int(p)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else ":".join(str(v) for v in value)


# -- which nodes stay FP32 -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fp32Node:
    name: str
    op_type: str
    outputs: tuple[str, ...]
    reason: str


# Ops pinned wherever they appear. In these graphs they only occur in the feature normalisation, the distance
# and the score; a decomposed LayerNorm would have them too, where TensorRT itself recommends FP32.
_NORM = ("L2/cosine normalisation: a sum of squares over hundreds of ViT features exceeds FP16's 65504 or "
         "loses the small differences that make the anomaly signal")
PINNED_OPS = {
    "ReduceSum": _NORM, "ReduceSumSquare": _NORM, "ReduceL2": _NORM, "LpNormalization": _NORM,
    "Sqrt": _NORM, "Pow": _NORM,
    "TopK": "image score: FP16 rounding turns near-equal map pixels into ties and changes which k are kept",
}
# Element-wise ops that take part in a pinned computation: the product/difference being reduced, the eps clamp
# (1e-8 squared underflows to 0 in FP16), the division by the norm, 1 - cos.
ELEMENTWISE = {"Mul", "Sub", "Add", "Div", "Abs", "Neg", "Reciprocal", "Clip", "Max", "Min"}
_REDUCTIONS = {"ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMean"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
#: how many element-wise hops after a pinned op stay pinned (the norm division, the product of norms, 1 - cos)
FOLLOW_HOPS = 3


def fp32_nodes(model: onnx.ModelProto | onnx.GraphProto) -> list[Fp32Node]:
    """Nodes of an exported detector that must run in FP32 under FP16/INT8, in graph order, with the reason.

    Rules: the ops in ``PINNED_OPS``; the image-score ``ReduceMean`` (fed by TopK or producing a graph
    output); a ``Softmax`` that does not feed a MatMul (a final softmax, not attention); element-wise
    producers of a pinned reduction; element-wise consumers up to ``FOLLOW_HOPS`` after a pinned op. Q/DQ
    nodes are looked through.
    """
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    nodes = list(graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in graph.output}

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
        if n.op_type in PINNED_OPS:
            reasons[n.name] = PINNED_OPS[n.op_type]
        elif n.op_type == "ReduceMean" and (any(p.op_type == "TopK" for p in producers_of(n))
                                            or graph_outputs & set(n.output)):
            reasons[n.name] = "image score: the mean of the top-k pixels is compared against the threshold"
        elif n.op_type == "Softmax" and not any(c.op_type == "MatMul" for c in consumers_of(n)):
            reasons[n.name] = "final softmax: FP16 exp overflows and flattens small probabilities"
    seeds = [n for n in nodes if n.name in reasons]
    for n in seeds:  # what a pinned reduction reduces
        if n.op_type in _REDUCTIONS:
            for p in producers_of(n):
                if p.op_type in ELEMENTWISE and p.name not in reasons:
                    reasons[p.name] = f"computes what {n.name} ({n.op_type}) reduces"
    queue = deque((n, 0) for n in seeds)
    while queue:  # what a pinned op's result flows into, a few element-wise hops
        n, hops = queue.popleft()
        if hops >= FOLLOW_HOPS:
            continue
        for c in consumers_of(n):
            if c.op_type in ELEMENTWISE and c.name not in reasons:
                reasons[c.name] = f"uses the result of {n.name} ({n.op_type}) in FP32"
                queue.append((c, hops + 1))
    return [Fp32Node(n.name, n.op_type, tuple(n.output), reasons[n.name]) for n in nodes if n.name in reasons]


# -- the Q/DQ graph TensorRT builds from ---------------------------------------------------------------------
def check_qdq_for_tensorrt(model: onnx.ModelProto, where: str | Path = "Q/DQ model") -> int:
    """Number of Q/DQ pairs; raise when the graph has none or uses what TensorRT rejects (TensorRT quantizes
    symmetrically to signed INT8: every zero point must be an int8 zero)."""
    consts = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if not quant:
        raise ArtifactError(f"{where} has no QuantizeLinear nodes; it is not a calibrated Q/DQ model")
    bad = []
    for n in [*quant, *(m for m in model.graph.node if m.op_type == "DequantizeLinear")]:
        if len(n.input) < 3 or not n.input[2]:
            continue
        zp = consts.get(n.input[2])
        if zp is None:
            bad.append(f"{n.name} (zero point is computed, not a constant)")
            continue
        arr = numpy_helper.to_array(zp)
        if arr.dtype != np.int8 or np.any(arr != 0):
            bad.append(f"{n.name} ({arr.dtype} zero point {arr.ravel()[:3].tolist()})")
    if bad:
        raise ArtifactError(
            f"{where} is not TensorRT-compatible: TensorRT needs symmetric signed INT8 (zero point 0) but "
            f"{len(bad)} Q/DQ nodes differ, e.g. {'; '.join(bad[:3])}; requantize with activation and weight "
            f"type QInt8 and symmetric ranges"
        )
    return len(quant)


def _qdq_onnx(artifact_dir: Path, calib_dir: Path | None, spec: Any) -> Path:
    """``OUT/onnx-int8/model.onnx``, made first from ``calib_dir`` when missing, and checked for TensorRT."""
    folder = artifact_folder(artifact_dir, ONNX.name, "int8")
    if not (folder / MANIFEST).is_file():
        if calib_dir is None:
            raise InputError(f"INT8 (qdq) builds from the calibrated Q/DQ ONNX in {folder}, found none; pass "
                             f"--calib DIR (normal images), or run: edgead compile {artifact_dir} --engine "
                             f"onnxruntime --precision int8 --calib DIR")
        from edgead.calib.onnx_qdq import quantize_qdq

        quantize_qdq(artifact_dir, calib_dir)
    m = read_manifest(folder)
    if m.precision != "int8" or m.spec != spec:
        same = "same" if m.spec == spec else "another"
        raise ArtifactError(f"{folder} is not the INT8 Q/DQ model of this export (precision {m.precision}, "
                            f"{same} spec); delete it and rebuild with --calib DIR")
    path = folder / m.model
    check_qdq_for_tensorrt(onnx.load(str(path), load_external_data=False), path)
    return path


# -- building (needs tensorrt and a GPU) ---------------------------------------------------------------------
def _parse(trt: Any, network: Any, logger: Any, path: Path) -> Any:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = e.node_name() or (f"node #{e.node()}" if e.node() >= 0 else "graph")
            op = f" ({e.node_operator()})" if e.node_operator() else ""
            errors.append(f"{node}{op}: {' '.join(str(e.desc()).split())}")
        why = "; ".join(errors) or "unknown error"
        raise ArtifactError(f"TensorRT {trt.__version__} could not parse {path}: {why}")
    return parser


def pin_layers(trt: Any, network: Any, pinned: Sequence[Fp32Node]) -> list[str]:
    """Constrain the TensorRT layers of ``pinned`` ONNX nodes (and every TopK layer) to FP32; return names.

    The ONNX parser names each layer after its node (made unique with a suffix) and keeps the node's output
    tensor names, so a layer matches by name or by an output tensor. Only float outputs get an output type.
    """
    names = {p.name for p in pinned}
    tensors = {t for p in pinned for t in p.outputs}
    floats = (trt.float32, trt.float16)
    done = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        hit = layer.name in names or any(o.name in tensors for o in outs) or layer.type == trt.LayerType.TOPK
        float_outs = [j for j, o in enumerate(outs) if o.dtype in floats and not o.is_shape_tensor]
        if not hit or not float_outs:
            continue
        layer.precision = trt.float32
        for j in float_outs:
            layer.set_output_type(j, trt.float32)
        done.append(layer.name)
    return done


def _timing_cache(config: Any, path: Path) -> Any:
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):  # a cache from another GPU: start afresh
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _build(trt: Any, onnx_path: Path, tmp: Path, precision: str, profile: BatchProfile, workspace_gb: float,
           spec: Any, calibrator: Any) -> list[str]:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode in TensorRT 10 (flag 0). Not STRONGLY_TYPED: that mode forbids the
    # per-layer FP32 constraints below and would run the un-quantized parts of a Q/DQ graph in FP32 instead of
    # FP16.
    network = builder.create_network(0)
    parser = _parse(trt, network, logger, onnx_path)  # owns the weights the network points at: keep it alive
    if network.num_inputs != 1:
        raise ArtifactError(f"expected one network input (images), found {network.num_inputs} in {onnx_path}")
    name = network.get_input(0).name
    if calibrator is not None and np.dtype(trt.nptype(network.get_input(0).dtype)) != calibrator.feeder.dtype:
        raise ArtifactError(f"the calibrator feeds {calibrator.feeder.dtype} batches but {onnx_path} takes "
                            f"{trt.nptype(network.get_input(0).dtype).__name__} images")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(name, *profile.shapes(spec.input_size))
    config.add_optimization_profile(opt_profile)
    if calibrator is not None:
        config.int8_calibrator = calibrator
        config.set_calibration_profile(opt_profile)  # calibration runs at the profile's OPT shape
    pinned = pin_layers(trt, network, fp32_nodes(onnx.load(str(onnx_path), load_external_data=False)))
    cache = _timing_cache(config, tmp / TIMING_CACHE)
    plan = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.error is not None:
        raise EdgeadError(f"INT8 calibration failed: {calibrator.error}") from calibrator.error
    if plan is None:
        raise ArtifactError(f"TensorRT {trt.__version__} could not build a {precision} engine from "
                            f"{onnx_path}; TensorRT's log above says why")
    (tmp / ENGINE).write_bytes(bytes(memoryview(plan)))
    (tmp / TIMING_CACHE).write_bytes(bytes(memoryview(cache.serialize())))
    del parser  # only now may the weights go
    return pinned


def compile_trt(
    artifact_dir: str | Path,
    precision: str = "fp16",
    batch: str | Sequence[int] | BatchProfile = (1, 1, 8),
    workspace_gb: float = 4.0,
    calib_dir: str | Path | None = None,
    int8_mode: str = "qdq",
    out: str | Path | None = None,
) -> Path:
    """Build ``OUT/trt-<precision>/`` (model.engine + manifest) from the FP32 ONNX export in ``artifact_dir``.

    ``batch`` is ``"MIN:OPT:MAX"`` (see ``parse_batch``); ``calib_dir`` holds normal images for INT8;
    ``int8_mode`` is ``qdq`` (from ``OUT/onnx-int8``, made from ``calib_dir`` when missing) or ``entropy``.
    Returns the engine folder.
    """
    if precision not in PRECISIONS:
        raise InputError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, found '{precision}'")
    if int8_mode not in INT8_MODES:
        raise InputError(f"INT8 mode must be one of {', '.join(INT8_MODES)}, found '{int8_mode}'")
    profile = parse_batch(batch)
    if not workspace_gb > 0:
        raise InputError(f"workspace must be a positive number of GB, found {workspace_gb}")
    trt = require("tensorrt", "trt", "building TensorRT engines")
    if not str(trt.__version__).startswith("10."):
        raise EdgeadError(f"edgead builds engines with TensorRT 10 (FP16/INT8 builder flags, entropy "
                          f"calibrator), found TensorRT {trt.__version__}; install tensorrt 10.x")
    from edgead.export.onnx import source_onnx
    from edgead.runtimes.trt_runner import device_info, open_cuda

    artifact_dir = Path(artifact_dir)
    onnx_path, src = source_onnx(artifact_dir)
    mode = int8_mode if precision == "int8" else None
    if mode == "qdq":
        onnx_path = _qdq_onnx(artifact_dir, Path(calib_dir) if calib_dir else None, src.spec)
    if mode == "entropy" and calib_dir is None:
        raise InputError("INT8 entropy calibration needs images: pass --calib DIR (normal images)")
    cuda = open_cuda()  # one line and no traceback on a machine without an NVIDIA GPU or driver
    try:
        gpu = device_info(cuda, trt.__version__)
        target = Path(out) if out else artifact_folder(artifact_dir, TENSORRT.name, precision)
        with atomic_dir(target) as tmp:
            _carry(target, tmp, TIMING_CACHE)
            calibrator, calibration = None, None
            if mode == "entropy":
                calibrator, calibration = _entropy_calibrator(target, tmp, onnx_path, calib_dir, src.spec,
                                                              profile, cuda)
            try:
                pinned = _build(trt, onnx_path, tmp, precision, profile, workspace_gb, src.spec, calibrator)
            finally:
                if calibrator is not None:
                    calibrator.close()
            extra = {
                "tensorrt_version": trt.__version__, "gpu_name": gpu.gpu_name,
                "compute_capability": gpu.compute_capability, "profile": profile.to_dict(), "int8_mode": mode,
                "calibration_cache": calibration, "workspace_gb": workspace_gb, "fp32_layers": pinned,
                "source": str(onnx_path.relative_to(artifact_dir)), "source_sha256": sha256_file(onnx_path),
            }
            versions = {"tensorrt": trt.__version__, "onnx": onnx.__version__, "cuda": cuda.name}
            write_manifest(tmp, TENSORRT.manifest_name, precision, ENGINE, src.spec, versions,
                           (profile.min, profile.max), extra)
    finally:
        cuda.close()
    return target


def _carry(old: Path, tmp: Path, name: str) -> bool:
    """Copy ``name`` from the previous build into the new folder (atomic_dir replaces the whole folder)."""
    if (old / name).is_file():
        shutil.copy2(old / name, tmp / name)
        return True
    return False


def _entropy_calibrator(target: Path, tmp: Path, onnx_path: Path, calib_dir: Any, spec: Any,
                        profile: BatchProfile, cuda: Any) -> tuple[Any, dict[str, str]]:
    """The calibrator; the previous ``calibration.cache`` is reused only if made for this model and data."""
    from edgead.calib.dataset import CalibrationSet
    from edgead.calib.trt_calibrator import CACHE, CalibrationFeeder, make_entropy_calibrator

    feeder = CalibrationFeeder(CalibrationSet(calib_dir, spec, batch_size=profile.opt), profile.opt, np.uint8)
    fingerprint = feeder.fingerprint(sha256_file(onnx_path))
    try:
        previous = read_manifest(target, verify=False).extra.get("calibration_cache") or {}
    except ArtifactError:
        previous = {}
    if previous.get("fingerprint") == fingerprint:
        _carry(target, tmp, CACHE)
    return make_entropy_calibrator(feeder, tmp / CACHE, cuda), {"file": CACHE, "fingerprint": fingerprint}
