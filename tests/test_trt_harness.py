"""The TensorRT runner's and builder's bookkeeping on a CPU, through the fake TensorRT test harness
(``tests/fake_tensorrt.py``): nothing here runs TensorRT, every check is of what edgead itself does."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import edgead.runtimes.trt_runner as trt_runner
from edgead.errors import ArtifactError, EdgeadError
from edgead.runtimes.compare import check_batch
from edgead.runtimes.manifest import read_manifest, write_manifest
from tests.fake_tensorrt import NumpyCuda, make_tensorrt

SIZE = 14
VERSION = "10.8.0"
GPU = {"tensorrt_version": VERSION, "gpu_name": "Fake GPU", "compute_capability": "8.9"}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    """Install a fake tensorrt and a numpy CUDA backend; yields (trt module, cuda, call log)."""
    calls: list[str] = []
    trt = make_tensorrt(VERSION, calls, max_batch=4, input_size=(SIZE, SIZE))
    cuda = NumpyCuda()
    trt.cuda_for_test = cuda
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_runner, "open_cuda", lambda device=0: cuda)
    return trt, cuda, calls


def _engine_folder(tmp_path: Path, extra: dict | None = None) -> Path:
    from edgead.models import detector_spec

    folder = tmp_path / "trt-fp16"
    folder.mkdir()
    (folder / "model.engine").write_bytes(b"fake-plan:" + VERSION.encode())
    spec = detector_spec("fbft", "vit_tiny_test_patch14", "layernorm", input_size=SIZE)
    write_manifest(folder, "tensorrt", "fp16", "model.engine", spec, batch=(1, 4), extra=extra or GPU)
    return folder


def _expected(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = images.reshape(len(images), -1).mean(axis=1, dtype=np.float64).astype(np.float32)
    return scores, images[..., 0].astype(np.float32) / 255.0


def test_runner_chunks_into_the_profile_and_copies_by_value(fake, tmp_path: Path) -> None:
    _trt, cuda, calls = fake
    import edgead.runtimes

    images = check_batch(3, 10, (SIZE, SIZE))  # 10 > max 4: chunks of 4, 4, 2
    with edgead.runtimes.load(_engine_folder(tmp_path)) as r:
        assert r.max_batch == 4
        got = r.predict(images)
        scores, maps = _expected(images)
        np.testing.assert_array_equal(got.scores, scores)
        np.testing.assert_array_equal(got.maps, maps)
        assert cuda.counts["sync"] == 3 and cuda.device_selections == 3  # once per chunk, on its thread
        # one scratch block and one device + one pinned buffer per I/O tensor
        assert cuda.counts["alloc_device"] == 1 + 3 and cuda.counts["alloc_host"] == 3
    assert cuda.counts["free"] == 1 + 3 + 3 and cuda.closed
    assert calls[:3] == ["Runtime", "runtime.deserialize_cuda_engine",
                         "engine.create_execution_context(USER_MANAGED)"]


def test_cuda_graphs_once_per_batch_size_on_one_shared_scratch_block(fake, tmp_path: Path) -> None:
    trt, cuda, calls = fake
    import edgead.runtimes

    with edgead.runtimes.load(_engine_folder(tmp_path), cuda_graph=True) as r:
        for n in (3, 3, 2, 3, 2):
            images = check_batch(n + cuda.counts["launch"], n, (SIZE, SIZE))
            got = r.predict(images)
            np.testing.assert_array_equal(got.maps, _expected(images)[1])
            np.testing.assert_array_equal(got.scores, _expected(images)[0])
        assert r.captures == 2 and cuda.counts["capture"] == 2  # batch 3 and batch 2, never again
        assert cuda.counts["launch"] == 5
        contexts = [c for c in calls if c.startswith("engine.create_execution_context")]
        assert contexts == ["engine.create_execution_context(USER_MANAGED)"] * 3  # plain + one per batch size
        assert calls.count("context.set_device_memory") == 3
        scratch = {ctx.scratch for ctx in r._engine.contexts}
        assert len(scratch) == 1  # every context on the same block
        assert cuda.counts["alloc_device"] == 1 + 3


def test_device_is_selected_on_every_calling_thread(fake, tmp_path: Path) -> None:
    _trt, cuda, _calls = fake
    import edgead.runtimes

    with edgead.runtimes.load(_engine_folder(tmp_path)) as r:
        before = cuda.device_selections
        images = check_batch(1, 2, (SIZE, SIZE))
        threads = [threading.Thread(target=r.predict, args=(images,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert cuda.device_selections - before == 3


def test_runner_refuses_an_engine_from_another_tensorrt_before_deserializing(fake, tmp_path: Path) -> None:
    _trt, _cuda, calls = fake
    import edgead.runtimes

    folder = _engine_folder(tmp_path, {**GPU, "tensorrt_version": "10.3.0"})
    with pytest.raises(ArtifactError, match="built with TensorRT 10.3.0 .* the TensorRT version differs"):
        edgead.runtimes.load(folder)
    assert "runtime.deserialize_cuda_engine" not in calls


# -- the builder ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("onnxconverter_common")
    from edgead.export import export_onnx
    from edgead.models import build_detector, detector_spec

    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", "layernorm", input_size=28))
    out = tmp_path_factory.mktemp("export") / "out"
    export_onnx(det, out)
    return out


def _build(monkeypatch, exported: Path, out: Path, version: str = VERSION, **fake_kw) -> list[str]:
    from edgead.export.tensorrt import compile_trt

    calls: list[str] = []
    trt = make_tensorrt(version, calls, **fake_kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_runner, "open_cuda", lambda device=0: NumpyCuda())
    compile_trt(exported, "fp16", "1:2:4", workspace_gb=1, out=out)
    return calls


def test_builder_call_sequence_is_strongly_typed_from_the_fp16_graph(monkeypatch, exported: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "trt-fp16"
    calls = _build(monkeypatch, exported, out)
    assert calls == ["Builder", "builder.create_network(32)", "parser.parse_from_file(onnx-fp16/model.onnx)",
                     f"config.set_memory_pool_limit({1 << 30})", "profile.set_shape(images, 1, 2, 4)",
                     "config.add_optimization_profile", "config.create_timing_cache(0 bytes)",
                     "config.set_timing_cache(ok)", "builder.build_serialized_network"]
    m = read_manifest(out)
    assert m.extra["strongly_typed"] is True and m.extra["timing_cache"] == "none"
    assert m.extra["source"] == "onnx-fp16/model.onnx" and m.batch == (1, 4)
    check = m.extra["cpu_check"]
    assert check["precision"] == "fp16" and check["map_r"] >= 0.999 and check["max_abs_maps"] > 0
    assert (out / "model.engine").read_bytes() == b"fake-plan:" + VERSION.encode()
    # TensorRT 11: always strongly typed, the deprecated flag is not passed
    calls11 = _build(monkeypatch, exported, tmp_path / "trt11", version="11.1.0")
    assert "builder.create_network(0)" in calls11


def test_builder_reuses_the_timing_cache_and_rebuilds_a_rejected_one(monkeypatch, exported: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "trt-fp16"
    _build(monkeypatch, exported, out)
    cache = (out / "timing.cache").read_bytes()
    calls = _build(monkeypatch, exported, out)
    assert f"config.create_timing_cache({len(cache)} bytes)" in calls and calls.count("config.create_timing_cache"
                                                                                    "(0 bytes)") == 0
    assert read_manifest(out).extra["timing_cache"] == "reused"
    # after a TensorRT upgrade create_timing_cache returns None: the build starts a fresh cache
    calls = _build(monkeypatch, exported, out, reject_cache=cache)
    assert calls.count("config.create_timing_cache(0 bytes)") == 1
    assert read_manifest(out).extra["timing_cache"] == "rebuilt"
    # a cache from another GPU: set_timing_cache says False, a fresh one replaces it
    (out / "timing.cache").write_bytes(b"other-gpu")
    calls = _build(monkeypatch, exported, out, mismatch_cache=b"other-gpu")
    assert "config.set_timing_cache(mismatch)" in calls and calls[-2] == "config.set_timing_cache(ok)"


def test_builder_refuses_unsupported_versions_and_legacy_int8_on_11(monkeypatch, exported: Path,
                                                                    tmp_path: Path) -> None:
    from edgead.export.tensorrt import compile_trt

    for version in ("9.3.0", "12.0.0"):
        with pytest.raises(EdgeadError, match=f"TensorRT 10.1\\+ or 11.x, found TensorRT {version}"):
            _build(monkeypatch, exported, tmp_path / "x", version=version)
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("11.1.0"))
    with pytest.raises(EdgeadError, match="entropy .* removed in TensorRT 11.*use --int8-mode qdq") as e:
        compile_trt(exported, "int8", calib_dir=tmp_path, int8_mode="entropy")
    assert "\n" not in str(e.value)


REMOVED_IN_11 = re.compile(r"BuilderFlag\.(FP16|INT8|BF16|OBEY_PRECISION_CONSTRAINTS)|int8_calibrator|"
                           r"set_calibration_profile|platform_has_fast_")
DEFAULT_PATH = ["export/tensorrt.py", "export/fp16.py", "export/precision.py", "export/qdq_check.py",
                "export/islands.py", "runtimes/trt_runner.py", "runtimes/cuda.py", "calib/onnx_qdq.py"]


def test_no_name_removed_in_tensorrt_11_on_the_default_path() -> None:
    root = Path(__file__).resolve().parents[1]
    found = {p: REMOVED_IN_11.findall((root / p).read_text()) for p in DEFAULT_PATH}
    assert not any(found.values()), found
    # the legacy entropy option keeps them, in one function of its own module
    import inspect

    from edgead.calib.trt_calibrator import configure_legacy_int8

    legacy = inspect.getsource(configure_legacy_int8)
    assert len(REMOVED_IN_11.findall(legacy.split('"""')[-1])) == 4


