"""``edgead compile OUT`` without --precision: the artifact tune would choose, from a plan pruned by the CPU's
flags (``export.default``), recorded so that load(OUT) runs it, with one line saying what and why."""

from __future__ import annotations

import json
import shutil

import pytest

from edgead.export.default import fast_plan

BOTH = ("openvino", "onnxruntime")
VNNI_BF16 = {"avx2": True, "fma": True, "avx512f": True, "avx512_vnni": True, "avx512_bf16": True}
AVX2 = {"avx2": True, "fma": True}


def names(cands) -> list[str]:
    return [c.name for c in cands]


def test_fast_plan_keeps_only_what_can_win_on_a_vnni_bf16_cpu() -> None:
    keep, out = fast_plan(VNNI_BF16, BOTH, True, 1)
    assert names(keep) == ["openvino bf16 (static 1)", "openvino int8 (static 1)",
                           "openvino int8 + bf16 rest (static 1)"]
    why = {m.candidate.name: m.skipped for m in out}
    assert why["openvino fp32 (static 1)"].startswith("pruned: this CPU runs BF16/INT8 natively")
    assert why["openvino int8"] == "pruned: a fixed batch axis was never slower than a dynamic one"
    assert why["onnxruntime int8 (static 1)"].startswith("pruned: OpenVINO is installed")
    keep8, _ = fast_plan(VNNI_BF16, BOTH, True, 8)
    assert names(keep8) == ["openvino bf16 (static 8)", "openvino bf16 (throughput, static 1)",
                            "openvino int8 (static 8)", "openvino int8 (throughput, static 1)",
                            "openvino int8 + bf16 rest (static 8)", "openvino int8 + bf16 rest (throughput, static 1)"]
    amx = {**AVX2, "avx512f": True, "amx_int8": True, "amx_bf16": True}
    assert names(fast_plan(amx, BOTH, True, 1)[0]) == names(keep)


def test_the_int8_rung_holds_the_bf16_rest_variants_only_where_bf16_is_native() -> None:
    """The same INT8 IR with its float part in BF16 (issue 28) is timed beside plain INT8, in the INT8 rung; on a
    CPU without BF16 the rung is plain INT8 alone, as before."""
    from edgead.export.default import ladder

    rungs, _ = ladder(VNNI_BF16, BOTH, True, 1)
    assert [(p, names(r)) for p, r in rungs] == [
        ("int8", ["openvino int8 (static 1)", "openvino int8 + bf16 rest (static 1)"]),
        ("bf16", ["openvino bf16 (static 1)"]), ("fp32", ["openvino fp32 (static 1)"])]
    vnni_only = {"avx2": True, "avx512_vnni": True}
    rungs, out = ladder(vnni_only, BOTH, True, 1)
    assert [(p, names(r)) for p, r in rungs] == [("int8", ["openvino int8 (static 1)"]),
                                                 ("fp32", ["openvino fp32 (static 1)"])]
    assert {m.candidate.name: m.skipped for m in out}["openvino int8 + bf16 rest"].startswith("no BF16 instructions")


def test_fast_plan_without_calibration_or_reduced_instructions() -> None:
    keep, out = fast_plan(VNNI_BF16, BOTH, False, 1)  # BF16's compile-time gate needs held-out images too
    assert names(keep) == ["openvino fp32 (static 1)"]
    why = {m.candidate.name: m.skipped for m in out}
    assert why["openvino int8"] == "no calibration images (--calib DIR)"
    assert why["openvino bf16 (static 1)"] == "no held-out images for its fidelity gate (--calib DIR)"
    assert names(fast_plan(AVX2, BOTH, True, 1)[0]) == ["openvino fp32 (static 1)"]
    assert names(fast_plan(AVX2, ("onnxruntime",), True, 1)[0]) == ["onnxruntime fp32 (static 1)"]
    vnni_only = {"avx2": True, "avx512_vnni": True}  # INT8 native, no BF16: FP32 stays as int8's rival only
    assert names(fast_plan(vnni_only, BOTH, False, 1)[0]) == ["openvino fp32 (static 1)"]
    assert names(fast_plan(vnni_only, BOTH, True, 1)[0]) == ["openvino int8 (static 1)"]


