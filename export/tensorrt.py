"""``edgead compile OUT --engine trt --precision fp16|int8``: a strongly typed TensorRT 10/11 engine.

The precision is decided in the ONNX graph, on the CPU, before TensorRT sees it: FP16 builds from
``OUT/onnx-fp16`` (mixed FP16 with FP32 islands, ``edgead.export.fp16``), INT8 from the calibrated Q/DQ graph
in ``OUT/onnx-int8`` (``edgead.calib.onnx_qdq``, checked by ``edgead.export.qdq_check``). Both are written
first when missing and verified against PyTorch FP32 (``edgead.export.precision``), so they exist and have
passed before TensorRT, a GPU or a driver is needed. TensorRT then builds the graph as typed: a strongly typed
network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on 10.x; always on 11.x), with no precision builder
flags, no per-layer pinning and no calibrator.

``OUT/trt-<precision>/`` holds model.engine, timing.cache and manifest.json. The TensorRT 10-only entropy
calibrator survives as an explicit legacy option (``--int8-mode entropy``), refused in one line on 11.

Only the build functions import tensorrt; profile parsing is pure Python.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgead import precisions
from edgead.errors import ArtifactError, EdgeadError, InputError, require
from edgead.export.islands import Fp32Node, fp32_islands
from edgead.export.qdq_check import check_qdq_for_tensorrt
from edgead.fidelity import Budget
from edgead.fsutil import atomic_dir, sha256_file
from edgead.registry import TENSORRT, artifact_folder
from edgead.runtimes.manifest import read_manifest, write_manifest

__all__ = ["BatchProfile", "Fp32Node", "check_qdq_for_tensorrt", "compile_trt", "fp32_islands", "parse_batch"]

ENGINE = TENSORRT.model_file
TIMING_CACHE = "timing.cache"
PRECISIONS = TENSORRT.compiles
INT8_MODES = ("qdq", "entropy")
SUPPORTED_MAJORS = (10, 11)

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


def major_version(trt: Any) -> int:
    """TensorRT's major version; refuses one edgead does not build with, in one line."""
    version = str(trt.__version__)
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major not in SUPPORTED_MAJORS:
        raise EdgeadError(f"edgead builds strongly typed engines with TensorRT 10.1+ or 11.x, found TensorRT "
                          f"{version}; pip install 'edgead[trt]'")
    return major


@dataclass
class TimingCacheUse:
    """What happened to the previous build's timing cache: reused, rejected and rebuilt, or none."""

    state: str = "none"  # "none" | "reused" | "rebuilt"


def timing_cache(config: Any, path: Path) -> tuple[Any, TimingCacheUse]:
    """A timing cache for ``config``: the previous build's when TensorRT accepts it, else a new empty one.

    ``create_timing_cache`` returns None for a cache TensorRT rejects (another TensorRT version, corrupt
    bytes), and ``set_timing_cache`` returns False for one made on another GPU: both start afresh.
    """
    data = path.read_bytes() if path.is_file() else b""
    use = TimingCacheUse("reused" if data else "none")
    cache = config.create_timing_cache(data) if data else None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        use.state = "rebuilt" if data else "none"
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise ArtifactError("TensorRT could not create an empty timing cache")
    return cache, use


def network_flags(trt: Any, major: int) -> int:
    """Strongly typed: a flag on TensorRT 10.x, always on (the flag deprecated) on 11.x."""
    return 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _build(trt: Any, onnx_path: Path, tmp: Path, profile: BatchProfile, workspace_gb: float, spec: Any,
           legacy_calibrator: Any = None) -> dict[str, Any]:
    """Parse ``onnx_path`` and write model.engine and timing.cache into ``tmp``; returns build facts."""
    major = major_version(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = legacy_calibrator is None
    network = builder.create_network(network_flags(trt, major) if strongly_typed else 0)
    parser = _parse(trt, network, logger, onnx_path)  # owns the weights the network points at: keep it alive
    if network.num_inputs != 1:
        raise ArtifactError(f"expected one network input (images), found {network.num_inputs} in {onnx_path}")
    name = network.get_input(0).name
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(name, *profile.shapes(spec.input_size))
    config.add_optimization_profile(opt_profile)
    if legacy_calibrator is not None:
        from edgead.calib.trt_calibrator import configure_legacy_int8

        configure_legacy_int8(trt, config, opt_profile, legacy_calibrator, network, onnx_path)
    cache, cache_use = timing_cache(config, tmp / TIMING_CACHE)
    plan = builder.build_serialized_network(network, config)
    if legacy_calibrator is not None and legacy_calibrator.error is not None:
        raise EdgeadError(f"INT8 calibration failed: {legacy_calibrator.error}") from legacy_calibrator.error
    if plan is None:
        raise ArtifactError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path}; "
                            f"TensorRT's log above says why")
    (tmp / ENGINE).write_bytes(bytes(memoryview(plan)))
    (tmp / TIMING_CACHE).write_bytes(bytes(memoryview(cache.serialize())))
    del parser  # only now may the weights go
    return {"strongly_typed": strongly_typed, "timing_cache": cache_use.state}


