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


def test_engine_capabilities_are_row_fields() -> None:
    """What tune, the loader and the bench used to compare names for, read from the rows."""
    assert registry.exporter().name == "onnxruntime" and registry.reference().name == "torch"
    assert [e.name for e in registry.tunable()] == ["openvino", "onnxruntime"]  # preferred first; no GPU, no torch
    ov, ort, trt = registry.get("ov"), registry.get("ort"), registry.get("tensorrt")
    assert ov.runner_options("throughput", 8) == {"mode": "throughput", "static_batch": 8}
    assert ort.runner_options("throughput", 8) == {"static_batch": 8}  # one mode: nothing to choose
    assert trt.runner_options("latency", 8) == {}  # no fixed-batch setting in its runner
    assert (ov.model_file, ort.model_file, trt.model_file) == ("model.xml", "model.onnx", "model.engine")
    assert (ov.short, ort.short, trt.short, trt.device, ov.device) == ("ov", "ort", "trt", "GPU", "CPU")
    assert [e.name for e in registry.ENGINES.values() if e.profiler] == ["onnxruntime", "openvino"]
    assert registry.find("tensorrt") is trt and registry.find("coreml") is None


def test_the_precision_table() -> None:
    from edgead import precisions as P

    assert P.get("float32") is P.FP32 and P.full() is P.FP32 and P.find("bfloat16") is P.BF16
    assert [P.executed(n) for n in ("fp32", "float32", "fp16", "bf16", "int8", "u8", "i8", "weird")] == [
        "f32", "f32", "f16", "bf16", "int8", "int8", "int8", "weird"]
    assert P.FP32.targets == ("atol",) and P.INT8.targets == P.BF16.targets == ("min_map_r", "max_drop", "max_q1_drop")
    assert (P.FP16.min_map_r, P.BF16.min_map_r, P.INT8.min_map_r, P.FP32.min_map_r) == (0.999, 0.99, 0.99, None)
    assert [(p.name, p.openvino_hint) for p in P.PRECISIONS.values()] == [
        ("fp32", "f32"), ("fp16", ""), ("bf16", "bf16"), ("int8", "f32")]
    assert [p.name for p in P.PRECISIONS.values() if p.gated] == ["bf16", "int8"]
    assert [p.name for p in P.PRECISIONS.values() if p.quantized] == ["int8"]
    avx2, spr = {"avx2": True}, {"avx2": True, "amx_bf16": True, "amx_int8": True}
    assert P.native(avx2) == [] and [p.name for p in P.native(spr)] == ["bf16", "int8"]
    assert [p.name for p in P.native({"avx_vnni": True})] == ["int8"]
    assert not P.FP16.native_on(spr) and P.FP32.native_on(avx2)  # FP16 is a GPU precision; FP32 runs anywhere
    assert [p.name for p in P.ladder()] == ["int8", "bf16", "fp32"]  # fastest first, full precision last
    with pytest.raises(EdgeadError, match="precision must be one of fp32, fp16, bf16, int8, found 'int4'"):
        P.get("int4")


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


# -- engine and precision names are decided on in the registry and the precision table only -------------------
def _decision_pattern() -> re.Pattern[str]:
    """A decision on an engine or precision name spelled as a literal: a comparison (``== "openvino"``), a
    membership test (``in ("bf16", "int8")``, ``"int8" in x``), a dict key or subscript (``{"fp32": ...}``,
    ``d["int8"]``, ``.get("openvino")``), a literal tuple of two names, a ``startswith``/``case`` on one. The names
    come from the tables themselves (every engine name, alias and manifest name; every precision name, alias,
    executed name and engine spelling), so a new row is covered without editing this test."""
    from edgead import precisions

    names = {n for e in registry.ENGINES.values() for n in (e.name, *e.aliases, e.manifest_name)}
    names |= {n for p in precisions.PRECISIONS.values() for n in (p.name, *p.aliases, p.executed, *p.spellings)}
    lit = '"(?:' + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + ')"'
    forms = [
        rf"(?:==|!=)\s*{lit}", rf"{lit}\s*(?:==|!=)",  # comparisons
        rf"\bin\s*[(\[{{][^)\]}}]*{lit}", rf"{lit}\s+(?:not\s+)?in\s",  # membership, either side
        rf"(?:[{{,]|^)\s*{lit}\s*:(?!\s*\w+\.__version__)",  # dict keys (not a package-version record)
        rf"\[\s*\(?\s*{lit}", rf"\.(?:get|startswith|endswith|pop)\(\s*{lit}",  # subscripts and look-ups
        rf"(?:^|[^\w.])\(\s*{lit}\s*,", rf"\bcase\s+{lit}",  # literal tuples led by a name (not calls); case
    ]
    return re.compile("|".join(forms))


