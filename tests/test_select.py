"""``edgead select``: a two-candidate grid with tiny models, its outputs, the Pareto front and resuming."""

import json

import cv2
import pytest

from edgead.select import CandidateResult, make_grid, pareto_front, select


def _result(key, auroc, aupro, ms):
    return CandidateResult(key, "fbft", "b", "layernorm", "torch", "fp32", "f32", auroc, aupro, 0.9, ms, 1, 1, 0.0,
                           "")


def test_pareto_front_keeps_only_undominated_points_fastest_first():
    rs = [_result("slow-best", 1.0, 0.9, 50.0), _result("fast-ok", 0.9, 0.8, 5.0),
          _result("dominated", 0.85, 0.9, 6.0), _result("tie-worse-aupro", 0.9, 0.7, 5.0),
          _result("mid", 0.95, 0.5, 20.0)]
    assert pareto_front(rs) == ["fast-ok", "mid", "slow-best"]


def test_front_labels_of_close_points_do_not_overlap(tmp_path, monkeypatch):
    """Session 3's default grid put nf/ViT-S and fbft/ViT-S at the same AUROC 0.5 ms apart: their labels were
    drawn over each other. Labels now move down a line at a time until they are clear of each other."""
    import matplotlib.pyplot as plt
    from matplotlib.text import Annotation, Text

    import edgead.selectplot as sp

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    rs = [_result("a", 1.0, 0.95, 13.7), _result("b", 1.0, 0.94, 14.5), _result("c", 0.5, 0.3, 3.8)]
    rs = [CandidateResult(**{**r.__dict__, "backbone": f"backbone_{r.key}"}) for r in rs]
    sp.plot_pareto(rs, ["c", "a", "b"], tmp_path / "p.png")
    fig = figs[0]
    renderer = fig.canvas.get_renderer()
    labels = [c for c in fig.axes[0].get_children() if isinstance(c, Annotation)]
    assert sorted(a.get_text() for a in labels) == ["fbft/backbone_a", "fbft/backbone_b", "fbft/backbone_c"]
    boxes = [Text.get_window_extent(a, renderer) for a in labels]
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(3) for j in range(i + 1, 3))
    monkeypatch.undo()
    plt.close(fig)


def test_grid_skips_invalid_combinations_with_reasons():
    grid, skipped = make_grid(["fbft", "dinomaly"], ["vit_tiny_test_patch14", "resnet_tiny_test"],
                              ["layernorm", "dyt"], 56)
    assert [c.key for c in grid] == ["fbft-vit_tiny_test_patch14-layernorm", "fbft-vit_tiny_test_patch14-dyt",
                                     "dinomaly-vit_tiny_test_patch14-layernorm", "dinomaly-vit_tiny_test_patch14-dyt"]
    reasons = dict(skipped)
    assert "not a multiple of 16" in reasons["fbft-resnet_tiny_test-layernorm"]
    assert "dinomaly needs a ViT backbone" in reasons["dinomaly-resnet_tiny_test-layernorm"]


def test_select_two_candidates_writes_table_plot_and_resumes(tiny_synthetic, tmp_path, monkeypatch):
    out = tmp_path / "sel"
    kw = dict(families=("fbft", "gmm"), backbones=("vit_tiny_test_patch14",), norms=("layernorm",), size=28,
              engine="torch", epochs=2, iters=2)
    sel = select(tiny_synthetic, out, **kw)
    assert not sel.failed and len(sel.results) == 2 and sel.reused == ()
    doc = json.loads((out / "select.json").read_text())
    assert doc["schema_version"] == 1 and doc["engine"] == "torch" and len(doc["results"]) == 2
    for r in doc["results"]:
        assert 0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["aupro"] <= 1.0
        assert r["p50_ms"] > 0 and r["params"] > 10_000 and r["flops"] > 1_000_000 and r["cpu_seconds"] > 0
        assert 0.0 <= r["aupro_q1"] <= 1.0 and r["map_r"] is None and r["fidelity_passed"] is None  # torch: no gate
    assert doc["pareto"] and set(doc["pareto"]) <= {r["key"] for r in doc["results"]}
    png = cv2.imread(str(out / "pareto.png"))
    assert png is not None and png.shape[0] >= 400 and png.shape[1] >= 600
    _check_gmm_normalisation(out / "candidates" / "gmm-vit_tiny_test_patch14-layernorm" / "ckpt", tiny_synthetic)

    # interrupted run: one candidate finished, the other only has its checkpoint -> nothing is refitted
    gmm = out / "candidates" / "gmm-vit_tiny_test_patch14-layernorm"
    (gmm / "result.json").unlink()

    def no_fit(*a, **k):
        raise AssertionError("a finished checkpoint was fitted again")

    monkeypatch.setattr("edgead.fit.fit", no_fit)
    again = select(tiny_synthetic, out, **kw)
    assert again.reused == ("fbft-vit_tiny_test_patch14-layernorm",)
    assert {r.key for r in again.results} == {r.key for r in sel.results} and not again.failed
    before = {r.key: r.image_auroc for r in sel.results}
    assert {r.key: r.image_auroc for r in again.results} == pytest.approx(before)


def _check_gmm_normalisation(ckpt, data):
    """The fitted GMM head is normalised by held-out normals (stored in the spec), not by its batch."""
    import numpy as np
    import torch

    from edgead.data import test_items
    from edgead.imageio import load_batch
    from edgead.models.checkpoint import load_checkpoint, read_spec

    spec = read_spec(ckpt)
    lo, hi = spec.head["nll_lo"], spec.head["nll_hi"]
    assert np.isfinite(lo) and hi > lo
    det = load_checkpoint(ckpt)
    assert float(det.head.nll_lo) == pytest.approx(lo) and float(det.head.nll_hi) == pytest.approx(hi)
    hold = json.loads((ckpt / "fit.json").read_text())["holdout_scores"]
    assert hold and all(-1e-6 <= s <= 1.0 + 1e-6 for s in hold)  # held-out patches were mapped into [0, 1]
    images = load_batch([it.path for it in test_items(data)], spec)
    with torch.no_grad():
        batch_scores = det(torch.from_numpy(images))[0].numpy()
        alone = np.array([float(det(torch.from_numpy(images[i : i + 1]))[0]) for i in range(len(images))])
    np.testing.assert_allclose(alone, batch_scores, atol=1e-5)