def test_legacy_calibrator_counts_cache_reads_and_batches(monkeypatch, tmp_path: Path) -> None:
    from edgead.calib.dataset import CalibrationSet
    from edgead.calib.trt_calibrator import CalibrationFeeder, make_entropy_calibrator
    from edgead.imageio import write_image
    from edgead.models import detector_spec

    trt = make_tensorrt(VERSION)
    trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {"__init__": lambda self: None})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for i, img in enumerate(check_batch(5, 5, (SIZE, SIZE))):
        write_image(tmp_path / f"{i}.png", img)
    spec = detector_spec("fbft", "vit_tiny_test_patch14", "layernorm", input_size=SIZE)
    cuda, cache = NumpyCuda(), tmp_path / "calibration.cache"
    cal = make_entropy_calibrator(CalibrationFeeder(CalibrationSet(tmp_path, spec), 2), cache, cuda)
    assert cal.read_calibration_cache() is None and cal.cache_reads == 0
    while cal.get_batch(["images"]) is not None:
        pass
    assert cal.batches_fed == 3 and cal.error is None  # 5 images in batches of 2
    cal.write_calibration_cache(memoryview(b"scales"))
    assert cal.read_calibration_cache() == b"scales" and cal.cache_reads == 1
    assert cal.get_batch(["a", "b"]) is None and "one input" in str(cal.error)  # kept for compile_trt
    cal.close()
    assert cuda.counts["free"] == 2
