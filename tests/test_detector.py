import numpy as np
import pytest
import torch

from edgead.models import build_detector, detector_spec
from edgead.models.postprocess import PostProcess, gaussian_kernel
from edgead.spec import PostSpec


@pytest.mark.parametrize("family", ["fbft", "dinomaly"])
@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
@pytest.mark.parametrize("backbone", ["vit_tiny_test_patch14", "vit_tiny_test_patch14_reg4", "vit_tiny_test_patch16"])
def test_shapes_and_dtypes(family, norm, backbone):
    size = 64 if backbone.endswith("16") else 56
    det = build_detector(detector_spec(family, backbone, norm, input_size=size))
    images = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8)
    with torch.no_grad():
        scores, maps = det(images)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert maps.shape == (3, size, size) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    # the score is the mean of the top-k map pixels
    k = det.spec.top_k
    torch.testing.assert_close(scores, maps.flatten(1).topk(k, dim=1).values.mean(1))


def test_backbone_truncated_after_deepest_tap():
    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", input_size=56, layers=(3, 5)))
    assert len(det.backbone.blocks) == 6
    det = build_detector(detector_spec("dinomaly", "vit_tiny_test_patch14", input_size=56))
    assert len(det.backbone.blocks) == 10 and len(det.head.decoder) == 8


def test_preprocessing_is_scale_and_mean_std():
    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", input_size=28))
    img = torch.full((1, 28, 28, 3), 255, dtype=torch.uint8)
    x = det.normalize(img)
    expected = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0, :, 0, 0], expected)


def test_backbone_frozen_head_trainable():
    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", input_size=56))
    assert not any(p.requires_grad for p in det.backbone.parameters())
    assert all(p.requires_grad for p in det.head.parameters())
    det.train()
    assert not det.backbone.training and det.head.training


def test_fbft_loss_and_map_with_identity_students():
    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", input_size=28))
    det.head.forward_student = torch.nn.Identity()
    det.head.backward_student = torch.nn.Identity()
    torch.manual_seed(0)
    a, b = torch.randn(2, 5, 32), torch.randn(2, 5, 32)  # class token + 2x2 patches
    assert float(det.head.loss([a, a])) < 1e-6
    assert float(det.head.anomaly_map([a, a]).abs().max()) < 1e-6
    # identity students: both directions give ||a/|a| - b/|b|||, the map is its square
    pa, pb = a[:, 1:], b[:, 1:]
    d = torch.linalg.vector_norm(pa / pa.norm(dim=-1, keepdim=True) - pb / pb.norm(dim=-1, keepdim=True), dim=-1)
    torch.testing.assert_close(det.head.anomaly_map([a, b]), (d * d).reshape(2, 2, 2))
    cos = torch.nn.functional.cosine_similarity(pa, pb, dim=-1)
    torch.testing.assert_close(det.head.loss([a, b]), 2 * (1 - cos).mean())


def test_gaussian_kernel_and_box():
    g = gaussian_kernel(5, 4.0)
    assert g.shape == (5, 5) and abs(float(g.sum()) - 1.0) < 1e-6
    assert float(g[2, 2]) > float(g[0, 0])
    post = PostProcess(PostSpec(smooth="box", ksize=3, pad="zeros", score_fraction=1.0), (4, 4), 16)
    m = torch.zeros(1, 4, 4)
    m[0, 1, 1] = 9.0
    scores, maps = post(m)
    # a 3x3 box spreads 9 over the 3x3 neighbourhood of (1, 1)
    assert np.allclose(maps[0, :3, :3].numpy(), 1.0) and float(maps[0, 3, 3]) == 0.0
    assert abs(float(scores[0]) - 9 / 16) < 1e-6
