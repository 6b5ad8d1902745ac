"""Issue 27's tiling acceptance at line resolution, outside the test suite (it takes about a minute of fitting):
``python -m edgead.bench.tiling_check OUT``.

A tiny FBFT is fitted on the 56 px tiles (overlap 14) of three normal 2048x2448 frames, exported and compiled for
OpenVINO, and libedgead is built; one 2048x2448 frame with a 4x4 px bright defect then goes through PyTorch, ONNX
Runtime, OpenVINO (``Runner.predict_frames``) and libedgead (``edgead_predict_frame``). The JSON printed holds,
per runtime, the map's shape, the score and label, the peak's distance from the defect, the largest map and score
differences from PyTorch and the seconds of the call, with the machine's CPU flags. Needs torch, onnxruntime,
openvino, cmake and a C compiler.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

H, W = 2048, 2448
DEFECT = (1301, 1777)  # centre of the 4x4 px defect


def normal_frame(seed: int) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(120, 4, (H, W, 3)), 0, 255).astype(np.uint8)


def run(root: Path) -> dict:
    from edgead.bench.machine import machine_info
    from edgead.export import export_onnx
    from edgead.export.build_c import build_c
    from edgead.export.openvino import compile_openvino
    from edgead.fit import fit
    from edgead.imageio import write_image
    from edgead.models.checkpoint import load_checkpoint
    from edgead.precisions import FP32
    from edgead.registry import ONNX, OPENVINO, TORCH
    from edgead.runtimes import load
    from edgead.runtimes.c_api import CLibrary
    from edgead.spec import TilePlan

    root.mkdir(parents=True, exist_ok=True)
    (root / "train").mkdir(exist_ok=True)
    for i in range(3):
        write_image(root / "train" / f"{i}.png", normal_frame(100 + i))
    t = time.time()
    r = fit(root / "train", root / "ckpt", "fbft", "vit_tiny_test_patch14", "layernorm", 56, epochs=3,
            tiling=TilePlan(56, 14))
    out: dict = {"machine": machine_info(), "frame": [H, W], "defect_center": list(DEFECT), "defect_px": 4,
                 "fit_seconds": round(time.time() - t, 1), "threshold": r.threshold}
    export_onnx(load_checkpoint(r.checkpoint), root / "export")
    ov = compile_openvino(root / "export", FP32.name)
    lib = CLibrary(build_c(root / "lib"))
    frame = normal_frame(5)
    cy, cx = DEFECT
    frame[cy - 2 : cy + 2, cx - 2 : cx + 2] = (255, 255, 40)
    results = {}
    ref = TORCH.name
    for name, path, engine in ((ref, r.checkpoint, None), (ONNX.name, root / "export", ONNX.name),
                               (OPENVINO.name, ov, OPENVINO.name)):
        with load(path, engine) as runner:
            t0 = time.perf_counter()
            p = runner.predict_frames(frame)
            results[name] = (float(p.scores[0]), p.maps[0], bool(p.labels[0]), time.perf_counter() - t0)
    with lib.open(ov) as h:
        t0 = time.perf_counter()
        s, m = h.predict_frame(frame)
        results["libedgead"] = (s, m, not s <= h.threshold, time.perf_counter() - t0)
    ref_s, ref_m = results[ref][0], results[ref][1]
    for name, (s, m, label, seconds) in results.items():
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        out[name] = {"map_shape": list(m.shape), "score": s, "anomalous": label, "seconds": round(seconds, 2),
                     "peak": [int(peak[0]), int(peak[1])],
                     "peak_distance_px": round(float(np.hypot(peak[0] - cy, peak[1] - cx)), 2),
                     "max_abs_map_vs_torch": float(np.abs(m - ref_m).max()), "abs_score_vs_torch": abs(s - ref_s)}
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m edgead.bench.tiling_check OUT_FOLDER")
    print(json.dumps(run(Path(sys.argv[1])), indent=1, default=str))
