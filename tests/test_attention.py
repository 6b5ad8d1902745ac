"""Sliced attention in exported graphs (``edgead.models.attention``): bounded matrices, the same outputs."""

import collections

import onnx
import torch
from timm.layers import Attention

from edgead.models import attention as A

ATOL = 1e-4


def test_query_slices_bound_each_matrix_and_leave_small_inputs_alone():
    budget = A.EXPORT_ATTENTION_ELEMENTS
    assert A.query_slices(6, 5476) == 6  # ViT-S/14 at 1036 px: 6 x 5476^2 = 180M floats -> 6 slices of 913
    assert A.query_slices(12, 5476) == 11  # ViT-B/14
    assert 6 * 913 * 5476 <= budget and 12 * 498 * 5476 <= budget
    assert A.query_slices(6, 257) == 1 and A.query_slices(6, 1370) == 1  # 224 and 518 px: the unsliced graph
    assert A.query_slices(2, 3, budget=1) == 3  # never more slices than queries


def test_sliced_attention_equals_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 8) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for slices in (1, 2, 5, 37):
        got = A.sliced_attention(q, k, v, 8**-0.5, slices)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_high_resolution_export_slices_attention_and_matches_torch(tmp_path, monkeypatch):
    """The export's own parity check (same atol) holds for the sliced graph; eager PyTorch is unchanged."""
    from edgead.export.onnx import export_onnx
    from edgead.models import build_detector, detector_spec

    monkeypatch.setattr(A, "EXPORT_ATTENTION_ELEMENTS", 2 * 5 * 17)  # 56 px, 17 tokens, 2 heads: 4 slices
    torch.manual_seed(0)
    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", input_size=56))
    assert isinstance(det.backbone.blocks[0].attn, A.ChunkedAttention)
    r = export_onnx(det, tmp_path / "out")
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node)
    assert ops["Softmax"] == 4 * len(det.backbone.blocks)
    assert r.parity.within(ATOL)
    attn = det.backbone.blocks[0].attn
    plain = Attention(32, num_heads=2, qkv_bias=True)
    assert attn.state_dict().keys() == plain.state_dict().keys()  # timm's parameters: checkpoints load as before
