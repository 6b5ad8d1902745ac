"""``edgead verify``: every artifact in an export folder against the PyTorch reference, with a verdict.

The reference is the checkpoint recorded in the export's manifest (or one given explicitly) run in PyTorch;
without PyTorch installed, the FP32 ONNX export run in ONNX Runtime stands in for it (the report says which).
With ``--data`` every test image of the category is compared (differences, map r, label flips against the
artifact's threshold) and metrics are computed; without it, a fixed synthetic parity batch is. Each artifact is
judged against the targets of its precision (``edgead.fidelity.Budget``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgead.data import load_masks, test_items
from edgead.errors import ArtifactError, InputError
from edgead.evaluate import run_on_items
from edgead.fidelity import Budget, Fidelity, measure
from edgead.runtimes.base import Runner
from edgead.runtimes.compare import check_batch
from edgead.runtimes.loader import load, missing_engine
from edgead.runtimes.manifest import find_artifacts, read_manifest

REFERENCE_NAMES = {"torch": "PyTorch checkpoint", "onnxruntime fp32": "FP32 ONNX export in ONNX Runtime "
                   "(PyTorch not installed)", "openvino fp32": "FP32 ONNX export in OpenVINO (PyTorch not installed)"}


@dataclass(frozen=True)
class ArtifactCheck:
    folder: Path
    engine: str
    precision: str
    fidelity: Fidelity
    failures: list[str] = field(default_factory=list)
    quantization: dict[str, Any] | None = None  # the manifest's record: layers kept in float, why
    compiled: dict[str, Any] | None = None  # the compile-time gate's record: drop and map r measured then

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "engine": self.engine, "precision": self.precision,
                "passed": self.passed, "failures": self.failures, **self.fidelity.to_dict(),
                "quantization": self.quantization, "compile_time_fidelity": self.compiled}


@dataclass(frozen=True)
class Report:
    reference: str  # "torch", or "onnxruntime fp32" / "openvino fp32" where torch is missing
    budget: Budget
    images: int
    data: str | None
    checks: list[ArtifactCheck]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reference_label(self) -> str:
        return REFERENCE_NAMES.get(self.reference, self.reference)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "reference_is": self.reference_label, "passed": self.passed,
                "budget": self.budget.to_dict(), "images": self.images, "data": self.data,
                "artifacts": [c.to_dict() for c in self.checks]}


def _reference(out: Path, ckpt: Path | None) -> tuple[Runner, str]:
    m = read_manifest(out)
    ckpt = ckpt or (Path(m.extra["checkpoint"]) if "checkpoint" in m.extra else None)
    if ckpt is not None and importlib.util.find_spec("torch") is not None:
        if not ckpt.is_dir():
            raise ArtifactError(f"reference checkpoint {ckpt} named by the export is gone; pass --ckpt")
        return load(ckpt, "torch"), "torch"
    # No torch (a line PC): the FP32 ONNX export is the reference, run by whichever ONNX engine is installed.
    engine = "onnxruntime" if missing_engine("onnxruntime") is None else "openvino"
    return load(out, engine), f"{engine} fp32"


def verify_artifacts(out: str | Path, data: str | Path | None = None, ckpt: str | Path | None = None,
                     batch: int = 8, budget: Budget | None = None) -> Report:
    """Judge every artifact in ``out`` against the reference, over every test image of ``data`` if given."""
    if batch < 1:
        raise InputError(f"expected a batch size >= 1, found {batch}")
    budget = budget or Budget()
    out = Path(out)
    folders = find_artifacts(out)
    if not folders:
        raise ArtifactError(f"expected an export folder with manifest.json, found none in {out}")
    ref, ref_name = _reference(out, Path(ckpt) if ckpt else None)
    labels = masks = images = None
    if data is not None:
        items = test_items(data)
        ref_scores, ref_maps = run_on_items(ref, items, batch)
        labels = np.array([it.label for it in items])
        masks = load_masks(items, ref.spec)
        if labels.min() == labels.max():
            labels = masks = None  # one class only: differences and flips, no metrics
    else:
        images = check_batch(1, batch, ref.spec.input_size)
        p = ref.predict(images)
        ref_scores, ref_maps = p.scores, p.maps
    ref.close()
    checks, ref_metrics = [], None
    for folder in folders:
        runner = load(folder)
        try:
            if data is not None:
                scores, maps = run_on_items(runner, items, batch)
            else:
                p = runner.predict(images)
                scores, maps = p.scores, p.maps
            fid = measure(ref_scores, ref_maps, scores, maps, reference=ref_name, candidate=runner.describe(),
                          precision=runner.manifest.precision, threshold=runner.spec.threshold, labels=labels,
                          masks=masks, reference_metrics=ref_metrics)
        finally:
            runner.close()
        ref_metrics = fid.reference_metrics or None
        checks.append(ArtifactCheck(folder, runner.engine, runner.manifest.precision, fid, budget.failures(fid),
                                    runner.manifest.extra.get("quantization"), runner.manifest.extra.get("fidelity")))
    return Report(ref_name, budget, int(np.asarray(ref_scores).size), None if data is None else str(data), checks)
