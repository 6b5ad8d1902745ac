"""Interleaved rounds and their spread, the plain-PyTorch baseline rows and their ratio column, and peaks sampled
once per round dividing the rows of the same round."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from edgead.bench import baseline, roofline, timing
from edgead.bench.latency import bench_target, with_peak_shares
from edgead.bench.schema import BenchResult


class FakeRunner:
    """Takes ``ms[round]`` milliseconds per image on a fake clock and logs each call."""

    engine = "fake"

    def __init__(self, name: str, ms: list[float], clock: list[float], log: list[str]) -> None:
        self.name, self.ms, self.clock, self.log = name, ms, clock, log
        self.spec = SimpleNamespace(input_size=(8, 8))
        self.manifest = SimpleNamespace(precision="fp32")
        self.folder = name
        self.round = 0

    def predict(self, images: np.ndarray) -> SimpleNamespace:
        self.log.append(self.name)
        self.clock[0] += self.ms[self.round] * images.shape[0] / 1e3
        return SimpleNamespace(maps=np.zeros((images.shape[0], 2, 2)))

    def executed_precision(self) -> str:
        return "f32"

    def describe(self) -> str:
        return self.name


def test_rows_are_timed_in_interleaved_rounds_with_their_spread(monkeypatch) -> None:
    clock, log = [0.0], []
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    a = FakeRunner("A", [10.0, 30.0, 20.0], clock, log)  # a drifting machine: round 2 is slow for everyone
    b = FakeRunner("B", [5.0, 15.0, 10.0], clock, log)

    def before_round(r: int) -> None:
        log.append(f"peak{r}")
        a.round = b.round = r

    rows = timing.bench_interleaved([(a, "A", ""), (b, "B", "")], (1, 2), iters=6, warmup=1, rounds=3,
                                    before_round=before_round)
    assert log[:4] == ["A", "A", "B", "B"]  # warm-up at each batch size
    calls = log[4:]
    # per round: the peak, then batch 1 (A twice, B twice), then batch 2: every row once per round
    assert calls[:9] == ["peak0", "A", "A", "B", "B", "A", "A", "B", "B"] and calls[9] == "peak1"
    assert [(r.label, r.batch) for r in rows] == [("A", 1), ("A", 2), ("B", 1), ("B", 2)]
    ra = rows[1]
    assert ra.rounds == 3 and ra.iters == 6
    assert ra.round_ms_per_image == pytest.approx((10.0, 30.0, 20.0))
    assert (ra.min_ms_per_image, ra.median_ms_per_image, ra.max_ms_per_image) == pytest.approx((10.0, 20.0, 30.0))
    assert ra.p50_ms == pytest.approx(40.0)  # pooled over rounds, per batch of 2
    assert rows[2].median_ms_per_image == pytest.approx(10.0)


def test_baseline_modes_follow_the_cpu_flags() -> None:
    avx2 = baseline.baseline_modes({"avx2": True})
    assert [m.label for m in avx2] == ["torch eager fp32", "torch.compile fp32"]
    bf16 = baseline.baseline_modes({"avx2": True, "avx512_bf16": True})
    assert [m.label for m in bf16] == ["torch eager fp32", "torch.compile + bf16 autocast"]
    assert bf16[1].executed == "bf16 autocast"
    assert baseline.baseline_modes({"amx_bf16": True})[1].autocast_bf16


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This test's CPU has AVX512_BF16 (the session's pinned CPU has AVX2 only)."""
    from edgead.bench import machine

    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("test CPU (AVX-512 BF16)", {"avx2", "fma", "avx512f",
                                                                                    "avx512_bf16"}))


def test_baseline_rows_and_the_ratio_column(tiny_export, bf16_cpu) -> None:
    out = tiny_export("fbft") / "export"
    results = bench_target(out, engine=["onnxruntime"], precisions=["fp32"], batches=(1, 2), iters=2, warmup=1,
                           rounds=2, baseline=True, baseline_backend="eager")
    assert [(r.label, r.batch) for r in results] == [
        ("torch eager fp32", 1), ("torch eager fp32", 2), ("torch.compile + bf16 autocast", 1),
        ("torch.compile + bf16 autocast", 2), ("onnxruntime fp32", 1), ("onnxruntime fp32", 2)]
    assert [r.mode for r in results[:4]] == ["eager", "eager", "compile", "compile"]
    assert results[2].executed_precision == "bf16 autocast" and results[0].executed_precision == "f32"
    for b in (1, 2):
        rows = [r for r in results if r.batch == b]
        best = min((r for r in rows if r.mode), key=lambda r: r.median_ms_per_image)
        for r in rows:  # round by round: the rows of one round saw the same machine
            ratios = [x / y for x, y in zip(best.round_ms_per_image, r.round_ms_per_image, strict=True)]
            assert r.baseline == best.label and len(ratios) == 2
            assert r.vs_baseline == pytest.approx(float(np.median(ratios)))
            assert (r.vs_baseline_min, r.vs_baseline_max) == pytest.approx((min(ratios), max(ratios)))
        assert best.vs_baseline == best.vs_baseline_min == best.vs_baseline_max == 1.0


