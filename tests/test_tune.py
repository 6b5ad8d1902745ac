"""``edgead tune``: what is a candidate on which CPU, which candidate wins, and what ``load(OUT)`` then runs.

The choice logic is tested with fake candidates (a test harness: made-up timings and verdicts, no engine runs).
"""

from __future__ import annotations

import warnings

import pytest

from edgead.errors import EdgeadError, FidelityError
from edgead.tune import Candidate, Measured, choose, plan, record

AVX2 = {"avx2": True, "fma": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "avx512_bf16": False,
        "amx_bf16": False, "amx_int8": False}
VNNI_BF16 = {**AVX2, "avx512f": True, "avx512_vnni": True, "avx512_bf16": True}


def names(cands):
    return sorted(c.name for c in cands)


def test_plan_builds_only_what_makes_sense_on_the_cpu():
    both = ["openvino", "onnxruntime"]
    keep, out = plan(AVX2, both, has_calib=True, batch=1)
    assert names(keep) == ["onnxruntime fp32", "onnxruntime fp32 (static 1)", "openvino fp32",
                           "openvino fp32 (static 1)"]
    reasons = {m.candidate.name: m.skipped for m in out}
    assert "no BF16 instructions" in reasons["openvino bf16"]
    assert reasons.get("onnxruntime fp16", "FP16 graphs are for GPUs").startswith("FP16 graphs are for GPUs")
    assert "no VNNI/AMX" in reasons["openvino int8"] and "no VNNI/AMX" in reasons["onnxruntime int8"]

    keep, out = plan(VNNI_BF16, both, has_calib=True, batch=8)
    keep = [c for c in keep if not c.rest]  # the float-rest variants: test_plan_adds_the_bf16_rest_variant_...
    dynamic = [c for c in keep if c.static is None]
    assert names(dynamic) == ["onnxruntime fp32", "onnxruntime int8", "openvino bf16", "openvino bf16 (throughput)",
                              "openvino fp32", "openvino fp32 (throughput)", "openvino int8",
                              "openvino int8 (throughput)"]
    # fixed at the line's batch in latency mode; at one image in throughput mode (the runner spreads the batch's
    # images over its concurrent requests)
    assert sorted(c.name for c in keep if c.static) == sorted(
        c.name[:-1] + ", static 1)" if c.name.endswith(")") else c.name + " (static 8)" for c in dynamic)
    assert [c.runner_options() for c in keep if c.name == "openvino int8 (throughput, static 1)"] == [
        {"mode": "throughput", "static_batch": 1}]
    keep, out = plan(VNNI_BF16, ["onnxruntime"], has_calib=False, batch=1)
    assert names(keep) == ["onnxruntime fp32", "onnxruntime fp32 (static 1)"]
    assert {m.candidate.name: m.skipped for m in out}["onnxruntime int8"] == "no calibration images (--calib DIR)"
    assert [m.skipped for m in out if m.candidate.engine == "openvino"] != [""]


AMX = {**AVX2, "avx512f": True, "avx512_vnni": True, "avx512_bf16": True, "amx_bf16": True, "amx_int8": True}
VNNI_ONLY = {**AVX2, "avx512f": True, "avx512_vnni": True}


def test_plan_adds_the_bf16_rest_variant_only_where_bf16_is_native():
    """The INT8 IR with what NNCF left in float run in BF16 (OpenVINO's precision hint; issue 28): one more
    candidate per INT8 setting where the CPU runs BF16 natively, on the same artifact; elsewhere a left-out row."""
    both = ["openvino", "onnxruntime"]
    for flags in (VNNI_BF16, AMX):
        keep, _ = plan(flags, both, has_calib=True, batch=1)
        rest = [c for c in keep if c.rest]
        assert names(rest) == ["openvino int8 + bf16 rest", "openvino int8 + bf16 rest (static 1)"]
        assert [c.runner_options() for c in rest] == [{"mode": "latency", "precision_hint": "bf16"},
                                                      {"mode": "latency", "static_batch": 1, "precision_hint": "bf16"}]
        assert {(c.engine, c.precision) for c in rest} == {("openvino", "int8")}  # the plain INT8 artifact's folder
    keep, _ = plan(VNNI_BF16, both, has_calib=True, batch=8)
    assert names(c for c in keep if c.rest) == [
        "openvino int8 + bf16 rest", "openvino int8 + bf16 rest (static 8)", "openvino int8 + bf16 rest (throughput)",
        "openvino int8 + bf16 rest (throughput, static 1)"]
    keep, out = plan(VNNI_ONLY, both, has_calib=True, batch=1)  # INT8 native, BF16 not: plain INT8 only
    assert "openvino int8 (static 1)" in names(keep) and not [c for c in keep if c.rest]
    assert "no BF16 instructions" in {m.candidate.name: m.skipped for m in out}["openvino int8 + bf16 rest"]
    for flags, calib in ((AVX2, True), (VNNI_BF16, False)):  # no INT8 candidate: no variant of it either
        keep, _ = plan(flags, both, has_calib=calib, batch=1)
        assert not [c for c in keep if c.rest or c.precision == "int8"]


