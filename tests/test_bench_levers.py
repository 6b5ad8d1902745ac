"""bench.levers: the settings it times, interleaved, with parity against the FP32 artifact."""

from __future__ import annotations

import shutil

import pytest

from edgead.bench.levers import measure, settings


def test_settings_per_batch() -> None:
    assert [s.label for s in settings(1, ("int8",))] == ["int8 dynamic", "int8 static 1", "int8 + bf16 rest, static 1"]
    eight = {s.label: s for s in settings(8)}
    assert dict(eight["int8 + bf16 rest, static 8"].options) == {"static_batch": 8, "precision_hint": "bf16"}
    assert eight["int8 throughput streams"].stream and dict(eight["int8 throughput streams"].options)["mode"] == \
        "throughput"
    assert len(eight) == 8


def test_measure_times_each_setting_and_checks_parity(tiny_export, tmp_path) -> None:
    pytest.importorskip("openvino")
    from edgead.export.openvino import compile_openvino

    out = tmp_path / "export"
    shutil.copytree(tiny_export("fbft") / "export", out)
    compile_openvino(out, "fp32")
    rows = measure(out, 2, iters=2, rounds=2, warmup=1)
    assert [r["setting"] for r in rows] == ["fp32 dynamic", "fp32 static 2"]  # no bf16/int8 artifact built
    for r in rows:
        lo, med, hi = r["ms_per_image"]
        assert 0 < lo <= med <= hi and len(r["rounds_ms_per_image"]) == 2
        assert r["map_r"] > 0.99999 and r["max_abs_scores"] < 1e-4  # FP32 in both settings: the same numbers
    assert rows[0]["speedup_vs_dynamic"] == [1.0, 1.0, 1.0]


def test_baseline_rows_run_in_the_same_rounds(tiny_export, tmp_path) -> None:
    pytest.importorskip("openvino")
    from edgead.export.openvino import compile_openvino

    out = tmp_path / "export"
    shutil.copytree(tiny_export("fbft") / "export", out)
    compile_openvino(out, "fp32")
    rows = measure(out, 1, iters=2, rounds=2, warmup=1, baseline=True, baseline_backend="eager", default=True)
    assert [r["setting"] for r in rows][2].startswith("default: ")  # the export itself: no tune record
    torch_rows = [r for r in rows if r["setting"].startswith("torch")]
    assert [r["setting"] for r in torch_rows][0] == "torch eager fp32" and len(torch_rows) == 2
    for r in rows:
        assert len(r["rounds_ms_per_image"]) == 2 and r["torch_row"] in {t["setting"] for t in torch_rows}
        lo, med, hi = r["vs_torch"]
        assert 0 < lo <= med <= hi
    for r in torch_rows:
        assert r["map_r"] > 0.9999 and r["max_abs_scores"] < 1e-3  # PyTorch against the FP32 artifact
