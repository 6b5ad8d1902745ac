import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import run_in_threads

import edgead.runtimes as rt
from edgead.errors import ArtifactError, EdgeadError, InputError, MissingDependencyError
from edgead.runtimes.compare import check_batch


@pytest.fixture(scope="module")
def export_dir(tiny_export):
    return tiny_export("fbft", "layernorm") / "export"


@pytest.fixture(scope="module")
def runner(export_dir):
    return rt.load(export_dir)


def test_predictions_any_n_and_labels(runner):
    p = runner.predict(check_batch(3, 11, (56, 56)))
    assert p.scores.shape == (11,) and p.maps.shape == (11, 56, 56) and p.labels is None
    assert p.scores.dtype == np.float32 and p.maps.dtype == np.float32
    single = runner.predict(check_batch(3, 11, (56, 56))[4])  # one (H, W, 3) image
    np.testing.assert_allclose(single.scores, p.scores[4:5], atol=1e-6)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 56, 56, 3), np.float32), "expected uint8 images, found dtype float32"),
        (np.zeros((56, 56), np.uint8), r"expected images of rank 4 \(N, H, W, 3\), found rank 2"),
        (np.zeros((2, 56, 56, 4), np.uint8), "expected 3 RGB channels last .* found 4"),
        (np.zeros((2, 64, 56, 3), np.uint8), "expected images of 56x56 .* found 64x56"),
        (np.zeros((0, 56, 56, 3), np.uint8), "found an empty batch"),
        ([[1, 2]], "expected a numpy uint8 array"),
    ],
)
def test_bad_batches(runner, images, message):
    with pytest.raises(InputError, match=message):
        runner.predict(images)


def test_non_contiguous_batch_is_accepted(runner):
    x = check_batch(1, 4, (56, 56))
    flipped = x[:, :, ::-1]
    assert not flipped.flags.c_contiguous
    np.testing.assert_allclose(runner.predict(flipped).scores, runner.predict(flipped.copy()).scores, atol=1e-6)


def test_chunking_respects_max_batch(export_dir, monkeypatch):
    r = rt.load(export_dir)
    seen = []
    orig = r._infer
    monkeypatch.setattr(r, "_infer", lambda b: (seen.append(len(b)), orig(b))[1])
    monkeypatch.setattr(type(r), "max_batch", property(lambda self: 4))
    p = r.predict(check_batch(0, 10, (56, 56)))
    assert seen == [4, 4, 2] and p.scores.shape == (10,)


def test_thread_safety_same_results(export_dir):
    r = rt.load(export_dir, engine="openvino")
    x = check_batch(2, 6, (56, 56))
    assert r.executed_precision() == "f32"
    single = r.predict(x)
    expected = single.scores
    results = []

    def work(i):
        p = r.predict(x[i % 3 : i % 3 + 3])
        results.append((i % 3, p.scores, p.maps))

    errors = run_in_threads(work, 8)
    assert not errors and len(results) == 8
    for start, scores, maps in results:  # each thread's answer equals the single-thread one for its images
        np.testing.assert_allclose(scores, single.scores[start : start + 3], rtol=0, atol=1e-5)
        np.testing.assert_allclose(maps, single.maps[start : start + 3], rtol=0, atol=1e-5)
    for workers in (0, 2, 5):  # 5: more requests than batches
        stream = list(r.predict_stream([x[:2], x[2:4], x[4:]], workers=workers))
        np.testing.assert_allclose(np.concatenate([p.scores for p in stream]), expected, atol=1e-5)
    partial = r.predict_stream([x[:2], x[2:4], x[4:]], workers=2)
    np.testing.assert_allclose(next(partial).scores, expected[:2], atol=1e-5)
    partial.close()  # a consumer that stops early leaves no request running


def test_changed_or_corrupt_files_refused(export_dir, tmp_path):
    bad = tmp_path / "changed"
    shutil.copytree(export_dir, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="was changed or is corrupt"):
        rt.load(bad)
    (bad / "manifest.json").write_text("{broken")
    with pytest.raises(ArtifactError, match="is corrupt: expected JSON"):
        rt.load(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="expected manifest.json"):
        rt.load(bad)
    with pytest.raises(ArtifactError, match="found no folder"):
        rt.load(tmp_path / "missing")


