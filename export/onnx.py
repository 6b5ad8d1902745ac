"""``edgead export``: checkpoint -> ``OUT/model.onnx`` (uint8 images in; scores and maps out; dynamic batch).

The raw export is checked against PyTorch, then simplified (onnxslim by default, onnxsim on request) and checked
again. A simplified graph that fails the check is dropped, the raw graph is kept, and the report and manifest
say so. Nothing is written to ``OUT`` unless the final graph passed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from edgead.runtimes.compare import Difference, check_batch, difference
from edgead.runtimes.manifest import write_manifest

from edgead import __version__
from edgead.errors import ArtifactError, EdgeadError, require
from edgead.fsutil import atomic_dir, sha256_file

MODEL = "model.onnx"
INPUT = "images"
OUTPUTS = ("scores", "maps")
PARITY_ATOL = 1e-4


@dataclass(frozen=True)
class ExportReport:
    path: Path
    simplifier: str  # "onnxslim", "onnxsim" or "none"
    simplified: bool  # False when simplification was skipped or its graph failed the check
    nodes_raw: int
    nodes_final: int
    parity: Difference
    notes: list[str] = field(default_factory=list)


def _torch_export(detector: Any, path: Path, opset: int, batch: int) -> None:
    torch = require("torch", "torch", "export")
    h, w = detector.spec.input_size
    example = torch.zeros((batch, h, w, 3), dtype=torch.uint8)
    dyn = {INPUT: {0: "batch"}, OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(detector.eval(), (example,), str(path), input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes=dyn, opset_version=opset, dynamo=False, do_constant_folding=True)


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

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    scores, maps = sess.run(list(OUTPUTS), {INPUT: images})
    return Predictions(scores, maps, None)


def export_onnx(
    detector: Any,
    out: str | Path,
    simplifier: str = "onnxslim",
    opset: int = 17,
    atol: float = PARITY_ATOL,
    check_batch_size: int = 2,
    source: str | Path | None = None,
) -> ExportReport:
    """Export ``detector`` to ``out/model.onnx`` with its manifest; raise if the graph does not match PyTorch."""
    torch = require("torch", "torch", "export")
    from edgead.runtimes.torch_runner import TorchRunner

    if opset < 17:
        raise EdgeadError(f"opset must be >= 17 (LayerNormalization, reliable Resize), found {opset}")
    spec = detector.spec
    images = check_batch(0, check_batch_size, spec.input_size)
    ref = TorchRunner.from_detector(detector).predict(images)
    notes: list[str] = []
    out = Path(out)
    with atomic_dir(out) as tmp:
        raw = tmp / "raw.onnx"
        _torch_export(detector, raw, opset, check_batch_size)
        model = onnx.load(str(raw))
        nodes_raw = len(model.graph.node)
        meta = {"edgead_spec": spec.to_json(), "edgead_version": __version__}
        set_metadata(model, meta)
        onnx.save(model, str(raw))
        raw_diff = difference(ref, _ort_outputs(raw, images), "torch", "onnx-raw")
        if not raw_diff.within(atol):
            raise ArtifactError(
                f"exported ONNX does not match PyTorch: max |diff| maps {raw_diff.max_abs_maps:.3g}, "
                f"scores {raw_diff.max_abs_scores:.3g}, expected <= {atol:g}"
            )
        final, diff, simplified = raw, raw_diff, False
        if simplifier != "none":
            try:
                slim = _simplify(onnx.load(str(raw)), simplifier)
                set_metadata(slim, meta)
                slim_path = tmp / "slim.onnx"
                onnx.save(slim, str(slim_path))
                slim_diff = difference(ref, _ort_outputs(slim_path, images), "torch", f"onnx-{simplifier}")
                if slim_diff.within(atol):
                    final, diff, simplified = slim_path, slim_diff, True
                else:
                    notes.append(f"{simplifier} graph failed the parity check (max |diff| maps "
                                 f"{slim_diff.max_abs_maps:.3g}); kept the unsimplified graph")
            except EdgeadError:
                raise
            except Exception as exc:  # a simplifier crash must not lose a good export
                notes.append(f"{simplifier} failed ({type(exc).__name__}: {str(exc)[:120]}); "
                             "kept the unsimplified graph")
        final.rename(tmp / MODEL)
        for p in (raw, tmp / "slim.onnx"):
            p.unlink(missing_ok=True)
        nodes_final = len(onnx.load(str(tmp / MODEL), load_external_data=False).graph.node)
        extra = {
            "opset": opset, "simplifier": simplifier if simplified else "none", "notes": notes,
            "parity_vs_torch": diff.to_dict(), "nodes_raw": nodes_raw, "nodes_final": nodes_final,
        }
        if source is not None and (Path(source) / "detector.safetensors").is_file():
            extra["checkpoint"] = str(Path(source).resolve())
            extra["checkpoint_sha256"] = sha256_file(Path(source) / "detector.safetensors")
        versions = {"torch": torch.__version__, "onnx": onnx.__version__}
        write_manifest(tmp, "onnxruntime", "fp32", MODEL, spec, versions, (1, None), extra)
    return ExportReport(out, simplifier, simplified, nodes_raw, nodes_final, diff, notes)
