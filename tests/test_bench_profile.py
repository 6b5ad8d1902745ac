"""The per-op profile's grouping, checked on OpenVINO performance counters recorded from the demo detector's
artifacts (``tests/golden/openvino_counters.json``): every product kind the CPU plugin runs is a product."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgead.bench.profile import GROUPS, classify, group_nodes, is_product

DUMP = json.loads((Path(__file__).parent / "golden" / "openvino_counters.json").read_text())


def test_int8_counters_put_every_quantized_product_under_products() -> None:
    rows = DUMP["int8"]
    groups = {g.group: g for g in group_nodes([(n, t, ms, e) for n, t, e, ms in rows])}
    assert set(groups) <= set(GROUPS) and "other" not in groups
    # 12 blocks x 4 linears + 6 student linears = 54 int8 FullyConnectedQuantizedLegacy, + the patch embedding
    fc = [r for r in rows if r[1] == "FullyConnectedQuantizedLegacy"]
    assert len(fc) == 54 and {r[2] for r in fc} == {"brgemm_avx512_i8"}
    patch = [r for r in rows if r[1] == "Convolution" and "/post/" not in r[0]]
    assert len(patch) == 1
    assert groups["products"].nodes == 55
    assert groups["products"].ms == pytest.approx(sum(r[3] for r in fc + patch))
    assert groups["products"].ms == pytest.approx(185.011, abs=1e-3)
    # what is left: the 12 attention subgraphs, the 24 FakeQuantize and NNCF's smooth-quant scales, 25 norms
    assert groups["attention"].nodes == 12
    assert groups["quantize"].nodes == 62
    assert groups["norm"].nodes == 25
    assert sum(g.share for g in groups.values()) == pytest.approx(1.0)


def test_fp32_and_bf16_product_kernels_are_products() -> None:
    kinds = {tuple(k) for k in DUMP["fp32_bf16_kinds"]}
    products = {k for k in kinds if is_product(*k)}
    assert products == {("FullyConnected", "gemm_mlas_f32"), ("FullyConnected", "brgconv_avx512_1x1_f32"),
                        ("FullyConnected", "brgemm_avx512_bf16"), ("Convolution", "brgconv_avx512_f32"),
                        ("Convolution", "brgconv_avx512_bf16")}
    assert ("Reorder", "reorder_brgemm_f32") in kinds and not is_product("Reorder", "reorder_brgemm_f32")


@pytest.mark.parametrize(("op", "kernel", "group"), [
    ("FullyConnectedQuantizedLegacy", "brgemm_avx512_amx_int8", "products"),  # AMX (the CPU plugin's naming)
    ("FullyConnected", "brgemm_avx512_amx_bf16", "products"),
    ("MatMul", "jit_gemm_f32", "products"),
    ("MatMulInteger", "", "products"),  # ONNX Runtime's quantized product
    ("SomeFutureFC", "brgemm_avx512_i8", "products"),  # a new layer name, but a GEMM kernel
    ("Subgraph", "jit_avx512_i8", "attention"),
    ("FakeQuantize", "jit_avx512_f32", "quantize"),
    ("Transpose", "unknown_i8", "layout"),
])
def test_classify_by_layer_and_kernel(op: str, kernel: str, group: str) -> None:
    assert classify("/backbone/blocks.3/attn/x", op, False, kernel) == group


def test_engine_named_nodes_take_the_context_of_the_node_before() -> None:
    assert classify("Multiply_8517", "PowerStatic", False, "jit_avx512_f32", "/backbone/blocks.0/attn/Split") \
        == "attention"
    assert classify("MVN_58_0_0/nncf_smooth_quant", "Multiply", False, "jit_avx512_f32", "/backbone/Add") == "quantize"
