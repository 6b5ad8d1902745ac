"""The engine registry: one row per engine, read by the loader, ``compile``, the benchmark and the CLI.

A fake engine (a test harness: its runner returns the image mean, its compiler copies the ONNX export) is
registered here and must show up in ``load``, ``compile`` and ``compile --help`` and in the benchmark's list
without any other file knowing it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgead import registry
from edgead.errors import ArtifactError, EdgeadError
from edgead.runtimes.base import Runner
from edgead.runtimes.manifest import read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]


# -- the fake engine (a test harness, not an engine) --------------------------------------------------------
class FakeRunner(Runner):
    """Scores = mean pixel value / 255, maps = per-pixel channel mean / 255: easy to check by hand."""

    engine = "fake"

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = images.astype(np.float32) / 255.0
        return x.mean(axis=(1, 2, 3)), x.mean(axis=3)


RUNNER = FakeRunner


def fake_compile(out: Path, precision: str, calib: Path | None, **_: object) -> Path:
    from edgead.export.onnx import source_onnx

    onnx_path, src = source_onnx(out)
    target = registry.artifact_folder(out, "fake", precision)
    target.mkdir()
    shutil.copy(onnx_path, target / "model.fake")
    write_manifest(target, "fake-rt", precision, "model.fake", src.spec)
    return target


FAKE = registry.Engine(
    name="fake", manifest_name="fake-rt", aliases=("fk",), runner=__name__, package="numpy", extra="fake",
    precisions=("fp32", "int4"), compiler=f"{__name__}:fake_compile", compiles=("fp32",),
    folder="fake-{precision}",
)


@pytest.fixture
def fake_engine():
    with registry.registered(FAKE):
        yield FAKE
    assert "fake" not in registry.ENGINES


@pytest.fixture(scope="module")
def export(tiny_export) -> Path:
    return tiny_export("fbft", "layernorm") / "export"


# -- the built-in rows ---------------------------------------------------------------------------------------
def test_builtin_rows() -> None:
    trt = registry.get("tensorrt")
    assert (trt.name, trt.manifest_name, trt.extra, trt.package) == ("trt", "tensorrt", "trt", "tensorrt")
    assert registry.for_artifact("tensorrt").name == "trt"
    assert registry.for_artifact("onnxruntime").name == "onnxruntime"
    assert registry.get("ov").runs_artifacts == ("openvino", "onnxruntime")
    assert registry.reference().name == "torch"
    out = Path("/x/out")
    assert registry.artifact_folder(out, "onnxruntime", "fp32") == out
    assert registry.artifact_folder(out, "ort", "int8") == out / "onnx-int8"
    assert registry.artifact_folder(out, "openvino", "bf16") == out / "openvino-bf16"
    assert registry.artifact_folder(out, "trt", "fp16") == out / "trt-fp16"
    assert registry.get("openvino").build_hint("int8") == \
        "edgead compile OUT --engine openvino --precision int8 --calib DIR"
    assert registry.get("onnxruntime").build_hint("int8") == "edgead calibrate OUT --calib DIR"
    assert registry.get("onnxruntime").build_hint("fp32") == ""
    with pytest.raises(EdgeadError, match="engine must be one of onnxruntime, openvino, trt, torch, found 'coreml'"):
        registry.get("coreml")
    with pytest.raises(EdgeadError, match="engine name 'ov' is taken by engine 'openvino'"):
        registry.register(registry.Engine("ov2", "ov2", "m", "p", "e", ("fp32",), aliases=("ov",)))
    assert "ov2" not in registry.ENGINES


def test_missing_package_names_the_extra() -> None:
    ghost = registry.Engine("ghost", "ghost", "m", "no_such_package_xyz", "ghost", ("fp32",), needs="a ghost")
    assert ghost.missing() == "no_such_package_xyz is not installed: pip install 'edgead[ghost]' (and a ghost)"
    assert FAKE.missing() is None


def test_checkpoint_and_artifact_markers(tmp_path: Path, export: Path) -> None:
    assert not registry.is_checkpoint(export)  # it has a manifest
    assert registry.is_checkpoint(export.parent / "ckpt")
    assert not registry.is_checkpoint(tmp_path)


def test_exported_graph_uses_the_registry_tensor_names(export: Path) -> None:
    import onnx

    model = onnx.load(str(export / read_manifest(export).model), load_external_data=False)
    assert [i.name for i in model.graph.input] == [registry.INPUT]
    assert tuple(o.name for o in model.graph.output) == registry.OUTPUTS
    assert read_manifest(export).engine == registry.get("onnxruntime").manifest_name


# -- a fake engine added to the registry alone ---------------------------------------------------------------
def test_fake_engine_compiles_loads_and_runs(fake_engine, export: Path) -> None:
    import edgead.runtimes as rt
    from edgead.export.compile import compile_artifact

    folder = compile_artifact(export, "fk", "fp32")
    try:
        assert folder == export / "fake-fp32" and read_manifest(folder).engine == "fake-rt"
        images = np.arange(2 * 56 * 56 * 3, dtype=np.uint32).reshape(2, 56, 56, 3).astype(np.uint8)
        with rt.load(folder) as runner:  # the default engine for a fake-rt artifact
            assert isinstance(runner, FakeRunner)
            p = runner.predict(images)
        np.testing.assert_allclose(p.scores, images.mean(axis=(1, 2, 3)) / 255.0, rtol=1e-5)
        assert isinstance(rt.load(folder, engine="fake"), FakeRunner)
        with pytest.raises(ArtifactError, match="engine 'openvino' cannot run a fake-rt artifact"):
            rt.load(folder, engine="openvino")
        with pytest.raises(EdgeadError, match="fake precision must be one of fp32, found 'int4'"):
            compile_artifact(export, "fake", "int4")
        assert "fake" in rt.available_engines()
    finally:
        shutil.rmtree(folder)


def _help(*command: str) -> str:
    from edgead.cli.app import app

    out = CliRunner().invoke(app, [*command, "--help"]).output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())


def test_fake_engine_in_compile_help(fake_engine) -> None:
    text = _help("compile")
    assert "One of: onnxruntime, openvino, trt, fake." in text
    assert "fake: fp32; or auto (any engine: edgead tune" in text
    text = _help("predict")
    assert "One of: onnxruntime, openvino, trt, torch, fake." in text


def test_fake_engine_in_the_benchmark(fake_engine, export: Path) -> None:
    from edgead.bench.latency import bench_target

    results = bench_target(export, engine=None, batches=(1,), iters=1, warmup=0)
    fake = {r.precision: r for r in results if r.engine == "fake"}
    assert set(fake) == {"fp32", "int4"}
    assert fake["fp32"].skipped == (
        "no fake-fp32/ artifact (build it: edgead compile OUT --engine fake --precision fp32)")
    assert fake["int4"].skipped == "no fake-int4/ artifact"
    assert [r.engine for r in results][0] == "torch"  # the reference first, then the registry's order


# -- the C core runs the engines whose manifests the registry names -----------------------------------------
def _c_sources() -> str:
    return "\n".join(p.read_text() for p in sorted((REPO / "runtimes" / "c").glob("*.c*")))


def test_c_core_engine_names_match_the_registry() -> None:
    """Every engine name the C sources compare a manifest's engine against is a registry manifest name, and the
    engines libedgead runs (OpenVINO for its own IR and for ONNX exports, TensorRT) are all covered."""
    text = _c_sources()
    compared = set(re.findall(r'strcmp\(\s*[\w>.-]*engine\s*,\s*"([\w-]+)"\s*\)', text))
    manifest_names = {e.manifest_name for e in registry.ENGINES.values()}
    assert compared, "no engine comparisons found in runtimes/c (did the sources move?)"
    assert compared <= manifest_names, compared - manifest_names
    assert set(registry.get("openvino").runs_artifacts) | {registry.get("trt").manifest_name} <= compared


def test_c_backends_use_the_registry_tensor_names() -> None:
    c = REPO / "runtimes" / "c"
    ov, trt = (c / "edgead_openvino.c").read_text(), (c / "edgead_tensorrt.cpp").read_text()
    for name in registry.OUTPUTS:
        assert re.search(rf'output_by_name\([^;]*"{name}"', ov), name
    found = dict(re.findall(r'constexpr const char\* k(\w+) = "(\w+)";', trt))
    assert (found["Images"], found["Scores"], found["Maps"]) == (registry.INPUT, *registry.OUTPUTS)


def test_git_grep_finds_folder_and_manifest_names_only_in_the_registry() -> None:
    """The literal spellings of folder patterns and manifest names live in edgead/registry.py (and tests, docs)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for literal in ('"onnx-{precision}"', '"openvino-{precision}"', '"onnx-int8"', '"openvino-', '"trt-',
                    '"tensorrt", precision', 'ENGINES: dict[str, tuple'):
        out = subprocess.run(["git", "grep", "-l", "-F", literal, "--", "*.py"], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
        assert [f for f in out if not f.startswith("tests/")] in ([], ["edgead/registry.py"]), (literal, out)
