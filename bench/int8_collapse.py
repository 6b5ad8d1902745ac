"""The INT8 loss case, reproduced and then met with a budget: ``python -m edgead.bench.int8_collapse OUT``.

A detector (default: FBFT ViT-S/14, the family's default epochs) is fitted on a real texture photograph
(``bench.textures``, 120 training tiles) or on a synthetic category (``--data object``), exported, and compiled
to OpenVINO INT8 and Q/DQ INT8 twice: plainly (``--accept-drop``, to see the loss) and with ``--max-drop``
(default 0.005 image AUROC). Both measure against FP32 on a **labelled validation split** (``--val``: for a
photograph the left half of its test band, for a synthetic category a second set drawn with another seed) and
``verify`` then measures on the **test split** (disjoint pixels / seed). For each artifact it reports both, the
layers kept in float, and its latency (batch 1, median ms/image, one interleaved run, with the CPU's flags), so the
cost of the float layers is a ratio measured in one run. Minutes on a 2-core CPU; kept out of the test suite
(tests/test_calib.py covers the same code paths on a tiny model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from edgead import precisions, registry
from edgead.errors import EdgeadError

SYNTHETIC = ("texture", "object")


def _row(folder: Path, test: Any) -> dict[str, Any]:
    from edgead.runtimes.manifest import read_manifest

    extra = read_manifest(folder).extra
    fid, quant = extra.get("fidelity") or {}, extra.get("quantization") or {}
    f = test.fidelity
    return {"artifact": folder.name, "float_layers": len(quant.get("float_layers", [])),
            "quantized_layers": quant.get("quantized_layers"), "float_layer_names": quant.get("float_layers", []),
            "val": {"images": (fid.get("validation") or {}).get("images"), "auroc_drop": fid.get("drop"),
                    "map_r": fid.get("map_r"), "flips": fid.get("flips"), "passed": fid.get("passed")},
            "test": {"auroc_drop": f.drop("image_auroc"), "aupro_drop": f.drop("aupro"), "map_r": f.map_r,
                     "flips_to_anomalous": f.flips_to_anomalous, "flips_to_normal": f.flips_to_normal,
                     "score_error_rel": f.score_error_rel, "passed": test.passed}}


def make_data(out: Path, source: str, size: int, n_train: int) -> tuple[Path, Path]:
    """(training + test category, labelled validation category)."""
    if source in SYNTHETIC:
        from edgead.synth import make_synthetic

        cat = make_synthetic(out / "data", categories=(source,), size=size, n_train=n_train, n_test_good=20,
                             n_test_defect=5, seed=0) / source
        val = make_synthetic(out / "val", categories=(source,), size=size, n_train=1, n_test_good=20,
                             n_test_defect=5, seed=1) / source
        return cat, val
    from edgead.bench.textures import make_textures

    root = make_textures(out / "data", photos=(source,), size=size, n_train=n_train, n_val_good=20, n_val_defect=5)
    return root / source, root / f"{source}_val"


def latency(folders: dict[str, tuple[Path, str]], rounds: int = 3, iters: int = 15) -> dict[str, float]:
    """Median ms/image at batch 1 of each artifact, timed interleaved over ``rounds`` rounds."""
    import edgead.runtimes as rt
    from edgead.bench.timing import bench_runner

    runners = {k: rt.load(f, engine) for k, (f, engine) in folders.items()}
    runs: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            runs[k].append(float(bench_runner(r, [1], iters, 3, k)[0].p50_ms_per_image))
    for r in runners.values():
        r.close()
    return {k: statistics.median(v) for k, v in runs.items()}


def run(out: Path, source: str = "grass", family: str = "fbft", backbone: str | None = None, size: int = 224,
        epochs: int | None = None, max_drop: float = 0.005, n_train: int = 120) -> dict[str, Any]:
    from edgead.bench.machine import machine_info
    from edgead.export import export_onnx
    from edgead.export.compile import compile_artifact
    from edgead.fidelity import Budget
    from edgead.fit import fit
    from edgead.models.build import default_backbone
    from edgead.models.checkpoint import load_checkpoint
    from edgead.verify import verify_artifacts

    t0 = time.time()
    cat, val = make_data(out, source, size, n_train)
    r = fit(cat, out / "ckpt", family, backbone, "layernorm", size, epochs=epochs)
    fit_s = time.time() - t0
    export = out / "export"
    export_onnx(load_checkpoint(r.checkpoint), export, source=r.checkpoint)
    full, int8 = precisions.full().name, precisions.INT8.name
    engines = [e.name for e in registry.tunable()]  # the CPU engines, OpenVINO first
    rows: list[dict[str, Any]] = []
    timed: dict[str, tuple[Path, str]] = {f"{e} {full}": (registry.artifact_folder(export, e, full), e)
                                          for e in engines}
    for e in engines:  # the full-precision artifacts that are not the export itself
        if registry.get(e).folder_for(full) != ".":
            compile_artifact(export, e, full)
    for label, kwargs in (("plain", {"accept_drop": True}),
                          ("budget", {"budget": Budget(max_drop=max_drop), "accuracy_aware": True})):
        for engine in engines:
            t = time.time()
            try:
                folder = compile_artifact(export, engine, int8, cat, val=val, **kwargs)
            except EdgeadError as exc:
                rows.append({"run": label, "engine": engine, "error": str(exc), "compile_s": time.time() - t})
                continue
            compile_s = time.time() - t
            test = next(c for c in verify_artifacts(export, cat).checks if c.folder == folder)
            if label == "plain":  # keep the plain artifact beside the budgeted one
                target = export / f"{folder.name}-plain"
                shutil.rmtree(target, ignore_errors=True)
                folder = folder.rename(target)
            rows.append({"run": label, "engine": engine, "compile_s": compile_s, **_row(folder, test)})
            timed[f"{engine} {int8} {label}"] = (folder, engine)
    ms = latency(timed)
    for row in rows:
        row["ms_per_image"] = ms.get(f"{row['engine']} {int8} {row['run']}")
    m = machine_info()
    return {"case": {"data": source, "family": family, "backbone": backbone or default_backbone(family),
                     "size": size, "epochs": epochs, "n_train": n_train, "max_drop": max_drop, "fit_s": fit_s},
            "machine": {"cpu_model": m["cpu_model"], "cores": m["cores"],
                        "flags": sorted(f for f, on in m["flags"].items() if on)},
            "fp32_ms_per_image": {k: v for k, v in ms.items() if k.endswith(full)}, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", default="grass", help="brick | grass | gravel (photographs) or texture | object")
    ap.add_argument("--family", default="fbft")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--train", type=int, default=120)
    a = ap.parse_args(argv)
    doc = run(a.out, a.data, a.family, a.backbone, a.size, a.epochs, a.max_drop, a.train)
    (a.out / "int8_collapse.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps(doc, indent=2, default=str))


if __name__ == "__main__":
    main()
