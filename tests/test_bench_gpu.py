"""``bench --device cuda``: the GPU column runs where torch sees CUDA and is skipped with one line elsewhere."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgead.cli.app import app

torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the benchmark would run")
def test_norms_on_cuda_skips_with_one_line_here() -> None:
    result = CliRunner().invoke(app, ["bench", "norms", "--device", "cuda", "--iters", "2"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("skipped --device cuda: torch ")
    assert f"torch {torch.__version__} sees no CUDA device" in " ".join(result.output.split())


def test_cuda_device_takes_the_torch_engine_only() -> None:
    result = CliRunner().invoke(app, ["bench", "x", "--device", "cuda", "--engine", "openvino"])
    assert result.exit_code == 1
    result = CliRunner().invoke(app, ["bench", "x", "--device", "tpu"])
    assert result.exit_code == 1


@pytest.mark.gpu
def test_gpu_modes_time_a_tiny_detector() -> None:
    from edgead.bench.gpu import bench_detector
    from edgead.models import build_detector, detector_spec

    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", "dyt", input_size=56))
    results = bench_detector(det, "tiny", batches=(1, 2), iters=3, modes=("eager", "cuda-graph"))
    assert [(r.mode, r.batch) for r in results] == [("eager", 1), ("cuda-graph", 1), ("eager", 2),
                                                    ("cuda-graph", 2)]
    assert all(r.skipped is None and r.ms_p50 > 0 for r in results)