def fake(engine, precision, ms, passed=True, mode="latency", rest=None):
    """A made-up measured candidate (test harness)."""
    return Measured(Candidate(engine, precision, mode, rest=rest), f"{engine}-{precision}", passed,
                    () if passed else ("map r 0.5670 < 0.99",), ms_per_image=ms if passed else None)


def test_choose_prefers_the_float_rest_in_f32_on_a_tie():
    plain, rest = fake("openvino", "int8", 30.0), fake("openvino", "int8", 29.5, rest="bf16")
    assert choose([rest, plain], noise=0.03).candidate.rest is None
    assert choose([rest, plain], noise=0.0).candidate.rest == "bf16"
    assert choose([fake("openvino", "int8", 25.0, rest="bf16"), plain]).candidate.rest == "bf16"
    # a BF16 artifact within the noise keeps more of the model than INT8 with a bf16 rest
    assert choose([fake("openvino", "int8", 25.0, rest="bf16"), fake("openvino", "bf16", 25.5)]).candidate.precision \
        == "bf16"


def test_choose_takes_the_fastest_that_passes_its_gate():
    ms = [fake("openvino", "fp32", 100.0), fake("onnxruntime", "fp32", 120.0), fake("openvino", "int8", 40.0),
          fake("openvino", "bf16", 70.0)]
    assert choose(ms).candidate.name == "openvino int8"
    # the INT8 artifact that flags every good part fails its gate: never chosen, however fast
    ms[2] = fake("openvino", "int8", 10.0, passed=False)
    assert choose(ms).candidate.name == "openvino bf16"
    # within the noise margin the higher precision wins; outside it, speed does
    close = [fake("openvino", "fp32", 101.0), fake("openvino", "int8", 99.0)]
    assert choose(close, noise=0.03).candidate.precision == "fp32"
    assert choose(close, noise=0.0).candidate.precision == "int8"
    assert choose([fake("openvino", "fp32", 90.0, mode="throughput"), fake("openvino", "fp32", 100.0)]).candidate.mode \
        == "throughput"


def test_choose_refuses_when_nothing_passes():
    """A measured miss is a FidelityError (the default compile's ladder falls back on it); nothing built at all is
    a plain EdgeadError (it must surface)."""
    with pytest.raises(FidelityError, match="found none .*openvino int8: map r 0.5670 < 0.99"):
        choose([fake("openvino", "int8", 10.0, passed=False),
                Measured(Candidate("openvino", "bf16"), skipped="no BF16 instructions")])
    with pytest.raises(EdgeadError, match="found none .*openvino int8: nncf is not installed") as info:
        choose([Measured(Candidate("openvino", "int8"), skipped="nncf is not installed")])
    assert not isinstance(info.value, FidelityError)


