"""FLOP counters on hand-checkable graphs, and torch vs ONNX agreement on the tiny detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgead.bench.norms import build_study_detector
from edgead.export.flops import agreement, format_flops, onnx_flops, torch_flops
from edgead.export.onnx import export_onnx
from edgead.models.norms import DyT

F32 = TensorProto.FLOAT


def _graph(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F32, shape)


# -- hand-checkable graphs: the same number both ways --------------------------------------------------------
def test_linear() -> None:
    # (2, 3, 8) @ (8, 4): 6*4*8 = 192 multiply-adds = 384 FLOPs, + 6*4 = 24 bias adds
    lin = nn.Linear(8, 4)
    t = torch_flops(lin, images=torch.randn(2, 3, 8))
    assert (t.matmul, t.elementwise, t.total) == (384, 24, 408)
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    m = _graph(
        [helper.make_node("MatMul", ["x", "w"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])],
        [_vi("x", ["batch", 3, 8])],
        [_vi("y", ["batch", 3, 4])],
        [("w", w), ("b", np.zeros(4, np.float32))],
    )
    o = onnx_flops(m, batch=2)
    assert (o.matmul, o.elementwise) == (384, 24)
    assert onnx_flops(m, batch=5).total == 5 * 408 // 2


def test_gemm_with_bias() -> None:
    w = np.zeros((4, 8), np.float32)
    m = _graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        [_vi("x", ["batch", 8])],
        [_vi("y", ["batch", 4])],
        [("w", w), ("b", np.zeros(4, np.float32))],
    )
    assert onnx_flops(m, batch=3).to_dict()["total"] == 2 * 3 * 4 * 8 + 12


def test_layernorm() -> None:
    # (2, 5, 8): 5 per element (mean sum, subtract, square, variance sum, divide) + 2 per row + scale + bias
    expected = 5 * 80 + 2 * 10 + 80 + 80
    assert torch_flops(nn.LayerNorm(8), images=torch.randn(2, 5, 8)).total == expected
    m = _graph(
        [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1)],
        [_vi("x", ["n", 5, 8])],
        [_vi("y", ["n", 5, 8])],
        [("s", np.ones(8, np.float32)), ("b", np.zeros(8, np.float32))],
    )
    assert onnx_flops(m, batch=2).total == expected


def test_layernorm_decomposed_matches_fused() -> None:
    # the ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div form (older exports) costs the same 5 N + 2 rows
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
        helper.make_node("Sub", ["x", "mu"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["y"]),
    ]
    m = _graph(
        nodes,
        [_vi("x", ["n", 5, 8])],
        [_vi("y", ["n", 5, 8])],
        [("two", np.array(2.0, np.float32)), ("eps", np.array(1e-6, np.float32))],
    )
    assert onnx_flops(m, batch=2).total == 5 * 80 + 2 * 10
    assert torch_flops(nn.LayerNorm(8, elementwise_affine=False), images=torch.randn(2, 5, 8)).total == 420


def test_dyt() -> None:
    # tanh(alpha * x) * w + b: mul, tanh, mul, add = 4 per element
    assert torch_flops(DyT(8), images=torch.randn(2, 5, 8)).total == 4 * 80
    nodes = [
        helper.make_node("Mul", ["a", "x"], ["ax"]),
        helper.make_node("Tanh", ["ax"], ["t"]),
        helper.make_node("Mul", ["t", "w"], ["tw"]),
        helper.make_node("Add", ["tw", "b"], ["y"]),
    ]
    m = _graph(
        nodes,
        [_vi("x", ["n", 5, 8])],
        [_vi("y", ["n", 5, 8])],
        [("a", np.array([0.5], np.float32)), ("w", np.ones(8, np.float32)), ("b", np.zeros(8, np.float32))],
    )
    assert onnx_flops(m, batch=2).total == 320


def test_conv() -> None:
    # 4 output channels x 6x6, each 3*3*3 = 27 multiply-adds: 2 * 144 * 27 = 7776, + 144 bias adds
    conv = nn.Conv2d(3, 4, 3, padding=1)
    t = torch_flops(conv, images=torch.randn(1, 3, 6, 6))
    assert (t.matmul, t.elementwise) == (7776, 144)
    m = _graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
        [_vi("x", ["n", 3, 6, 6])],
        [_vi("y", ["n", 4, 6, 6])],
        [("w", np.zeros((4, 3, 3, 3), np.float32)), ("b", np.zeros(4, np.float32))],
    )
    o = onnx_flops(m, batch=1)
    assert (o.matmul, o.elementwise) == (7776, 144)


def test_gelu_softmax_attention() -> None:
    assert torch_flops(nn.GELU(), images=torch.randn(2, 10)).total == 5 * 20
    assert torch_flops(nn.Softmax(-1), images=torch.randn(2, 10)).total == 5 * 20
    q = torch.randn(1, 2, 4, 8)

    class Attn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(x, x, x)

    t = torch_flops(Attn(), images=q)
    # QK^T and PV: 2 * 2*(1*2*4*4*8); softmax 5 * 32 scores; q and k scaled: 64 + 64
    assert (t.matmul, t.elementwise) == (1024, 160 + 128)
    gelu = [
        helper.make_node("Div", ["x", "r2"], ["a"]),
        helper.make_node("Erf", ["a"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["x", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
        helper.make_node("Softmax", ["y"], ["s"], axis=-1),
    ]
    m = _graph(
        gelu,
        [_vi("x", ["n", 10])],
        [_vi("s", ["n", 10])],
        [
            ("r2", np.array(1.41, np.float32)),
            ("one", np.array(1, np.float32)),
            ("half", np.array(0.5, np.float32)),
        ],
    )
    assert onnx_flops(m, batch=2).total == 100 + 100


def test_unknown_ops_are_listed_not_hidden() -> None:
    m = _graph([helper.make_node("HardSwish", ["x"], ["y"])], [_vi("x", ["n", 4])], [_vi("y", ["n", 4])])
    c = onnx_flops(m, batch=1)
    assert c.total == 0 and c.uncounted == ("HardSwish",)
    assert format_flops(2.955e9) == "2.96 GFLOP"


# -- the full tiny detector: both counters agree -------------------------------------------------------------
@pytest.fixture(scope="module", params=["dyt", "layernorm"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    det = build_study_detector("fbft", "vit_tiny_test_patch14", request.param, 56, seed=0)
    out = tmp_path_factory.mktemp(f"flops_{request.param}")
    export_onnx(det, out, fold_norms=False)  # torch counts every norm affine
    return det, out / "model.onnx"


@pytest.mark.parametrize("batch", [1, 3])
def test_torch_and_onnx_agree_on_tiny_detector(tiny: tuple[object, Path], batch: int) -> None:
    det, path = tiny
    t, o = torch_flops(det, batch), onnx_flops(path, batch)
    assert agreement([t, o]) <= 0.01
    assert t.matmul == o.matmul  # products and convolutions: identical by construction
    assert t.uncounted == () and o.uncounted == ()
    assert t.total > 6_000_000 * batch


def test_dyt_and_layernorm_norm_costs_differ_as_defined(tiny: tuple[object, Path]) -> None:
    det, path = tiny
    o = onnx_flops(path, 1)
    # 26 norms (2 per block x 12, + the final norm on each of the 2 taps) over 17 tokens x 32 channels = 544
    if det.spec.norm == "layernorm":
        assert o.by_op["LayerNormalization"] == 26 * (7 * 544 + 2 * 17)
    else:
        assert o.by_op["Tanh"] == 26 * 544


@pytest.mark.parametrize("batch", [1, 2])
def test_swin_padding_shapes_are_read_by_running_the_graph(tmp_path: Path, batch: int) -> None:
    """timm's Swin window padding exports as a Pad whose amounts are computed from Shape ops; neither ONNX nor
    ORT's symbolic shape inference makes it static, so the counter runs the graph once on zeros to read shapes."""
    from edgead.models import build_detector, detector_spec

    torch.manual_seed(0)
    det = build_detector(detector_spec("fbft", "swin_tiny_test", input_size=64)).eval()
    export_onnx(det, tmp_path, fold_norms=False)
    t, o = torch_flops(det, batch), onnx_flops(tmp_path / "model.onnx", batch)
    assert t.matmul == o.matmul and agreement([t, o]) <= 0.01
    assert o.total == 7_967_652 * batch
