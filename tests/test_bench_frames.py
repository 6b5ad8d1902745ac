"""``edgead bench --frame HxW`` (edgead.bench.frames): a tiled artifact gives a tiled and a full-frame row on whole
frames; an untiled one only the full-frame row. Times are not asserted (speed lives in the benchmark), only what
was run: the paths, the tile count and the frame size."""

from __future__ import annotations

import json
import sys

import pytest

from edgead.bench.frames import bench_frames, bench_frames_target


def test_bench_frames_times_tiled_and_full_frame_and_restores_the_choice(tiled_export):
    from edgead.runtimes import load

    _, export = tiled_export
    with load(export, "onnxruntime") as runner:
        plan = runner.tiling
        rows = bench_frames(runner, (300, 250), iters=2, warmup=0)
        assert runner.tiling == plan
    assert [(r.path, r.tiles, r.overlap, r.frame, r.input_size) for r in rows] == [
        ("tiled", 42, 14, (300, 250), (56, 56)), ("full-frame", 1, None, (300, 250), (56, 56))]
    assert all(r.iters == 2 and 0 < r.min_ms <= r.p50_ms <= r.max_ms for r in rows)


def test_every_runner_of_a_target_is_timed_in_the_same_rounds(tiled_export, monkeypatch):
    """``edgead bench --frame``: all runners loaded first, then round after round every row once (A B A B), not
    one runner's calls after another's."""
    from edgead.runtimes.base import Runner

    _, export = tiled_export
    order: list[tuple[str, bool]] = []
    real = Runner.predict_frames

    def record(self, frames):  # noqa: ANN001, ANN202
        order.append((self.manifest.precision, self.tiling is not None))
        return real(self, frames)

    monkeypatch.setattr(Runner, "predict_frames", record)
    rows, _ = bench_frames_target(export, (120, 90), ["onnxruntime"], ["fp32"], iters=4, warmup=0, rounds=2)
    assert [(r.path, r.rounds, len(r.round_ms), r.iters) for r in rows] == [("tiled", 2, 2, 4), ("full-frame", 2, 2, 4)]
    timed = order[2:]  # one call per row first: the map's size is checked before timing
    assert timed == [("fp32", True)] * 2 + [("fp32", False)] * 2 + [("fp32", True)] * 2 + [("fp32", False)] * 2


def test_untiled_artifact_has_only_the_full_frame_row(tiny_export):
    rows, skipped = bench_frames_target(tiny_export("fbft") / "export", (120, 90), ["onnxruntime"], ["fp32", "int8"],
                                        iters=1, warmup=0)
    assert [(r.engine, r.precision, r.path, r.tiles) for r in rows] == [("onnxruntime", "fp32", "full-frame", 1)]
    assert len(skipped) == 1 and skipped[0].startswith("onnxruntime int8: no onnx-int8/ artifact")


def test_cli_bench_frame_json(tiled_export, capfd, monkeypatch):
    from edgead.cli.app import main

    _, export = tiled_export
    monkeypatch.setattr(sys, "argv", ["edgead", "bench", str(export), "--frame", "300x250", "--engine",
                                      "onnxruntime", "--iters", "1", "--json"])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capfd.readouterr().out
    assert exit_.value.code in (0, None), out
    doc = json.loads(out)
    assert doc["kind"] == "edgead.bench.frames" and "flags" in doc["machine"]
    assert [(r["path"], r["tiles"], r["frame"]) for r in doc["results"]] == [
        ("tiled", 42, [300, 250]), ("full-frame", 1, [300, 250])]