@pytest.fixture()
def tuned_export(tiny_export, tmp_path):
    """A copy of a tiny export with an OpenVINO f32 artifact, and a recorded decision naming it."""
    import shutil

    from edgead.bench.machine import machine_info
    from edgead.export.openvino import compile_openvino

    out = tmp_path / "export"
    shutil.copytree(tiny_export("fbft") / "export", out)
    compile_openvino(out, "fp32")
    m = machine_info()
    decision = {"chosen": {"engine": "openvino", "precision": "fp32", "mode": "throughput", "folder": "openvino-fp32",
                           "ms_per_image": 1.0},
                "machine": {"cpu_model": m["cpu_model"], "cores": m["cores"], "flags": m["flags"]}, "candidates": []}
    record(out, decision)
    return out, decision


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_a_static_batch_session_matches_the_dynamic_one_for_any_batch(tiny_export, engine):
    """Batch axis fixed at 2: batches of 1, 2 and 3 run chunked and padded, with the dynamic session's results."""
    import numpy as np

    import edgead.runtimes as rt
    from edgead.export.openvino import compile_openvino

    export = tiny_export("fbft") / "export"
    folder = compile_openvino(export, "fp32") if engine == "openvino" else export
    images = np.random.default_rng(3).integers(0, 256, (3, *rt.load(export).spec.input_size, 3), dtype=np.uint8)
    dynamic, static = rt.load(folder, engine), rt.load(folder, engine, static_batch=2)
    assert (static.min_batch, static.max_batch) == (2, 2)
    for n in (1, 2, 3):
        a, b = dynamic.predict(images[:n]), static.predict(images[:n])
        assert b.maps.shape == a.maps.shape and np.abs(b.maps - a.maps).max() <= 1e-5
        assert np.abs(b.scores - a.scores).max() <= 1e-5
    with pytest.raises(EdgeadError, match="expected a positive static batch size, found 0"):
        rt.load(folder, engine, static_batch=0)


def test_load_runs_the_tuned_choice_and_warns_on_another_machine(tuned_export):
    import edgead.runtimes as rt

    out, decision = tuned_export
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = rt.load(out)
    assert (r.engine, r.folder.name) == ("openvino", "openvino-fp32")
    assert rt.load(out, "onnxruntime").engine == "onnxruntime"  # an explicit engine still wins
    flags = decision["machine"]["flags"]
    decision["machine"]["flags"] = {**flags, "amx_int8": not flags["amx_int8"]}  # another CPU, whatever this one is
    record(out, decision)
    with pytest.warns(UserWarning, match="chosen by edgead tune on another machine"):
        r = rt.load(out)
    assert r.engine == "openvino"


def test_bench_rows_carry_their_share_of_the_measured_peak(tiny_export, monkeypatch):
    """Each measured row gets FLOPs / p50 over the peak of the precision it executed (peaks are fixed here)."""
    from edgead.bench import latency, roofline
    from edgead.bench.report import render_table
    from edgead.bench.schema import BenchResult
    from edgead.export.flops import onnx_flops

    out = tiny_export("fbft") / "export"
    peaks = {"f32": roofline.Peak("f32", 100.0, "fixed"), "bf16": roofline.Peak("bf16", None, "-"),
             "int8": roofline.Peak("int8", 400.0, "fixed")}
    monkeypatch.setattr(roofline, "measure_peaks", lambda *a, **k: peaks)
    row = BenchResult("onnxruntime", "fp32", "f32", 2, 5, 4.0, 5.0, 6.0, 2.0, 2.5, 3.0, 500.0, 10.0)
    int8 = BenchResult("openvino", "int8", "int8 (40/40 matmuls)", 2, 5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 2e3, 10.0)
    skipped = BenchResult.skip("trt", "fp16", 2, "no GPU")
    got = latency.with_peak_shares([row, int8, skipped], out)
    flops = onnx_flops(out / "model.onnx", 2).total
    assert got[0].share_of_peak == pytest.approx(flops / 4e-3 / 1e9 / 100.0) and got[0].peak_precision == "f32"
    assert got[1].share_of_peak == pytest.approx(flops / 1e-3 / 1e9 / 400.0) and got[1].peak_precision == "int8"
    assert got[2].share_of_peak is None
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    Console(file=buf, width=250).print(render_table(got))
    assert f"{100 * got[0].share_of_peak:.0f} % of f32" in buf.getvalue()


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_per_op_profile_groups_every_executed_node(tiny_export, engine):
    from edgead.bench.profile import GROUPS, classify, profile

    out = tiny_export("fbft") / "export"
    if engine == "openvino":
        from edgead.export.openvino import compile_openvino

        folder = out / "openvino-fp32"
        if not (folder / "manifest.json").is_file():
            compile_openvino(out, "fp32")
    else:
        folder = out
    doc = profile(folder, engine, batch=2, iters=3)
    groups = {g["group"]: g for g in doc["groups"]}
    assert set(groups) <= set(GROUPS) and "products" in groups and "score" in groups
    assert sum(g["share"] for g in doc["groups"]) == pytest.approx(1.0)
    assert doc["total_ms"] == pytest.approx(sum(g["ms"] for g in doc["groups"]))
    assert classify("/backbone/blocks.3/norm1/Tanh", "Tanh", False) == "norm"
    assert classify("/post/TopK", "TopK", False) == "score"
    assert classify("/Cast", "Cast", True) == "layout" and classify("/Mul", "Multiply", True) == "preprocess"


