"""``edgead verify``: a verdict per artifact over every image of --data, and exit code 1 on a miss."""

import json
import shutil

import pytest

from edgead.fidelity import Budget
from edgead.verify import verify_artifacts
from tests.test_cli import run


def _fp32_only(export, tmp_path):
    """A copy of the export folder without the INT8 artifacts other tests compiled into it."""
    return shutil.copytree(export, tmp_path / "fp32", ignore=shutil.ignore_patterns("*-*"))


def test_verify_covers_every_test_image_against_pytorch(fitted_export, tiny_synthetic, tmp_path):
    fitted_export = _fp32_only(fitted_export, tmp_path)
    rep = verify_artifacts(fitted_export, tiny_synthetic, batch=5)
    assert rep.reference == "torch" and rep.reference_label == "PyTorch checkpoint"
    assert rep.images == 12 and rep.passed  # 4 good + 4 defect types x 2: all of them, batch 5 or not
    (c,) = rep.checks
    f = c.fidelity
    assert c.precision == "fp32" and f.images == 12 and f.max_abs_maps <= 1e-4 and f.flips == 0
    assert f.metrics["image_auroc"] == pytest.approx(f.reference_metrics["image_auroc"], abs=1e-9)
    assert verify_artifacts(fitted_export, tiny_synthetic, budget=Budget(atol=1e-12)).checks[0].failures[0] \
        .startswith("max |diff| of maps")


@pytest.fixture()
def broken_export(fitted_export, tiny_export, tmp_path):
    """The fitted export plus, inside it, a well-formed FP32 artifact of another (untrained) detector."""
    out = _fp32_only(fitted_export, tmp_path)
    shutil.copytree(tiny_export("fbft", "layernorm") / "export", out / "other")
    return out


def test_verify_cli_exits_1_on_a_broken_artifact(broken_export, tiny_synthetic):
    res = run("verify", broken_export, "--data", tiny_synthetic, "--json")
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith("error: 1 of 2 artifacts miss their targets against the PyTorch checkpoint: "
                               "onnxruntime fp32: max |diff| of maps")
    rep = json.loads(res.stdout)  # the report still comes out for scripts
    assert rep["passed"] is False and rep["reference_is"] == "PyTorch checkpoint" and rep["images"] == 12
    verdicts = {a["folder"].endswith("other"): a["passed"] for a in rep["artifacts"]}
    assert verdicts == {True: False, False: True}