def test_artifact_from_newer_edgead_refused(export_dir, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(export_dir, newer)
    m = json.loads((newer / "manifest.json").read_text())
    m["edgead_version"] = "9.0.0"
    (newer / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="written by edgead 9.0.0"):
        rt.load(newer)


def test_engine_errors(export_dir, monkeypatch):
    with pytest.raises(EdgeadError, match="engine must be one of onnxruntime, openvino, trt, torch, found 'x'"):
        rt.load(export_dir, engine="x")
    # tensorrt made unimportable, so this holds on machines where TensorRT is installed too
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgead\[trt\]'"):
        from edgead.errors import require

        require("tensorrt", "trt")


def test_runtime_never_imports_torch(export_dir):
    """Line side: loading and running ONNX Runtime and OpenVINO artifacts with torch made unimportable."""
    from edgead.export.openvino import compile_openvino

    ov_dir = compile_openvino(export_dir, "fp32", out=export_dir.parent / "ov-notorch")
    code = textwrap.dedent(f"""
        import sys
        sys.modules['torch'] = None  # any 'import torch' now raises ImportError
        import numpy as np
        import edgead.runtimes as rt
        x = np.zeros((2, 56, 56, 3), np.uint8)
        for path, engine in [({str(export_dir)!r}, None), ({str(ov_dir)!r}, None)]:
            p = rt.load(path, engine).predict(x)
            assert p.scores.shape == (2,)
        assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_core_modules_import_without_optional_dependencies():
    code = textwrap.dedent("""
        import sys
        for name in ('torch', 'openvino', 'onnxruntime', 'tensorrt', 'nncf', 'timm', 'safetensors'):
            sys.modules[name] = None
        import edgead, edgead.spec, edgead.imageio, edgead.data, edgead.metrics, edgead.viz, edgead.synth
        import edgead.runtimes, edgead.runtimes.manifest, edgead.runtimes.compare, edgead.calib, edgead.evaluate
        import edgead.cli.app
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


# -- time of check to time of use (issue 25, item 8) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def swap_pair(tiny_export):
    """{kind: (artifact folder, a different model's folder of the same kind)}: the FBFT export and its OpenVINO IR,
    each with the DyT twin (other weights, other scores) as the file an attacker swaps in."""
    from edgead.export.openvino import compile_openvino

    good, evil = tiny_export("fbft", "layernorm") / "export", tiny_export("fbft", "dyt") / "export"
    ir = {name: compile_openvino(d, "fp32", out=d.parent / "ov-swap") for name, d in (("good", good), ("evil", evil))}
    return {"onnx": (good, evil), "ir": (ir["good"], ir["evil"])}


def _swap_in(src, dst) -> None:
    """Replace dst's model files (not its manifest) with src's, each by an atomic rename."""
    for p in src.iterdir():
        if p.name.startswith("model."):
            shutil.copy(p, dst / f".{p.name}.tmp")
            (dst / f".{p.name}.tmp").replace(dst / p.name)


@pytest.mark.parametrize("when", ["after_check", "at_engine_read"])
@pytest.mark.parametrize(("engine", "kind"), [("onnxruntime", "onnx"), ("openvino", "onnx"), ("openvino", "ir")])
def test_model_swapped_after_the_hash_check_never_runs(swap_pair, tmp_path, monkeypatch, engine, kind, when):
    """The model file is replaced by another model between the sha256 check and the engine's read: right after
    ``verify_files`` returns, or inside the engine's own read call. The runner refuses the changed file or runs
    the bytes it hashed; before the fix it ran the swapped model silently (its scores, not the manifest's)."""
    import onnxruntime
    import openvino

    from edgead.runtimes import manifest as manifest_mod

    good, evil = swap_pair[kind]
    images = check_batch(3, 4, (56, 56))
    with rt.load(good, engine) as r:
        expected = r.predict(images).scores
    with rt.load(evil, engine) as r:
        swapped = r.predict(images).scores
    assert np.abs(expected - swapped).min() > 1e-3  # the two models are told apart by their scores
    folder = tmp_path / "artifact"
    shutil.copytree(good, folder)
    if when == "after_check":
        real_verify = manifest_mod.verify_files

        def verify_then_swap(f, m):
            real_verify(f, m)
            _swap_in(evil, folder)

        monkeypatch.setattr(manifest_mod, "verify_files", verify_then_swap)
    elif engine == "onnxruntime":
        real_session = onnxruntime.InferenceSession

        def swap_then_session(*args, **kwargs):
            _swap_in(evil, folder)
            return real_session(*args, **kwargs)

        monkeypatch.setattr(onnxruntime, "InferenceSession", swap_then_session)
    else:
        real_read = openvino.Core.read_model

        def swap_then_read(self, *args, **kwargs):
            _swap_in(evil, folder)
            return real_read(self, *args, **kwargs)

        monkeypatch.setattr(openvino.Core, "read_model", swap_then_read)
    if when == "after_check":  # the file the engine would read is not the one hashed: refused
        with pytest.raises(ArtifactError) as info:
            rt.load(folder, engine)
        model = "model.onnx" if kind == "onnx" else "model.xml"
        assert str(info.value) == (f"artifact file {folder / model} was changed or is corrupt: its sha256 differs "
                                   f"from the manifest")
        return
    with rt.load(folder, engine) as r:  # the bytes were hashed before the swap: they are what runs
        np.testing.assert_allclose(r.predict(images).scores, expected, atol=1e-5)


@pytest.mark.parametrize("when", ["after_check", "at_engine_read"])
def test_tensorrt_plan_swapped_after_the_hash_check_never_runs(tmp_path, monkeypatch, when):
    """The TensorRT runner through the fake TensorRT harness (tests/fake_tensorrt.py, nothing real runs): a plan
    swapped after the sha256 check is refused, and one swapped while TensorRT deserializes does not reach it."""
    import edgead.runtimes.trt_runner as trt_runner
    from edgead.models import detector_spec
    from edgead.runtimes import manifest as manifest_mod
    from edgead.runtimes.manifest import write_manifest
    from tests.fake_tensorrt import NumpyCuda, make_tensorrt

    trt, cuda = make_tensorrt("10.8.0", [], max_batch=4, input_size=(14, 14)), NumpyCuda()
    trt.cuda_for_test = cuda
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_runner, "open_cuda", lambda device=0: cuda)
    folder = tmp_path / "trt-fp16"
    folder.mkdir()
    plan, evil = b"fake-plan:10.8.0 hashed", b"fake-plan:10.8.0 swapped in"
    (folder / "model.engine").write_bytes(plan)
    gpu = {"tensorrt_version": "10.8.0", "gpu_name": "Fake GPU", "compute_capability": "8.9"}
    spec = detector_spec("fbft", "vit_tiny_test_patch14", "layernorm", input_size=14)
    write_manifest(folder, "tensorrt", "fp16", "model.engine", spec, batch=(1, 4), extra=gpu)
    seen: list[bytes] = []
    real_deserialize = trt.Runtime.deserialize_cuda_engine

    def deserialize(self, data):
        if when == "at_engine_read":
            (folder / "model.engine").write_bytes(evil)
        seen.append(bytes(data))
        return real_deserialize(self, data)

    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", deserialize)
    if when == "after_check":
        real_verify = manifest_mod.verify_files

        def verify_then_swap(f, m):
            real_verify(f, m)
            (folder / "model.engine").write_bytes(evil)

        monkeypatch.setattr(manifest_mod, "verify_files", verify_then_swap)
        with pytest.raises(ArtifactError) as info:
            rt.load(folder)
        assert str(info.value) == (f"artifact file {folder / 'model.engine'} was changed or is corrupt: its sha256 "
                                   f"differs from the manifest")
        assert seen == []
        return
    with rt.load(folder) as r:
        assert r.predict(check_batch(0, 2, (14, 14))).scores.shape == (2,)
    assert seen == [plan]


def test_onnx_external_data_is_read_through_the_hash_check(swap_pair, tmp_path, monkeypatch):
    """An ONNX model whose weights live in another listed file: ONNX Runtime gets that file's checked bytes from
    memory (a swap after the check is refused like the model's); OpenVINO, which would read it by path, refuses it."""
    import onnx

    from edgead.runtimes import manifest as manifest_mod
    from edgead.runtimes.manifest import read_manifest, write_manifest

    good, evil = swap_pair["onnx"]
    images = check_batch(3, 4, (56, 56))
    with rt.load(good, "onnxruntime") as r:
        expected = r.predict(images).scores
    m = read_manifest(good)
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save(onnx.load(good / "model.onnx"), folder / "model.onnx", save_as_external_data=True,
              location="weights.data")
    write_manifest(folder, m.engine, m.precision, m.model, m.spec, m.versions, m.batch, m.extra)
    with rt.load(folder, "onnxruntime") as r:
        np.testing.assert_allclose(r.predict(images).scores, expected, atol=1e-5)
    with pytest.raises(ArtifactError) as info:
        rt.load(folder, "openvino")
    assert str(info.value) == (f"{folder / 'model.onnx'} keeps its weights in weights.data, which OpenVINO would read "
                               f"by path after the hash check; expected an ONNX model with its weights inside (as "
                               f"edgead exports are), or compile it: edgead compile {folder} --engine openvino")
    onnx.save(onnx.load(evil / "model.onnx"), tmp_path / "evil.onnx", save_as_external_data=True,
              location="evil.data")
    real_verify = manifest_mod.verify_files

    def verify_then_swap(f, man):
        real_verify(f, man)
        (tmp_path / "evil.data").replace(folder / "weights.data")

    monkeypatch.setattr(manifest_mod, "verify_files", verify_then_swap)
    with pytest.raises(ArtifactError, match=r"weights\.data was changed or is corrupt: its sha256 differs"):
        rt.load(folder, "onnxruntime")


def test_read_verified_reads_only_listed_plain_regular_files(export_dir, tmp_path):
    from edgead.runtimes.manifest import read_manifest, read_verified

    m = read_manifest(export_dir)
    assert read_verified(export_dir, m, "model.onnx") == (export_dir / "model.onnx").read_bytes()
    with pytest.raises(ArtifactError) as info:
        read_verified(export_dir, m, "weights.data")
    assert str(info.value) == (f"{export_dir / 'manifest.json'} does not list weights.data, which the model needs; "
                               f"an unlisted file could be changed undetected, so the artifact is refused (re-export "
                               f"it)")
    with pytest.raises(ArtifactError, match=r"is corrupt: expected a plain file name, found '\.\./model\.onnx'"):
        read_verified(export_dir, m, "../model.onnx")
    linked = tmp_path / "linked"
    shutil.copytree(export_dir, linked)
    (linked / "model.onnx").unlink()
    (linked / "model.onnx").symlink_to(export_dir / "model.onnx")  # the right bytes, through a link
    with pytest.raises(ArtifactError, match="to be a regular file inside its folder, found a link"):
        read_verified(linked, m, "model.onnx")
