"""Benchmark harness: JSON schema and table of a tiny run, interleaved rounds and their spread, the plain-PyTorch
baseline rows and their ratio column, the interleaved peaks (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from edgead.bench.latency import (
    SCHEMA_VERSION,
    BenchResult,
    bench_runner,
    bench_target,
    render_table,
    run_bench,
)
from edgead.bench.norms import build_study_detector
from edgead.export.onnx import export_onnx
from edgead.runtimes.torch_runner import TorchRunner

RESULT_KEYS = {
    "engine": str,
    "precision": str,
    "executed_precision": str,
    "batch": int,
    "iters": int,
    "p50_ms": float,
    "p90_ms": float,
    "p99_ms": float,
    "p50_ms_per_image": float,
    "p90_ms_per_image": float,
    "p99_ms_per_image": float,
    "throughput_ips": float,
    "peak_rss_mb": float,
    "label": str,
    "artifact": str,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    det = build_study_detector("fbft", "vit_tiny_test_patch14", "dyt", 56, seed=0)
    out = tmp_path_factory.mktemp("bench_export")
    export_onnx(det, out)
    return det, out


def test_json_schema_of_a_tiny_run(tiny, tmp_path: Path) -> None:
    _, export = tiny
    path = tmp_path / "bench.json"
    console = Console(record=True, width=200)
    results = run_bench(
        export,
        engine=["onnxruntime"],
        precisions=["fp32", "int8"],
        batches=(1, 2),
        iters=2,
        json_path=path,
        console=console,
        warmup=1,
        rounds=2,
    )
    assert [(r.engine, r.precision, r.batch) for r in results] == [
        ("onnxruntime", "fp32", 1),
        ("onnxruntime", "fp32", 2),
        ("onnxruntime", "int8", 1),
        ("onnxruntime", "int8", 2),
    ]
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and doc["kind"] == "edgead.bench"
    m = doc["machine"]
    assert isinstance(m["cpu_model"], str) and isinstance(m["cores"], int) and m["cores"] >= 1
    assert set(m["flags"]) >= {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
    assert all(isinstance(v, bool) for v in m["flags"].values())
    assert isinstance(m["versions"]["onnxruntime"], str)
    measured = [r for r in doc["results"] if r["skipped"] is None]
    assert len(measured) == 2
    for r in measured:
        for key, typ in RESULT_KEYS.items():
            assert isinstance(r[key], typ), key
        assert r["iters"] == 2 and r["executed_precision"] == "f32" and r["rounds"] == 2
        assert len(r["round_ms_per_image"]) == 2
        assert r["min_ms_per_image"] == min(r["round_ms_per_image"]) <= r["median_ms_per_image"]
        assert r["median_ms_per_image"] <= r["max_ms_per_image"] == max(r["round_ms_per_image"])
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["p50_ms_per_image"] == pytest.approx(r["p50_ms"] / r["batch"])
        assert r["peak_rss_mb"] > 10
    skipped = [r for r in doc["results"] if r["skipped"] is not None]
    assert len(skipped) == 2 and all(r["p50_ms"] is None and r["throughput_ips"] is None for r in skipped)
    text = console.export_text()
    assert "onnxruntime" in text and "skipped onnxruntime int8" in text


def test_missing_artifacts_and_engines_are_skipped_with_a_reason(tiny) -> None:
    _, export = tiny
    results = bench_target(
        export, engine=["openvino", "torch"], precisions=None, batches=(1,), iters=1, warmup=0
    )
    by = {(r.engine, r.precision): r for r in results}
    assert set(by) == {("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"), ("torch", "fp32")}
    assert all(r.skipped for r in results)  # nothing compiled, and the export names no checkpoint
    assert "openvino-int8" in by[("openvino", "int8")].skipped
    table = Console(record=True, width=240)
    table.print(render_table(results))
    assert "skipped openvino bf16" in table.export_text()


def test_bench_runner_on_a_torch_detector(tiny) -> None:
    det, _ = tiny
    runner = TorchRunner.from_detector(det)
    (r,) = bench_runner(runner, (3,), iters=2, warmup=0, label="tiny")
    assert (r.engine, r.batch, r.iters, r.label) == ("torch", 3, 2, "tiny")
    assert runner.executed_precision() == "f32"
    assert r.throughput_ips > 0
    assert set(r.to_dict()) >= set(RESULT_KEYS) | {"skipped", "share_of_peak", "peak_precision", "rounds",
                                                   "round_ms_per_image", "vs_baseline", "baseline"}
    assert BenchResult.skip("trt", "fp16", 1, "no GPU").to_dict()["skipped"] == "no GPU"


def test_cli_json_is_a_flag_and_json_out_a_file(tiny, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgead.cli.app import app

    _, export = tiny
    args = ["bench", str(export), "-e", "onnxruntime", "-p", "fp32", "--batch", "1", "--iters", "1", "--no-peak",
            "--no-baseline"]
    res = CliRunner().invoke(app, [*args, "--json", "--json-out", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # stdout holds the JSON document and nothing else
    assert doc["kind"] == "edgead.bench" and [(r["engine"], r["batch"]) for r in doc["results"]] == [
        ("onnxruntime", 1)]
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["skipped"] is None