def test_compile_without_precision_builds_records_and_says_why(tiny_export, tiny_synthetic, tmp_path) -> None:
    """The session's pinned CPU has AVX2 only: the default is OpenVINO FP32 at the batch, tuned and recorded."""
    from typer.testing import CliRunner

    import edgead.runtimes as rt
    from edgead.cli.app import app

    out = tmp_path / "export"
    shutil.copytree(tiny_export("fbft") / "export", out)
    res = CliRunner().invoke(app, ["compile", str(out), "--calib", str(tiny_synthetic / "train" / "good"),
                                   "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["engine"], doc["precision"]) == ("openvino", "fp32")
    assert doc["reason"].startswith("openvino fp32 (latency mode, batch fixed at 1)")
    assert "the fastest faithful artifact tune finds for this CPU" in doc["reason"]
    cands = {c["candidate"]["name"]: c for c in doc["tune"]["candidates"]}
    assert cands["openvino fp32 (static 1)"]["passed"] and cands["openvino fp32 (static 1)"]["ms_per_image"] > 0
    assert cands["openvino bf16"]["skipped"].startswith("no BF16 instructions")
    r = rt.load(out)
    assert (r.engine, r.manifest.precision, r.static_batch) == ("openvino", "fp32", 1)


@pytest.fixture
def bf16_vnni_cpu(monkeypatch):
    """This test's CPU has AVX-512 VNNI and BF16 (the session's pinned CPU has AVX2 only)."""
    from edgead.bench import machine

    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("test CPU (VNNI, BF16)", set(VNNI_BF16)))


def test_without_calibration_the_line_names_what_int8_needs(tiny_export, tmp_path, bf16_vnni_cpu) -> None:
    from edgead.export.default import default_artifact

    out = tmp_path / "export"
    shutil.copytree(tiny_export("fbft") / "export", out)
    choice = default_artifact(out, iters=2, rounds=1)
    assert (choice.engine, choice.precision) == ("openvino", "fp32"), choice.reason
    assert choice.folder == out / "openvino-fp32" and (choice.folder / "manifest.json").is_file()
    assert choice.reason.endswith("; BF16/INT8 would likely be faster on this CPU but needs images (calibration, "
                                  "and held out for the fidelity gate): --calib DIR")
    assert "missed its fidelity gate" not in choice.reason


def test_the_ladder_tries_int8_first_and_falls_back_on_a_missed_gate(tiny_export, tiny_synthetic, tmp_path,
                                                                     bf16_vnni_cpu) -> None:
    """On a VNNI + BF16 CPU with images: INT8 first; BF16 only if INT8 missed its gate; FP32 last."""
    from edgead.export.default import default_artifact
    from edgead.runtimes.manifest import read_manifest

    out = tmp_path / "export"
    shutil.copytree(tiny_export("fbft") / "export", out)
    choice = default_artifact(out, tiny_synthetic / "train" / "good", iters=2, rounds=1)
    tried = [c["candidate"]["precision"] for c in choice.decision["candidates"] if not c["skipped"]]
    assert set(tried) == {choice.precision} and choice.engine == "openvino"  # the record holds the rung that won
    if choice.precision == "int8":  # its rung: plain INT8 and the same IR with its float rest in BF16, both gated
        rows = {c["candidate"]["name"]: c for c in choice.decision["candidates"]}
        assert len(tried) == 2 and rows["openvino int8 (static 1)"]["folder"] == "openvino-int8"
        variant = rows["openvino int8 + bf16 rest (static 1)"]
        assert variant["folder"] == "openvino-int8" and (variant["compile_fidelity"] or variant["failures"])
    order = ["int8", "bf16", "fp32"]
    for p in order[:order.index(choice.precision)]:  # every rung above it missed its gate, and says so
        assert f"{p.upper()} missed its fidelity gate" in choice.reason
    if choice.precision != "fp32":
        assert "not built: this CPU runs" in choice.reason
    assert read_manifest(out, verify=False).extra["tune"]["chosen"]["precision"] == choice.precision


def _ladder_with(monkeypatch, int8_error, pick=lambda rung: rung[0]):
    """default_artifact on a VNNI + BF16 CPU with tune replaced (a test harness): INT8's rung raises
    ``int8_error`` (if given), any other rung's ``pick`` is chosen. Returns the call and the rungs tried."""
    import edgead.runtimes as rt
    import edgead.tune as tune_module
    from edgead.export.default import default_artifact

    tried = []

    def fake_tune(out, batch, calib, data, *, planner, **_):
        rung, _left_out = planner()
        tried.append(rung[0].precision)
        if rung[0].precision == "int8" and int8_error is not None:
            raise int8_error
        c = pick(rung)
        return {"chosen": {"engine": c.engine, "precision": c.precision, "mode": c.mode, "static_batch": c.static,
                           "folder": "x", "ms_per_image": 5.0, "rest": c.rest}}

    monkeypatch.setattr(tune_module, "tune", fake_tune)
    monkeypatch.setattr(rt, "available_engines", lambda: list(BOTH))
    return (lambda: default_artifact("OUT", "CALIB", flags=VNNI_BF16)), tried


def test_the_ladder_falls_back_on_a_fidelity_miss_and_nothing_else(monkeypatch) -> None:
    from edgead.errors import EdgeadError, FidelityError

    run, tried = _ladder_with(monkeypatch, FidelityError("found none (openvino int8 (static 1): map r 0.5 < 0.99)"))
    choice = run()
    assert tried == ["int8", "bf16"] and (choice.engine, choice.precision) == ("openvino", "bf16")
    assert "; INT8 missed its fidelity gate (found none (openvino int8 (static 1): map r 0.5 < 0.99))" in choice.reason
    assert "; FP32 not built: this CPU runs BF16 natively" in choice.reason
    # a build that failed for another reason is not a missed gate: it surfaces, and nothing else is tried
    run, tried = _ladder_with(monkeypatch, EdgeadError("nncf is not installed: pip install 'edgead[nncf]'"))
    with pytest.raises(EdgeadError, match="nncf is not installed") as info:
        run()
    assert not isinstance(info.value, FidelityError) and tried == ["int8"]


def test_a_missed_rung_names_only_the_candidates_that_were_measured(monkeypatch) -> None:
    """The fallback line says why the gate refused what it measured; the pruned candidates' reasons (which tune's
    error lists too) are not repeated rung after rung."""
    import pytest

    from edgead.errors import FidelityError
    from edgead.tune import Candidate, Measured, choose

    with pytest.raises(FidelityError) as exc:
        choose([Measured(Candidate("openvino", "int8"), skipped="pruned: the batch axis fixed at 1 was never slower"),
                Measured(Candidate("openvino", "int8", static=1), failures=("map r 0.5 < 0.99",))])
    run, _ = _ladder_with(monkeypatch, exc.value)
    choice = run()
    assert "; INT8 missed its fidelity gate (openvino int8 (static 1): map r 0.5 < 0.99)" in choice.reason
    assert "pruned" not in choice.reason


def test_the_line_names_a_chosen_float_rest(monkeypatch) -> None:
    run, tried = _ladder_with(monkeypatch, None, pick=lambda rung: next(c for c in rung if c.rest))
    choice = run()
    assert tried == ["int8"] and (choice.engine, choice.precision) == ("openvino", "int8")
    assert choice.reason.startswith("openvino int8, float rest in bf16 (latency mode, batch fixed at 1), 5.0 ms/image "
                                    "at batch 1: the fastest faithful artifact tune finds for this CPU")
    assert choice.folder == registry_folder("OUT", "openvino", "int8")  # the plain INT8 artifact, no second build


def registry_folder(out, engine, precision):
    from edgead import registry

    return registry.artifact_folder(out, engine, precision)


def test_a_tiled_export_fixes_the_batch_at_a_frames_tiles(monkeypatch, tiled_export) -> None:
    """A tiled artifact's engine runs the tiles of a frame: the default compile plans the line's batch in tiles
    (the 42 tiles of 56 px, overlap 14, of one 300x250 calibration frame), so a frame is one call, not 42."""
    import edgead.runtimes as rt
    import edgead.tune as tune_module
    from edgead.export.default import default_artifact, tiles_per_frame

    _, export = tiled_export
    calib = export.parent / "train"
    assert tiles_per_frame(export, calib) == (42, (300, 250))
    assert tiles_per_frame(export, None) is None
    seen = []

    def fake_tune(out, batch, calib, data, *, planner, **_):  # a test harness: records what would be timed
        rung, _ = planner()
        seen.append((batch, sorted({c.static for c in rung if c.static})))
        c = rung[0]
        return {"chosen": {"engine": c.engine, "precision": c.precision, "mode": c.mode, "static_batch": c.static,
                           "folder": "x", "ms_per_image": 5.0, "rest": c.rest}}

    monkeypatch.setattr(tune_module, "tune", fake_tune)
    monkeypatch.setattr(rt, "available_engines", lambda: list(BOTH))
    choice = default_artifact(export, calib, flags=VNNI_BF16, batch=2)
    assert seen[0][0] == 84 and 84 in seen[0][1]
    assert "ms/tile at batch 84 (2 frames x the 42 tiles of a 300x250 calibration frame)" in choice.reason
