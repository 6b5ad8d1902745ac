import json
import subprocess
import sys

import pytest

EDGEAD = [sys.executable, "-m", "edgead.cli.app"]


def run(*args, timeout=300):
    return subprocess.run([*EDGEAD, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def here(monkeypatch, capfd):
    """``here(*args)``: ``edgead ARGS`` through the console entry point ``main`` in this process, the result as
    ``run`` gives it (exit code, stdout, stderr). The same code a shell runs, without a fresh interpreter and torch
    import (3-6 s a command on 2 cores); ``run`` keeps the real executable where a test is about it."""
    from edgead.cli.app import main

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["edgead", *map(str, args)])
        monkeypatch.delenv("EDGEAD_DEBUG", raising=False)
        capfd.readouterr()
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return call


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("fit", "export", "compile", "bench", "verify", "predict", "eval", "synth", "demo", "build-c"):
        assert cmd in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fit", "{tmp}/nothing"), "expected a data folder, found no folder"),
        (("fit", "{tmp}", "--backbone", "vit_tiny_test_patch14", "--size", "56"), "found none"),
        (("fit", "{synth}", "--backbone", "vit_huge", "--size", "56", "-o", "{tmp}/o"),
         "backbone must be one of"),
        (("export", "{tmp}", "-o", "{tmp}/o"), "expected an edgead checkpoint folder with spec.json"),
        (("compile", "{tmp}", "--engine", "openvino"), "expected manifest.json"),
        (("predict", "{tmp}/nothing", "{tmp}/missing.png"), "expected an image file or a folder of images"),
        (("bench", "{tmp}", "--batch", "one"), "--batch must be a comma list of integers"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(tmp_path, tiny_synthetic, args, message, capfd, monkeypatch):
    """Through the console entry point ``main`` in this process (the same code a shell runs, without paying
    a fresh interpreter and a torch import per case; ``test_help_lists_commands`` and the round trip's fit and
    predict below run the real executable)."""
    from edgead.cli.app import main

    args = [a.format(tmp=tmp_path, synth=tiny_synthetic) for a in args]
    monkeypatch.setattr(sys, "argv", ["edgead", *args])
    monkeypatch.delenv("EDGEAD_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capfd.readouterr().err
    assert exit_.value.code == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_fit_export_predict_json(tmp_path, tiny_synthetic, here):
    """The round trip. fit (the build side, torch) and predict (the line side, no torch) run the real executable, a
    fresh interpreter each; export and verify run through ``main`` in this process (``here``)."""
    ck = tmp_path / "ck"
    out = run("fit", tiny_synthetic, "--backbone", "vit_tiny_test_patch14", "--size", "56", "--epochs", "2",
              "-o", ck, "--json")
    assert out.returncode == 0, out.stderr
    fitted = json.loads(out.stdout)
    assert fitted["train_images"] == 10 and fitted["threshold"] > 0
    out = here("export", ck, "-o", tmp_path / "exp", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["max_abs_maps"] <= 1e-4
    out = run("predict", tmp_path / "exp", tiny_synthetic / "test" / "good", "--out", tmp_path / "heat", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["engine"] == "onnxruntime" and len(res["results"]) == 4
    assert {r["label"] for r in res["results"]} <= {"normal", "anomalous"}
    assert len(list((tmp_path / "heat").glob("*.png"))) == 4
    out = here("verify", tmp_path / "exp", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["reference"] == "torch" and rep["artifacts"][0]["max_abs_maps"] <= 1e-4
    assert rep["passed"] is True and rep["reference_is"] == "PyTorch checkpoint"


def test_fit_with_overlap_exports_a_tiled_artifact_that_predicts_frames(tmp_path, defect_frame, here):
    """fit --overlap 14 (tiles of the 56 px input) -> export carries the plan -> predict scores a 300x250 frame at its
    own size (the heatmap panel is that wide), exactly as Runner.predict_frames; --full-frame takes the old path.
    Every command through ``main`` in this process (``here``)."""
    import cv2
    import numpy as np

    from edgead.imageio import write_image
    from edgead.runtimes import load

    frame, _ = defect_frame
    (tmp_path / "train").mkdir()
    for i in range(5):
        normal = np.clip(np.random.default_rng(100 + i).normal(120, 4, (300, 250, 3)), 0, 255)
        write_image(tmp_path / "train" / f"{i}.png", normal.astype(np.uint8))
    write_image(tmp_path / "frame.png", frame)
    out = here("fit", tmp_path / "train", "--backbone", "vit_tiny_test_patch14", "--size", "56", "--epochs", "3",
               "--overlap", "14", "-o", tmp_path / "ck", "--json")
    assert out.returncode == 0, out.stderr
    out = here("export", tmp_path / "ck", "-o", tmp_path / "exp", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tiling"] == {"tile": [56, 56], "overlap": 14}
    out = here("predict", tmp_path / "exp", tmp_path / "frame.png", "--out", tmp_path / "heat", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["tiling"] == {"tile": [56, 56], "overlap": 14}
    with load(tmp_path / "exp") as runner:
        ref = runner.predict_frames(frame)
        runner.tiling = None
        full = runner.predict_frames(frame)
    assert res["results"][0]["score"] == float(ref.scores[0]) and res["results"][0]["label"] == "anomalous"
    assert cv2.imread(res["results"][0]["heatmap"]).shape[1] == 2 * 250
    out = here("predict", tmp_path / "exp", tmp_path / "frame.png", "--full-frame", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tiling"] is None
    assert json.loads(out.stdout)["results"][0]["score"] == pytest.approx(float(full.scores[0]), abs=1e-6)
    out = here("export", tmp_path / "ck", "-o", tmp_path / "exp2", "--tile", "64")
    assert out.returncode == 1 and "expected --tile 56" in out.stderr


def test_shared_options_mean_one_thing_everywhere():
    """--json is a flag, --out one folder option and --engine lists the registry's engines, in every command."""
    import typer

    from edgead import registry
    from edgead.cli.app import app

    seen: dict[str, set] = {"--json": set(), "--out": set(), "--engine": set()}
    for name, cmd in typer.main.get_command(app).commands.items():
        for p in cmd.params:
            for opt in set(p.opts) & set(seen):
                seen[opt].add(name)
                if opt == "--json":
                    assert p.is_flag and p.help == "Print machine-readable JSON on stdout.", name
                elif opt == "--out":
                    assert p.help == "Output folder (what goes there: see above).", name
                else:
                    assert p.help.endswith(".") and "One of: onnxruntime, openvino, trt" in p.help, (name, p.help)
                    assert "torch" in p.help or name == "compile", name
    assert {"export", "fit", "bench", "predict", "eval", "verify"} <= seen["--json"]
    assert {"export", "fit", "import", "predict", "demo"} <= seen["--out"]
    assert {"compile", "predict", "eval", "bench"} <= seen["--engine"]
    assert registry.ENGINES.keys() >= {"onnxruntime", "openvino", "trt", "torch"}
