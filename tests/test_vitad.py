"""ViTAD: shapes and pairing, in-graph avg-pool-max score, fit on the tiny synthetic set, FP32 engine parity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import edgead.runtimes as rt
from edgead.models import build_detector, detector_spec
from edgead.runtimes.compare import check_batch, compare

ATOL = 1e-4
TINY = "vit_tiny_test_patch16"


def test_defaults_follow_the_paper():
    spec = detector_spec("vitad", "vit_small_patch16_224")
    assert spec.input_size == (256, 256) and spec.layers == (2, 5, 8, 11)
    assert spec.post.score == "avgpool_max" and spec.post.pool == 16 and spec.post.sigma == 4.0
    assert spec.head["student_depth"] == 9 and spec.head["student_taps"] == [2, 5, 8]


def test_shapes_pairing_and_score():
    torch.manual_seed(0)
    det = build_detector(detector_spec("vitad", TINY, input_size=64))
    assert len(det.backbone.blocks) == 12 and len(det.head.student.blocks) == 9
    assert det.head.student.pos_embed.shape == (1, 16, 32) and det.head.fuser.in_features == 32
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        scores, maps = det(images)
        taps = det.taps(images)
        teacher, student = det.head.pairs(taps)
    assert scores.shape == (3,) and maps.shape == (3, 64, 64) and (maps >= 0).all()
    # teacher block 2 pairs with the student's deepest tap (its block 8), and so on in reverse
    x = det.head.student.pos_embed + det.head.fuser(taps[3][:, 1:])
    outs = []
    for blk in det.head.student.blocks:
        x = blk(x)
        outs.append(x)
    torch.testing.assert_close(student[0], outs[8])
    torch.testing.assert_close(student[2], outs[2])
    torch.testing.assert_close(teacher[0], taps[0][:, 1:])
    # the score is the max of a 16x16 average pool of the returned (smoothed) map
    torch.testing.assert_close(scores, F.avg_pool2d(maps[:, None], 16, stride=1).flatten(1).amax(1))


def test_identical_student_gives_zero_map(monkeypatch):
    """The project's map function: zero where the student reproduces the teacher, positive where it does not."""
    torch.manual_seed(0)
    det = build_detector(detector_spec("vitad", TINY, input_size=64))
    taps = [torch.randn(2, 17, 32) for _ in range(4)]
    teacher, _ = det.head.pairs(taps)
    monkeypatch.setattr(det.head, "pairs", lambda t: (teacher, [x.clone() for x in teacher]))
    m = det.head.anomaly_map(taps)
    assert m.shape == (2, 4, 4) and float(m.abs().max()) < 1e-6
    student = [x.clone() for x in teacher]
    student[1][0, 5] = -student[1][0, 5]  # one patch of one image points the other way: cosine distance 2
    monkeypatch.setattr(det.head, "pairs", lambda t: (teacher, student))
    m = det.head.anomaly_map(taps)
    assert float(m[0].flatten()[5]) == pytest.approx(2.0, abs=1e-5)
    assert float(m[0].flatten()[:5].abs().max()) < 1e-6 and float(m[1].abs().max()) < 1e-6


def test_fit_vitad(tiny_synthetic, tmp_path):
    from edgead.fit import fit
    from edgead.models.checkpoint import load_checkpoint

    torch.manual_seed(0)
    before = build_detector(detector_spec("vitad", TINY, input_size=64))
    r = fit(tiny_synthetic, tmp_path / "ckpt", "vitad", TINY, "layernorm", 64, epochs=3, lr=1e-3)
    det = load_checkpoint(r.checkpoint)
    assert det.spec.family == "vitad" and det.spec.threshold == pytest.approx(r.threshold)
    assert r.threshold >= max(r.holdout_scores) and r.final_loss == r.final_loss  # finite
    # training moved the student, not the teacher
    assert not torch.equal(det.head.fuser.weight, before.head.fuser.weight)


def test_vitad_export_and_openvino_parity(tmp_path):
    from edgead.export.onnx import export_onnx
    from edgead.export.openvino import compile_openvino
    from edgead.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    det = build_detector(detector_spec("vitad", TINY, "dyt", input_size=64))
    save_checkpoint(det, tmp_path / "ckpt")
    # the raw graph (simplifiers are exercised by test_export); keeps the suite fast on 2 cores
    report = export_onnx(det, tmp_path / "export", simplifier="none", source=tmp_path / "ckpt")
    assert report.parity.max_abs_maps <= ATOL and report.parity.max_abs_scores <= ATOL
    ov_dir = compile_openvino(tmp_path / "export", "fp32")
    ref = rt.load(tmp_path / "ckpt")
    candidates = {"onnxruntime": rt.load(tmp_path / "export"), "openvino": rt.load(ov_dir)}
    for d in compare(ref, candidates, check_batch(3, 3, (64, 64))):
        assert d.max_abs_maps <= ATOL and d.max_abs_scores <= ATOL, d