def compile_trt(
    artifact_dir: str | Path,
    precision: str = "fp16",
    batch: str | Sequence[int] | BatchProfile = (1, 1, 8),
    workspace_gb: float = 4.0,
    calib_dir: str | Path | None = None,
    int8_mode: str = "qdq",
    out: str | Path | None = None,
    data: str | Path | None = None,
    budget: Budget | None = None,
) -> Path:
    """Build ``OUT/trt-<precision>/`` (model.engine + manifest) from the precision graph of the export in
    ``artifact_dir``; returns the engine folder.

    The precision graph (``OUT/onnx-fp16`` or ``OUT/onnx-int8``) is written and verified on the CPU first
    (``edgead.export.precision.precision_graph``; ``calib_dir`` images, ``data`` for the AUROC change), judged by
    ``budget`` (default: the precision's own, ``Budget.for_precision``).
    ``batch`` is ``"MIN:OPT:MAX"`` (see ``parse_batch``). ``int8_mode="entropy"`` is the TensorRT 10-only
    legacy calibrator over the FP32 graph.
    """
    if precision not in PRECISIONS:
        raise InputError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, found '{precision}'")
    if int8_mode not in INT8_MODES:
        raise InputError(f"INT8 mode must be one of {', '.join(INT8_MODES)}, found '{int8_mode}'")
    profile = parse_batch(batch)
    if not workspace_gb > 0:
        raise InputError(f"workspace must be a positive number of GB, found {workspace_gb}")
    from edgead.export.onnx import source_onnx

    artifact_dir = Path(artifact_dir)
    fp32_path, src = source_onnx(artifact_dir)
    quantized = precisions.get(precision).quantized
    legacy = quantized and int8_mode == "entropy"
    if legacy and calib_dir is None:
        raise InputError("INT8 entropy calibration needs images: pass --calib DIR (normal images)")
    check = None
    if legacy:
        onnx_path = fp32_path
    else:
        from edgead.export.precision import precision_graph

        folder, check = precision_graph(artifact_dir, precision, calib_dir, data, budget)
        onnx_path = folder / read_manifest(folder).model
        if quantized:
            check_qdq_for_tensorrt(onnx.load(str(onnx_path), load_external_data=False), onnx_path)
    trt = require(TENSORRT.package, TENSORRT.extra, "building TensorRT engines")
    major = major_version(trt)
    if legacy and major >= 11:
        raise EdgeadError(f"--int8-mode entropy (the implicit INT8 calibrator) was removed in TensorRT 11, found "
                          f"TensorRT {trt.__version__}; use --int8-mode qdq (the default)")
    from edgead.runtimes.trt_runner import device_info, open_cuda

    cuda = open_cuda()  # one line and no traceback on a machine without an NVIDIA GPU or driver
    try:
        gpu = device_info(cuda, trt.__version__)
        target = Path(out) if out else artifact_folder(artifact_dir, TENSORRT.name, precision)
        with atomic_dir(target) as tmp:
            _carry(target, tmp, TIMING_CACHE)
            calibrator, calibration = None, None
            if legacy:
                calibrator, calibration = _entropy_calibrator(target, tmp, onnx_path, calib_dir, src.spec,
                                                              profile, cuda)
            try:
                facts = _build(trt, onnx_path, tmp, profile, workspace_gb, src.spec, calibrator)
            finally:
                if calibrator is not None:
                    calibrator.close()
            extra = {
                "tensorrt_version": trt.__version__, "gpu_name": gpu.gpu_name,
                "compute_capability": gpu.compute_capability, "profile": profile.to_dict(),
                "int8_mode": int8_mode if quantized else None, "calibration_cache": calibration,
                "workspace_gb": workspace_gb, **facts, "cpu_check": check.to_dict() if check else None,
                "source": str(onnx_path.relative_to(artifact_dir)), "source_sha256": sha256_file(onnx_path),
            }
            versions = {TENSORRT.package: trt.__version__, "onnx": onnx.__version__, "cuda": cuda.name}
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
    """The legacy calibrator; the previous ``calibration.cache`` is reused only if made for this model and data."""
    from edgead.calib.dataset import CalibrationSet
    from edgead.calib.trt_calibrator import CACHE, CalibrationFeeder, make_entropy_calibrator

    feeder = CalibrationFeeder(CalibrationSet(calib_dir, spec, batch_size=profile.opt), profile.opt, np.uint8)
    fingerprint = feeder.fingerprint(sha256_file(onnx_path))
    try:
        previous = read_manifest(target, verify=False).extra.get("calibration_cache") or {}
    except ArtifactError:
        previous = {}
    reused = previous.get("fingerprint") == fingerprint and _carry(target, tmp, CACHE)
    return make_entropy_calibrator(feeder, tmp / CACHE, cuda), {"file": CACHE, "fingerprint": fingerprint,
                                                                "reused": bool(reused)}