def test_compile_precision_auto_end_to_end_on_a_tiny_export(tiny_export, tiny_synthetic, tmp_path):
    """``compile --precision auto`` = tune: plan, build (through the compile-time gate), gate again, time and
    record; load(OUT) then runs the choice."""
    import json
    import shutil

    from typer.testing import CliRunner

    import edgead.runtimes as rt
    from edgead.cli.app import app

    out = tmp_path / "export"
    shutil.copytree(tiny_export("fbft") / "export", out)
    bad = CliRunner().invoke(app, ["compile", str(out), "--precision", "auto", "--batch", "1:x"])
    assert str(bad.exception) == "expected --batch N or MIN:OPT:MAX with --precision auto, found '1:x'"
    res = CliRunner().invoke(app, ["compile", str(out), "--precision", "auto", "--calib",
                                   str(tiny_synthetic / "train" / "good"), "--batch", "1", "--json"])
    assert res.exit_code == 0, res.output
    decision = json.loads(res.stdout)
    assert decision["batch"] == 1
    cands = {c["candidate"]["name"]: c for c in decision["candidates"]}
    assert {"openvino fp32", "onnxruntime fp32"} <= set(cands)
    for c in cands.values():  # every candidate is either timed after passing its gate, or says why not
        assert (c["passed"] and c["ms_per_image"] > 0) or c["skipped"] or c["failures"], c
    assert cands["openvino fp32"]["passed"] and cands["openvino fp32"]["fidelity"]["max_abs_maps"] <= 1e-4
    chosen = decision["chosen"]
    timed = {name: c for name, c in cands.items() if c["passed"]}
    won = next(c for c in timed.values() if c["ms_per_image"] == chosen["ms_per_image"])
    assert won["relative"] <= min(c["relative"] for c in timed.values()) * 1.03 + 1e-9  # ranked round by round
    r = rt.load(out)
    expected = "onnxruntime" if chosen["folder"] == "." else chosen["engine"]
    assert r.engine == expected and r.manifest.precision == chosen["precision"]
    from edgead.runtimes.manifest import read_manifest

    assert read_manifest(out).extra["tune"]["machine"]["flags"] == decision["machine"]["flags"]


@pytest.mark.parametrize("how", ["flat", "nan"])
def test_the_tune_gate_refuses_flat_or_nan_outputs(tiny_export, how):
    """tune's own gate (no labels: held-out images only) once passed an INT8 candidate with one value per map."""
    import edgead.runtimes as rt
    from edgead.runtimes.compare import check_batch
    from edgead.tune import _gate
    from tests.test_verify import FLAT, NAN, Broken

    export = tiny_export("fbft") / "export"
    with rt.load(export, "onnxruntime") as ref, rt.load(export, "onnxruntime") as runner:
        images = check_batch(7, 4, ref.spec.input_size)
        passed, failures, fid = _gate(Broken(runner, how, "int8"), ref, images, "int8", 1e-6)
    assert not passed and list(failures) == [f.format(n=4) for f in (FLAT if how == "flat" else NAN)]
    assert list(fid["problems"]) == list(failures[:-1])


# -- the INT8 IR with its float rest in BF16 (issue 28) ---------------------------------------------------------
@pytest.fixture(scope="module")
def int8_export(tiny_export, tiny_synthetic, tmp_path_factory):
    """A copy of a tiny export with its OpenVINO INT8 artifact, measured by the compile-time gate (and kept whatever
    the verdict: a random tiny model's 4 held-out normals cannot resolve the project's 0.5-point AUROC budget)."""
    import shutil

    from edgead.export.compile import compile_artifact

    out = tmp_path_factory.mktemp("int8") / "export"
    shutil.copytree(tiny_export("fbft") / "export", out)
    compile_artifact(out, "openvino", "int8", tiny_synthetic / "train" / "good", accept_drop=True)
    return out


@pytest.fixture()
def loose_budget(monkeypatch):
    """Every gate's targets loosened (a test harness: tune's and the compile-time gate's verdicts on a random tiny
    model are a coin toss); NaN/flat outputs still fail."""
    from edgead.fidelity import Budget

    monkeypatch.setattr(Budget, "for_precision", classmethod(
        lambda cls, precision, **_: cls(atol=1.0, min_map_r=0.5, max_drop=1.0, max_q1_drop=1.0)))


