"""``edgead export``: checkpoint -> ``OUT/model.onnx`` (uint8 images in; scores and maps out; dynamic batch).

The raw export is checked against PyTorch. Then optional graph passes run, each checked again: simplification
(onnxslim by default, onnxsim on request) and norm-affine folding (``edgead.export.fold_norms``). A pass whose
graph fails the check is dropped, the graph before it is kept, and the report and manifest say so. Nothing is
written to ``OUT`` unless the final graph passed.

Memory (docs/tiling.md, "Memory"): the graph is traced, and every check runs its images, in calls sized by
``edgead.runtimes.chunks`` (one image per call at 1036 px, where one image's activations are hundreds of
megabytes), one ONNX Runtime session at a time, and the heap that tracing and each graph pass freed is handed back
to the system before the next check starts.
"""

from __future__ import annotations

import ctypes
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgead import __version__, precisions
from edgead.errors import ArtifactError, EdgeadError, InputError, require
from edgead.fidelity import Fidelity, measure
from edgead.fsutil import atomic_dir, sha256_file
from edgead.registry import INPUT, ONNX, OUTPUTS
from edgead.runtimes.chunks import images_per_call, predict_in_calls
from edgead.runtimes.compare import check_batch
from edgead.runtimes.manifest import Manifest, read_manifest, write_manifest
from edgead.spec import TilePlan

MODEL = "model.onnx"
PARITY_ATOL = 1e-4


@dataclass(frozen=True)
class ExportReport:
    path: Path
    simplifier: str  # "onnxslim", "onnxsim" or "none"
    simplified: bool  # False when simplification was skipped or its graph failed the check
    nodes_raw: int
    nodes_final: int
    parity: Fidelity  # the final graph against PyTorch on the check batch (FP32 rule: ``parity.within``)
    notes: list[str] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)  # graph passes kept (each passed the parity check)


