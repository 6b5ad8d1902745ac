"""Norm-affine folding: exact on hand-built graphs, parity on the exported tiny detector for both norms."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgead.bench.norms import build_study_detector
from edgead.export.fold_norms import fold_norm_affine
from edgead.export.onnx import export_onnx
from edgead.runtimes.compare import check_batch

C, N = 8, 6
RNG = np.random.default_rng(0)


def _arr(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _model(nodes, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, C])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def _assert_same(a: onnx.ModelProto, b: onnx.ModelProto, atol: float = 1e-5) -> None:
    x = _arr(3, 5, C)
    for u, v in zip(_run(a, x), _run(b, x), strict=True):
        np.testing.assert_allclose(u, v, atol=atol, rtol=0)


def _layernorm_then(consumers: list, outputs: list[str], extra: dict) -> onnx.ModelProto:
    ln = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-6)
    return _model([ln, *consumers], outputs, {"s": _arr(C), "b": _arr(C), **extra})


def test_layernorm_into_matmul_add_and_gemm() -> None:
    m = _layernorm_then(
        [
            helper.make_node("MatMul", ["y", "w1"], ["h"]),
            helper.make_node("Add", ["h", "c1"], ["o1"]),
            helper.make_node("MatMul", ["y", "w2"], ["o2"]),
        ],  # no bias: the fold adds one for b @ W
        ["o1", "o2"],
        {"w1": _arr(C, N), "c1": _arr(N), "w2": _arr(C, 4)},
    )
    folded, n = fold_norm_affine(m)
    assert n == 1
    ln = next(x for x in folded.graph.node if x.op_type == "LayerNormalization")
    assert len(ln.input) == 2  # bias dropped, scale is ones
    scale = next(i for i in folded.graph.initializer if i.name == ln.input[1])
    np.testing.assert_array_equal(numpy_helper.to_array(scale), np.ones(C, np.float32))
    assert Counter(x.op_type for x in folded.graph.node)["Add"] == 2
    _assert_same(m, folded)


def test_gemm_consumer() -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["x2"]),
        helper.make_node("LayerNormalization", ["x2", "s", "b"], ["y"], axis=-1),
        helper.make_node("Gemm", ["y", "w", "c"], ["o"], transB=1),
    ]
    m = _model(
        nodes,
        ["o"],
        {"shape": np.array([-1, C], np.int64), "s": _arr(C), "b": _arr(C), "w": _arr(N, C), "c": _arr(N)},
    )
    folded, n = fold_norm_affine(m)
    assert n == 1
    _assert_same(m, folded)


def test_norm_feeding_a_residual_is_left_alone() -> None:
    m = _layernorm_then(
        [helper.make_node("MatMul", ["y", "w"], ["h"]), helper.make_node("Add", ["y", "y"], ["r"])],
        ["h", "r"],
        {"w": _arr(C, C)},
    )
    folded, n = fold_norm_affine(m)
    assert n == 0
    assert folded == m


def test_dyt_pattern() -> None:
    nodes = [
        helper.make_node("Mul", ["x", "a"], ["ax"]),
        helper.make_node("Tanh", ["ax"], ["t"]),
        helper.make_node("Mul", ["t", "w"], ["tw"]),
        helper.make_node("Add", ["tw", "b"], ["y"]),
        helper.make_node("MatMul", ["y", "k"], ["h"]),
        helper.make_node("Add", ["c", "h"], ["o"]),
    ]
    m = _model(
        nodes,
        ["o"],
        {"a": np.array([0.7], np.float32), "w": _arr(C), "b": _arr(C), "k": _arr(C, N), "c": _arr(N)},
    )
    folded, n = fold_norm_affine(m)
    assert n == 1
    assert [x.op_type for x in folded.graph.node] == ["Mul", "Tanh", "MatMul", "Add"]
    _assert_same(m, folded)


@pytest.mark.parametrize("norm", ["dyt", "layernorm"])
def test_tiny_detector_folds_every_block_and_keeps_outputs(norm: str, tmp_path: Path) -> None:
    det = build_study_detector("fbft", "vit_tiny_test_patch14", norm, 56, seed=1)
    export_onnx(det, tmp_path, fold_norms=False)
    model = onnx.load(str(tmp_path / "model.onnx"))
    folded, n = fold_norm_affine(model)
    # norm1 -> qkv and norm2 -> fc1 in each of the 12 blocks; the tap norms feed the head's slicing: not
    # folded
    assert n == 24
    onnx.checker.check_model(folded)
    before, after = (
        Counter(x.op_type for x in model.graph.node),
        Counter(x.op_type for x in folded.graph.node),
    )
    if norm == "dyt":
        assert before["Mul"] - after["Mul"] == 24 and before["Add"] - after["Add"] == 24
    else:
        lns = [x for x in folded.graph.node if x.op_type == "LayerNormalization"]
        assert sum(len(x.input) == 2 for x in lns) == 24
    images = check_batch(3, 2, (56, 56))
    outs = []
    for m in (model, folded):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(sess.run(["scores", "maps"], {"images": images}))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
