"""The INT8 collapse case, reproduced and then met with a budget: ``python -m edgead.bench.int8_collapse OUT``.

A detector (default: FBFT ViT-S/14, default epochs) is fitted on a real texture photograph
(``bench.textures``), exported, and compiled to OpenVINO INT8 and Q/DQ INT8 twice: plainly (``--accept-drop``,
to see the collapse) and with ``--max-drop`` (default 0.005 image AUROC). For each artifact it reports the
validation-split figures measured at compile time (calibration hold-out + painted defects) and the test-split
figures from ``verify`` (the photograph's held-out band with painted defects), with the layers kept in float.
Latency of each artifact: ``edgead bench OUT/export``. Minutes on a 2-core CPU at the default size; kept out
of the test suite (tests/test_calib.py covers the same code paths on a tiny model).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from edgead.errors import EdgeadError


def _row(folder: Path, test: Any) -> dict[str, Any]:
    from edgead.runtimes.manifest import read_manifest

    extra = read_manifest(folder).extra
    fid, quant = extra.get("fidelity") or {}, extra.get("quantization") or {}
    f = test.fidelity
    return {"artifact": folder.name, "float_layers": len(quant.get("float_layers", [])),
            "quantized_layers": quant.get("quantized_layers"),
            "val": {"drop": fid.get("drop"), "map_r": fid.get("map_r"), "flips": fid.get("flips"),
                    "passed": fid.get("passed")},
            "test": {"auroc_drop": f.drop("image_auroc"), "aupro_drop": f.drop("aupro"), "map_r": f.map_r,
                     "flips_to_anomalous": f.flips_to_anomalous, "score_error_rel": f.score_error_rel,
                     "passed": test.passed}}


def run(out: Path, photo: str = "grass", backbone: str = "vit_small_patch14_dinov2", size: int = 224,
        epochs: int | None = None, max_drop: float = 0.005, n_train: int = 40) -> list[dict[str, Any]]:
    from edgead.bench.textures import make_textures
    from edgead.export import export_onnx
    from edgead.export.compile import compile_artifact
    from edgead.fit import fit
    from edgead.models.checkpoint import load_checkpoint
    from edgead.verify import verify_artifacts

    cat = make_textures(out / "data", photos=(photo,), size=size, n_train=n_train) / photo
    r = fit(cat, out / "ckpt", "fbft", backbone, "layernorm", size, epochs=epochs)
    export = out / "export"
    export_onnx(load_checkpoint(r.checkpoint), export, source=r.checkpoint)
    rows = []
    for label, kwargs in (("plain", {"accept_drop": True}), ("budget", {"max_drop": max_drop})):
        for engine in ("openvino", "onnxruntime"):
            try:
                folder = compile_artifact(export, engine, "int8", cat, **kwargs)
            except EdgeadError as exc:
                rows.append({"run": label, "engine": engine, "error": str(exc)})
                continue
            test = next(c for c in verify_artifacts(export, cat).checks if c.folder == folder)
            rows.append({"run": label, "engine": engine, **_row(folder, test)})
            if label == "plain":  # keep the collapsed artifact beside the budgeted one
                shutil.rmtree(export / f"{folder.name}-plain", ignore_errors=True)
                folder.rename(export / f"{folder.name}-plain")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--photo", default="grass")
    ap.add_argument("--backbone", default="vit_small_patch14_dinov2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--train", type=int, default=40)
    a = ap.parse_args(argv)
    rows = run(a.out, a.photo, a.backbone, a.size, a.epochs, a.max_drop, a.train)
    (a.out / "int8_collapse.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