def _torch_export(detector: Any, path: Path, opset: int, batch: int) -> None:
    torch = require("torch", "torch", "export")
    h, w = detector.spec.input_size
    example = torch.zeros((batch, h, w, 3), dtype=torch.uint8)
    dyn = {INPUT: {0: "batch"}, OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(detector.eval(), (example,), str(path), input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes=dyn, opset_version=opset, dynamo=False, do_constant_folding=True)


def _return_freed_memory() -> None:
    """Hand the heap pages freed since the last call back to the system (glibc keeps them: tracing a ViT at
    1036 px leaves about 600 MB freed but resident, on which every later check would stack). Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def _simplify(model: onnx.ModelProto, simplifier: str) -> onnx.ModelProto:
    if simplifier == "onnxslim":
        onnxslim = require("onnxslim", "torch", "graph simplification")
        return onnxslim.slim(model)
    if simplifier == "onnxsim":
        try:
            import onnxsim
        except ImportError:
            raise EdgeadError("--simplifier onnxsim needs the onnxsim package, found it not installed; "
                              "pip install onnxsim, or use --simplifier onnxslim") from None
        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise EdgeadError("onnxsim could not validate its simplified graph")
        return simplified
    raise EdgeadError(f"simplifier must be 'onnxslim', 'onnxsim' or 'none', found '{simplifier}'")


def source_onnx(artifact_dir: str | Path) -> tuple[Path, Manifest]:
    """The FP32 ONNX export in ``artifact_dir`` and its verified manifest (what every compiler starts from)."""
    m = read_manifest(artifact_dir)
    if m.engine != ONNX.manifest_name or m.precision != precisions.full().name:
        raise InputError(f"expected the FP32 ONNX export folder (edgead export ... -o OUT), found a "
                         f"{m.engine} {m.precision} artifact in {artifact_dir}")
    return Path(artifact_dir) / m.model, m


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = v
        else:
            model.metadata_props.add(key=k, value=v)


def _ort_outputs(path: Path, images: np.ndarray):
    ort = require("onnxruntime", "onnxruntime", "checking the export")
    from edgead.runtimes.base import Predictions

    _return_freed_memory()  # what the graph pass before this check freed
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(chunk: np.ndarray) -> Predictions:
        scores, maps = sess.run(list(OUTPUTS), {INPUT: chunk})
        return Predictions(scores, maps, None)

    return predict_in_calls(run, images)


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    from edgead.export.fold_norms import fold_norm_affine

    folded, count = fold_norm_affine(model)
    set_metadata(folded, {"edgead_norms_folded": str(count)})
    return folded


def folded_count(model: onnx.ModelProto) -> int:
    return int({p.key: p.value for p in model.metadata_props}.get("edgead_norms_folded", 0))


def _parity(ref: Any, got: Any, candidate: str) -> Fidelity:
    """A graph's outputs against PyTorch's on the check batch, measured like every other check
    (``edgead.fidelity.measure``) and judged by the FP32 rule (``Fidelity.within``)."""
    return measure(ref.scores, ref.maps, got.scores, got.maps, reference="torch", candidate=candidate,
                   precision=precisions.full().name)


def _checked_pass(name: str, graph_pass: Callable[[onnx.ModelProto], onnx.ModelProto], source: Path,
                  meta: dict[str, str], tmp: Path, ref, images: np.ndarray, atol: float,
                  notes: list[str]) -> tuple[Path, Fidelity] | None:
    """Apply one graph pass to the graph in ``source``; keep its result (a file in ``tmp``) only if it still
    matches PyTorch, else say why in ``notes``. No graph is held in memory while ONNX Runtime checks it."""
    try:
        candidate = graph_pass(onnx.load(str(source)))
    except EdgeadError:
        raise
    except Exception as exc:  # a crashing optional pass must not lose a good export
        notes.append(f"{name} failed ({type(exc).__name__}: {str(exc)[:120]}); graph kept without it")
        return None
    set_metadata(candidate, meta)
    path = tmp / f"{name}.onnx"
    onnx.save(candidate, str(path))
    del candidate
    diff = _parity(ref, _ort_outputs(path, images), f"onnx+{name}")
    if not diff.within(atol):
        path.unlink()
        notes.append(f"{name} graph failed the parity check ({diff.describe()}); graph kept without it")
        return None
    return path, diff


def export_onnx(
    detector: Any,
    out: str | Path,
    simplifier: str = "onnxslim",
    opset: int = 17,
    atol: float = PARITY_ATOL,
    check_batch_size: int = 2,
    source: str | Path | None = None,
    fold_norms: bool = True,
    tiling: TilePlan | None = None,
) -> ExportReport:
    """Export ``detector`` to ``out/model.onnx`` with its manifest; raise if the graph does not match PyTorch.

    ``tiling`` writes a tiling plan into the artifact's spec (``None``: the checkpoint's own plan, if any)."""
    torch = require("torch", "torch", "export")
    from edgead.runtimes.torch_runner import TorchRunner

    if opset < 17:
        raise EdgeadError(f"opset must be >= 17 (LayerNormalization, reliable Resize), found {opset}")
    spec = detector.spec if tiling is None else replace(detector.spec, tiling=tiling)
    images = check_batch(0, check_batch_size, spec.input_size)
    ref = predict_in_calls(TorchRunner.from_detector(detector).predict, images)
    notes: list[str] = []
    out = Path(out)
    with atomic_dir(out) as tmp:
        raw = tmp / "raw.onnx"
        _torch_export(detector, raw, opset, images_per_call(spec.input_size, check_batch_size))
        _return_freed_memory()
        model = onnx.load(str(raw))
        nodes_raw = len(model.graph.node)
        meta = {"edgead_spec": spec.to_json(), "edgead_version": __version__}
        set_metadata(model, meta)
        onnx.save(model, str(raw))
        del model
        raw_diff = _parity(ref, _ort_outputs(raw, images), "onnx-raw")
        if not raw_diff.within(atol):
            raise ArtifactError(f"exported ONNX does not match PyTorch: {raw_diff.describe()}, expected <= {atol:g} "
                                "(absolute up to magnitude 1, relative above)")
        passes: list[tuple[str, Callable[[onnx.ModelProto], onnx.ModelProto]]] = []
        if simplifier != "none":
            passes.append((simplifier, lambda m: _simplify(m, simplifier)))
        if fold_norms:
            passes.append(("fold-norms", _fold))
        current, diff, applied = raw, raw_diff, []
        for name, graph_pass in passes:
            kept = _checked_pass(name, graph_pass, current, meta, tmp, ref, images, atol, notes)
            if kept is not None:
                if current != raw:
                    current.unlink()
                current, diff = kept
                applied.append(name)
        current.replace(tmp / MODEL)
        raw.unlink(missing_ok=True)
        model = onnx.load(str(tmp / MODEL), load_external_data=False)
        nodes_final = len(model.graph.node)
        extra = {
            "opset": opset, "simplifier": simplifier if simplifier in applied else "none", "passes": applied,
            "norms_folded": folded_count(model) if "fold-norms" in applied else 0, "notes": notes,
            "parity_vs_torch": diff.to_dict(), "nodes_raw": nodes_raw, "nodes_final": nodes_final,
        }
        if source is not None and (Path(source) / "detector.safetensors").is_file():
            extra["checkpoint"] = str(Path(source).resolve())
            extra["checkpoint_sha256"] = sha256_file(Path(source) / "detector.safetensors")
        versions = {"torch": torch.__version__, "onnx": onnx.__version__}
        write_manifest(tmp, ONNX.manifest_name, "fp32", MODEL, spec, versions, (1, None), extra)
    return ExportReport(out, simplifier, simplifier in applied, nodes_raw, nodes_final, diff, notes, applied)