#: modules outside the two tables that still decide on a literal name, with how many such lines they may keep;
#: the count may only go down. Each entry is owed a migration to the registry rows and the precision table.
NAME_DECISIONS_OWED: dict[str, int] = {}  # nothing owed: every decision reads the tables


#: not scanned: the tests, and the peers' scripts, which run in a peer's own venv and import nothing from edgead
NOT_EDGEAD = ("tests/", "bench/peers/")


def _code(line: str) -> str:
    """A source line without its comment (a whole-line one, or an inline one after two spaces)."""
    return "" if line.lstrip().startswith("#") else re.split(r"\s\s#\s", line)[0]


def _name_decisions() -> dict[str, list[str]]:
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    pattern, found = _decision_pattern(), {}
    for f in files:
        if f.startswith(NOT_EDGEAD) or f in ("edgead/registry.py", "edgead/precisions.py") or not (REPO / f).is_file():
            continue
        hits = [f"{i}: {line.strip()}" for i, line in enumerate((REPO / f).read_text().splitlines(), 1)
                if pattern.search(_code(line))]
        if hits:
            found[f] = hits
    return found


@pytest.mark.parametrize("line, decides", [
    ('if engine == "openvino":', True), ('if precision != "int8":', True), ('x = "fp32" == p', True),
    ('elif precision in ("bf16", "int8"):', True), ('if c.precision in {"fp32"}:', True),
    ('if "int8" in precisions:', True), ('_RANK = {"fp32": 3, "bf16": 2}', True), ('d["int8"]', True),
    ('arts[("onnxruntime", "fp32", "")]', True), ('{"openvino": f}.get(engine)', True),
    ('for name in ("openvino", "onnxruntime"):', True), ('LADDER = ("int8", "bf16", "fp32")', True),
    ('FULL_PRECISION = ("fp32",)', True), ('    "int8": 0.99,', True),
    ('flags.get("u8")', True), ('if engine not in ("torch", "all"):', True), ('case "trt":', True),
    ('ov = require("openvino", "openvino", "compiling")', False), ('versions = {"torch": torch.__version__}', False),
    ('help="openvino, onnxruntime or trt"', False), ('engine: str = "openvino",', False),
    ('raise InputError(f"expected --engine openvino, found {engine!r}")', False),
    ('if precision == "fp32x":', False), ('if engine == ENGINE.name:', False),
    ('rows = [BenchResult.skip("torch", "fp32", b)]', False), ('x = 1  # {"torch": FlopCount}', False),
])
def test_the_name_decision_pattern_is_precise(line: str, decides: bool) -> None:
    assert bool(_decision_pattern().search(_code(line))) is decides


def test_git_grep_finds_engine_and_precision_decisions_only_in_the_tables() -> None:
    """No module outside edgead/registry.py and edgead/precisions.py decides on an engine or precision name spelled
    as a literal (issue 26): capabilities are fields of the engine rows, facts are rows of the precision table.
    Modules still owed a migration are listed in NAME_DECISIONS_OWED and may only lose such lines."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    found = _name_decisions()
    over = {f: hits for f, hits in found.items() if len(hits) > NAME_DECISIONS_OWED.get(f, 0)}
    assert not over, "decide through the registry rows or edgead.precisions instead:\n" + "\n".join(
        f"{f}:{h}" for f, hits in over.items() for h in hits)