def test_baseline_runner_outputs_match_the_reference(tiny_export) -> None:
    """The compiled rows compute the same detector: fp32 within 1e-5 of eager, bf16 autocast map r >= 0.99."""
    from edgead.runtimes.compare import check_batch

    ckpt = tiny_export("fbft") / "ckpt"
    images = check_batch(3, 2, (56, 56))
    ref = baseline.TorchBaselineRunner.from_checkpoint_mode(ckpt, baseline.BaselineMode("eager")).predict(images)
    f32 = baseline.TorchBaselineRunner.from_checkpoint_mode(ckpt, baseline.BaselineMode("compile"), "eager")
    got = f32.predict(images)
    assert np.abs(got.maps - ref.maps).max() < 1e-5 and np.abs(got.scores - ref.scores).max() < 1e-5
    bf16 = baseline.TorchBaselineRunner.from_checkpoint_mode(ckpt, baseline.BaselineMode("compile", True), "eager")
    low = bf16.predict(images)
    assert low.maps.dtype == np.float32 and low.maps.shape == ref.maps.shape
    assert np.corrcoef(low.maps.ravel(), ref.maps.ravel())[0, 1] >= 0.99


def test_missing_checkpoint_makes_a_skipped_baseline_row() -> None:
    rows, reasons = baseline.baseline_runners(None, {"avx2": True}, have_eager=False)
    assert rows == [] and "no checkpoint" in reasons[0]


def test_shares_divide_each_round_by_the_same_rounds_peak(tiny_export) -> None:
    from edgead.export.flops import onnx_flops

    out = tiny_export("fbft") / "export"
    row = BenchResult("openvino", "fp32", "f32", 2, 4, 4.0, 5.0, 6.0, 2.0, 2.5, 3.0, 500.0, 10.0, label="ov",
                      rounds=2, round_ms_per_image=(2.0, 4.0), min_ms_per_image=2.0, median_ms_per_image=3.0,
                      max_ms_per_image=4.0)
    peaks = {"f32": roofline.Peak("f32", 150.0, "fixed", runs=(200.0, 100.0)),
             "bf16": roofline.Peak("bf16", None, "-"), "int8": roofline.Peak("int8", None, "-")}
    (got,) = with_peak_shares([row], out, peaks=peaks)
    flops = onnx_flops(out / "model.onnx", 2).total
    s1 = flops / 4e-3 / 1e9 / 200.0  # round 1: 2 ms/image x 2 images, peak 200
    s2 = flops / 8e-3 / 1e9 / 100.0  # round 2: slower row, slower peak: the same share
    assert s1 == pytest.approx(s2)
    assert (got.share_min, got.share_of_peak, got.share_max) == pytest.approx((s1, s1, s1))
    assert got.peak_precision == "f32"


def test_peak_sampler_uses_the_engines_kernels_and_keeps_every_sample() -> None:
    pytest.importorskip("openvino")
    sampler = roofline.PeakSampler(shape=(64, 64, 64), seconds=0.01)  # M = 64 = 8 x 8 pixels for the 1x1 conv
    sampler.sample(0)
    sampler.sample(1)
    peaks = sampler.peaks()
    f32 = peaks["f32"]
    # the kernels OpenVINO ran, read from its counters: the FullyConnected product and the 1x1 convolution
    fc, conv = f32.method.split(" | ")
    assert fc.startswith("openvino FullyConnected ") and conv.startswith("openvino Convolution "), f32.method
    assert len(f32.runs) == 2 and f32.runs[0] > 0
    assert f32.gflops == pytest.approx(float(np.median(f32.runs)))
    per_kernel = [sampler.kernel_runs[name] for name, _ in sampler.kernels["f32"]]
    assert list(f32.runs) == pytest.approx([max(a, b) for a, b in zip(*per_kernel, strict=True)])
    assert f32.note.startswith("best of: FullyConnected ") and "numpy" in f32.note and "not the yardstick" in f32.note
    assert peaks["bf16"].gflops is None and "not supported by this CPU" in peaks["bf16"].note  # pinned AVX2 CPU
    assert len(peaks["int8"].runs) == 2 and "AVX2, no VNNI" in peaks["int8"].method
    assert peaks["int8"].method.startswith("openvino FakeQuantize + FullyConnected ")


def test_cli_bench_shows_the_baseline_ratio_and_the_machine(tiny_export, tmp_path) -> None:
    from typer.testing import CliRunner

    from edgead.cli.app import app

    out = tiny_export("fbft") / "export"
    args = ["bench", str(out), "-e", "onnxruntime", "-p", "fp32", "--batch", "1", "--iters", "2", "--rounds", "2",
            "--baseline-backend", "eager", "--no-peak"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema_version"] == 2
    assert [r["label"] for r in doc["results"]] == ["torch eager fp32", "torch.compile fp32", "onnxruntime fp32"]
    assert all(r["vs_baseline"] > 0 and len(r["round_ms_per_image"]) == 2 for r in doc["results"])
    text = CliRunner().invoke(app, args, terminal_width=300)
    assert text.exit_code == 0, text.output
    assert "1.00x" in text.output and "measured on edgead test CPU (AVX2, FMA)" in text.output
    assert "flags: avx2, fma" in text.output
