"""``edgead verify``: every artifact in an export folder against the PyTorch reference, and optionally on data.

The reference is the checkpoint recorded in the export's manifest (or one given explicitly) run in PyTorch;
without PyTorch installed, the FP32 ONNX export run in ONNX Runtime stands in for it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgead.errors import ArtifactError
from edgead.evaluate import evaluate_runner
from edgead.imageio import load_batch
from edgead.runtimes.compare import Difference, check_batch, difference, pearson
from edgead.runtimes.loader import load, missing_engine
from edgead.runtimes.manifest import find_artifacts, read_manifest


@dataclass(frozen=True)
class ArtifactCheck:
    folder: Path
    engine: str
    precision: str
    diff: Difference
    metrics: dict[str, float | None] = field(default_factory=dict)
    delta: dict[str, float | None] = field(default_factory=dict)  # metric change against the FP32 export

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "engine": self.engine, "precision": self.precision,
                "diff": self.diff.to_dict(), "metrics": self.metrics, "delta_vs_fp32": self.delta}


def _reference(out: Path, ckpt: Path | None):
    m = read_manifest(out)
    ckpt = ckpt or (Path(m.extra["checkpoint"]) if "checkpoint" in m.extra else None)
    if ckpt is not None and importlib.util.find_spec("torch") is not None:
        if not ckpt.is_dir():
            raise ArtifactError(f"reference checkpoint {ckpt} named by the export is gone; pass --ckpt")
        return load(ckpt, "torch"), "torch"
    # No torch (a line PC): the FP32 ONNX export is the reference, run by whichever ONNX engine is installed.
    engine = "onnxruntime" if missing_engine("onnxruntime") is None else "openvino"
    return load(out, engine), f"{engine}-fp32"


def verify_artifacts(out: str | Path, data: str | Path | None = None, ckpt: str | Path | None = None,
                     batch: int = 8) -> tuple[str, list[ArtifactCheck]]:
    """Differences (and metrics with ``data``) of every artifact in ``out`` against the reference."""
    out = Path(out)
    folders = find_artifacts(out)
    if not folders:
        raise ArtifactError(f"expected an export folder with manifest.json, found none in {out}")
    ref, ref_name = _reference(out, Path(ckpt) if ckpt else None)
    ref_eval = None
    if data is not None:
        ref_eval = evaluate_runner(ref, data)
        # the parity batch comes from the user's data: differences on in-distribution images
        images = load_batch([it.path for it in ref_eval.items[:batch]], ref.spec)
    else:
        images = check_batch(1, batch, ref.spec.input_size)
    ref_pred = ref.predict(images)
    checks = []
    for folder in folders:
        runner = load(folder)
        diff = difference(ref_pred, runner.predict(images), ref_name, runner.describe())
        metrics: dict[str, float | None] = {}
        delta: dict[str, float | None] = {}
        if data is not None and ref_eval is not None:
            ev = evaluate_runner(runner, data)
            ref_metrics = ref_eval.metrics.__dict__
            metrics = dict(ev.metrics.__dict__)
            delta = {k: (None if v is None or ref_metrics[k] is None else v - ref_metrics[k])
                     for k, v in metrics.items()}
            metrics["map_pearson"] = pearson(ref_eval.maps, ev.maps)  # over every map of the data set
        checks.append(ArtifactCheck(folder, runner.engine, runner.manifest.precision, diff, metrics, delta))
        runner.close()
    return ref_name, checks