def test_interleaved_rows_share_a_runner_and_compare_maps(tiled_export):
    """Two rows on one runner (tiled and full-frame) plus a torch row: every row timed in every round, the
    speed-up of the reference is exactly 1, a row compared with itself has map r 1, and the runner's plan is
    restored."""
    import numpy as np

    from edgead.bench.frames import FrameRow, bench_frames_interleaved, render_interleaved
    from edgead.runtimes import load

    ckpt, export = tiled_export
    frames = np.random.default_rng(1).integers(0, 256, (2, 120, 90, 3), dtype=np.uint8)
    with load(export, "onnxruntime") as ort, load(ckpt) as torch_runner:
        plan = ort.tiling
        rows = [FrameRow(torch_runner, "torch", None, None), FrameRow(ort, "ort tiled", True, "torch"),
                FrameRow(ort, "ort full", False, "ort full")]
        out, cond = bench_frames_interleaved(rows, frames, rounds=2, iters=1, warmup=0)
        assert ort.tiling == plan
    assert [(r.label, r.path, r.tiles) for r in out] == [("torch", "tiled", 6), ("ort tiled", "tiled", 6),
                                                         ("ort full", "full-frame", 1)]
    assert all(len(r.round_s) == 2 and 0 < r.min_s <= r.median_s <= r.max_s for r in out)
    assert out[0].speedup == (1.0, 1.0, 1.0) and out[0].map_r is None
    assert out[1].map_r > 0.999  # ONNX Runtime against PyTorch, same checkpoint, same tiles
    assert out[2].map_r == 1.0
    assert len(cond["load"]) == 2 and cond["machine"]["flags"]
    assert "| ort tiled |" in render_interleaved(out, cond)


def test_interleaved_parse_row_and_refusals():
    import numpy as np

    from edgead.bench.frames import FrameRow, bench_frames_interleaved, parse_row
    from edgead.errors import EdgeadError

    assert parse_row("ov int8=/a/b:precision_hint=bf16:ref=torch") == (
        "ov int8", "/a/b", {"precision_hint": "bf16", "ref": "torch"})
    with pytest.raises(EdgeadError, match="LABEL=PATH"):
        parse_row("/a/b")
    from edgead.bench.frames import _map_file

    assert _map_file("ov bf16 tiled 518/0") == "ov_bf16_tiled_518_0.npy"  # a label is not a path
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(EdgeadError, match="unique labels"):
        bench_frames_interleaved([FrameRow(object(), "a", None, "b")], frames)


def test_evaluate_frames_scores_each_pixel_at_the_masks_resolution(tiled_export, tmp_path):
    """Tiled and full-frame evaluation of one runner on a 4-image category of 300x250 frames: maps meet masks at
    300x250 on both paths; the tiled map finds the bright 6 px defects (pixel AUROC high), and the runner's plan is
    restored."""
    import numpy as np

    from edgead.bench.frames import evaluate_frames
    from edgead.imageio import write_image
    from edgead.runtimes import load

    _, export = tiled_export
    for sub in ("test/good", "test/spot", "ground_truth/spot"):
        (tmp_path / sub).mkdir(parents=True)
    for i in range(2):
        rng = np.random.default_rng(200 + i)
        write_image(tmp_path / f"test/good/{i}.png", np.clip(rng.normal(120, 4, (300, 250, 3)), 0, 255).astype(
            np.uint8))
        frame = np.clip(rng.normal(120, 4, (300, 250, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((300, 250), np.uint8)
        r, c = 60 + 120 * i, 50 + 100 * i
        frame[r : r + 6, c : c + 6] = (255, 255, 40)
        mask[r : r + 6, c : c + 6] = 255
        write_image(tmp_path / f"test/spot/{i}.png", frame)
        write_image(tmp_path / f"ground_truth/spot/{i}_mask.png", np.repeat(mask[..., None], 3, 2))
    with load(export, "onnxruntime") as runner:
        plan = runner.tiling
        tiled = evaluate_frames(runner, tmp_path)
        full = evaluate_frames(runner, tmp_path, tiled=False)
        assert runner.tiling == plan
    assert (tiled["path"], full["path"], tiled["images"]) == ("tiled", "full-frame", 4)
    # two 36 px regions of one area: every cumulative quartile holds both
    assert tiled["pixel_auroc"] > 0.95 and tiled["by_size"]["regions"] == [2, 2, 2, 2]
    assert 0.0 <= full["q1_aupro"] <= 1.0
