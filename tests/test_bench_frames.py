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