def _int8_at_batch_1(*args):
    """tune's plan on a VNNI + BF16 CPU, kept to the OpenVINO INT8 candidates with the batch fixed at 1."""
    keep, out = plan(*args)
    return [c for c in keep if c.precision == "int8" and c.engine == "openvino" and c.static == 1], out


def test_tune_gates_times_and_records_the_bf16_rest_variant(int8_export, tiny_synthetic, loose_budget):
    """Both INT8 settings are gated (the variant also by the compile-time gate, judged again with its hint) and
    timed, from one artifact; the decision's row carries the variant's compile-time figures, and ``load(OUT)`` runs
    a chosen variant with its hint (and an older decision, without the key, as before)."""
    import edgead.runtimes as rt
    from edgead.bench.machine import machine_info
    from edgead.precisions import executed
    from edgead.runtimes.manifest import read_manifest
    from edgead.runtimes.openvino_runner import _type_name
    from edgead.tune import tune

    calib = tiny_synthetic / "train" / "good"
    decision = tune(int8_export, 1, calib, iters=2, rounds=1, flags=VNNI_BF16, planner=_int8_at_batch_1)
    rows = {c["candidate"]["name"]: c for c in decision["candidates"]}
    plain, variant = rows["openvino int8 (static 1)"], rows["openvino int8 + bf16 rest (static 1)"]
    assert plain["passed"] and variant["passed"], (plain, variant)
    assert variant["folder"] == plain["folder"] == "openvino-int8" and not plain["compile_fidelity"]
    gated = variant["compile_fidelity"]
    built = read_manifest(int8_export / "openvino-int8").extra["fidelity"]
    assert gated["measured"] and gated["passed"] and gated["validation"] == built["validation"]  # the same images
    assert gated["budget"]["max_drop"] == 1.0 and gated["map_r"] > 0.5 and gated["auroc_interval"] is not None
    assert variant["ms_per_image"] > 0 and plain["ms_per_image"] > 0
    assert min(variant["relative"], plain["relative"]) == 1.0 and max(variant["relative"], plain["relative"]) >= 1.0

    decision["chosen"] = {**decision["chosen"], "rest": "bf16", "precision_hint": "bf16", "static_batch": 1,
                          "folder": "openvino-int8", "threshold": 0.4321}
    m = machine_info()  # decided here (the flags passed to tune are not the pinned CPU's): no warning
    decision["machine"] = {"cpu_model": m["cpu_model"], "cores": m["cores"], "flags": m["flags"]}
    record(int8_export, decision)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = rt.load(int8_export)
    assert (r.engine, r.folder.name, r.manifest.precision, r.static_batch) == ("openvino", "openvino-int8", "int8", 1)
    from edgead.tune import Candidate, Measured, _own_threshold

    # the variant applies the threshold its own compile-time gate recomputed, not the folder's (plain INT8's)
    own = {"threshold": {"recomputed": 0.4321, "applied": True}}
    assert _own_threshold(Measured(Candidate("openvino", "int8", rest="bf16"), compile_fidelity=own)) == \
        {"threshold": 0.4321}
    assert _own_threshold(Measured(Candidate("openvino", "int8", rest="bf16"), compile_fidelity=gated)) == (
        {} if gated["threshold"]["recomputed"] is None else {"threshold": gated["threshold"]["recomputed"]})
    assert r.spec.threshold == 0.4321
    assert read_manifest(int8_export / "openvino-int8").spec.threshold != 0.4321
    # what OpenVINO runs for the hint depends on the CPU (f32 without bf16 instructions): the options load(OUT)
    # passes are the host-independent check, and the same artifact loaded with them by hand runs as r does
    from edgead.runtimes.loader import tuned_choice

    options = tuned_choice(int8_export, read_manifest(int8_export).extra)[2]
    assert options == {"mode": "latency", "static_batch": 1, "precision_hint": "bf16", "threshold": 0.4321}
    hinted = rt.load(int8_export / "openvino-int8", "openvino", static_batch=1, precision_hint="bf16")
    assert r.inference_precision == hinted.inference_precision
    del decision["chosen"]["rest"], decision["chosen"]["precision_hint"]  # a decision from before issue 28
    record(int8_export, decision)
    assert "precision_hint" not in tuned_choice(int8_export, read_manifest(int8_export).extra)[2]
    assert executed(_type_name(rt.load(int8_export).inference_precision)) == "f32"
    decision["chosen"]["rest"] = "bf17"
    record(int8_export, decision)
    with pytest.raises(EdgeadError, match="names a tuned float-rest precision 'bf17'"):
        rt.load(int8_export)


def test_a_bf16_rest_variant_that_misses_the_compile_time_gate_is_not_chosen(int8_export, tiny_synthetic,
                                                                             loose_budget, monkeypatch):
    """The hinted runner is broken (flat maps) for the compile-time gate only (a test harness: tune's own gate
    sees the real runner): the variant is refused with the gate's reasons and plain INT8 is chosen, however fast."""
    import edgead.runtimes as rt
    import edgead.tune as tune_module
    from tests.test_verify import Broken

    real_load, real_gate = rt.load, tune_module._gate

    def load(folder, engine=None, **options):
        runner = real_load(folder, engine, **options)
        return Broken(runner, "flat", runner.manifest.precision) if "precision_hint" in options else runner

    monkeypatch.setattr(rt, "load", load)
    monkeypatch.setattr(tune_module, "_gate", lambda runner, *a: real_gate(getattr(runner, "_runner", runner), *a))
    decision = tune_module.tune(int8_export, 1, tiny_synthetic / "train" / "good", iters=2, rounds=1,
                                flags=VNNI_BF16, planner=_int8_at_batch_1)
    rows = {c["candidate"]["name"]: c for c in decision["candidates"]}
    variant = rows["openvino int8 + bf16 rest (static 1)"]
    assert not variant["passed"] and variant["ms_per_image"] is None
    assert list(variant["failures"]) == ["compile-time gate: candidate maps flat (one value) in 8 of 8 images",
                                         "compile-time gate: map r undefined (a side's maps have no variance or "
                                         "hold NaN/Inf)"], variant["failures"]
    assert variant["compile_fidelity"]["passed"] is False
    assert decision["chosen"]["rest"] is None and decision["chosen"]["precision"] == "int8"


def test_choose_ranks_round_by_round_so_drift_between_rounds_cancels():
    """The machine slowed down in rounds 2-3 while B ran: B's median ms is worse, but B was the faster in two of
    three rounds (relative medians: A 1.19, B 1.00), and the round-paired rank picks it (a real default compile at
    batch 8 under load chose A on the plain medians)."""
    from edgead.tune import Candidate, Measured, choose

    a = Measured(Candidate("openvino", "int8", static=8), passed=True, ms_per_image=34.6, runs_ms=(34.6, 34.3, 65.5))
    b = Measured(Candidate("openvino", "int8", static=8, rest="bf16"), passed=True, ms_per_image=55.0,
                 runs_ms=(27.8, 57.9, 55.0))
    fastest = [min(x, y) for x, y in zip(a.runs_ms, b.runs_ms, strict=True)]
    rel = [sorted(t / f for t, f in zip(m.runs_ms, fastest, strict=True))[1] for m in (a, b)]
    assert rel == pytest.approx([65.5 / 55.0, 1.0])
    from dataclasses import replace

    a, b = replace(a, relative=rel[0]), replace(b, relative=rel[1])
    assert choose([a, b]).candidate.rest == "bf16"
    assert choose([replace(a, relative=None), replace(b, relative=None)]).candidate.rest is None  # plain medians


def test_tune_on_an_artifact_folder_names_its_export(tuned_export, tmp_path):
    """``edgead tune/compile out/openvino-fp32`` (an artifact, not the export) says so and names the export; it
    used to say "with manifest.json, found none" while a manifest was right there."""
    import shutil

    from edgead.errors import InputError
    from edgead.tune import tune

    out, _ = tuned_export
    with pytest.raises(InputError) as info:
        tune(out / "openvino-fp32")
    assert str(info.value) == (f"expected an export folder (edgead export CKPT -o OUT), found the openvino fp32 "
                               f"artifact {out / 'openvino-fp32'}; pass its export folder {out}")
    lone = shutil.copytree(out / "openvino-fp32", tmp_path / "lone")
    with pytest.raises(InputError, match=r"found the openvino fp32 artifact .*lone$"):
        tune(lone)
    with pytest.raises(InputError, match="with manifest.json, found none at"):
        tune(tmp_path / "nothing")
