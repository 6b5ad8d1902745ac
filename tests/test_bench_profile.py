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


def test_runner_options_pass_only_what_was_given() -> None:
    from edgead.bench.profile import runner_options

    assert runner_options() == {}
    assert runner_options(precision_hint="bf16", static_batch=8, mode="throughput") == {
        "precision_hint": "bf16", "static_batch": 8, "mode": "throughput"}


def test_cli_passes_precision_hint_static_batch_and_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import edgead.bench.profile as prof

    seen = {}

    def fake(artifact, engine, batch, iters, threads, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.update(artifact=artifact, batch=batch, threads=threads, **kw)
        groups = group_nodes([("/backbone/blocks.0/mlp/fc1", "FullyConnected", 8.0, "brgemm_avx512_bf16")])
        return {"artifact": str(artifact), "engine": "openvino", "batch": batch, "iters": iters,
                "options": prof.runner_options(threads, kw["precision_hint"], kw["static_batch"], kw["mode"]),
                "executes": "bf16", "total_ms": 8.0, "groups": [g.__dict__ for g in groups],
                "machine": {"cores": 2, "flags": {"avx512_bf16": True}}}

    monkeypatch.setattr(prof, "profile", fake)
    monkeypatch.setattr("sys.argv", ["profile", str(tmp_path), "--batch", "8", "--precision-hint", "bf16",
                                     "--static-batch", "8", "--mode", "throughput", "--json", str(tmp_path / "p.json")])
    prof.main()
    assert seen["precision_hint"] == "bf16" and seen["static_batch"] == 8 and seen["mode"] == "throughput"
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["options"] == {"precision_hint": "bf16", "static_batch": 8, "mode": "throughput"}


def test_foreign_graph_is_grouped_by_type_and_position() -> None:
    # a graph with another exporter's names (anomalib's ONNX export): no /backbone, no /post
    rows = [("node_sub_7", "Subtract", 1.0, "jit_avx512_f32"),               # normalisation before the encoder
            ("input/fq_output_0", "FakeQuantize", 0.5, "jit_avx512_f32"),
            ("node_Conv_1", "Convolution", 4.0, "brgconv_avx512_bf16"),       # patch embedding: the first product
            ("node_ln_1", "MVN", 0.5, "jit_avx512_bf16"),
            ("node_softmax", "Softmax", 0.7, "jit_avx512_bf16"),
            ("node_scaled_dot_product_attention_3/fq_output_0", "Subgraph", 2.0, "jit_avx512_i8"),
            ("node_add_1", "Add", 0.2, "jit_avx512_bf16"),
            ("node_fc_last", "FullyConnected", 3.0, "brgemm_avx512_i8"),      # the last product
            ("node_cos", "Multiply", 0.3, "jit_avx512_f32"),                  # the cosine map
            ("node_up", "Interpolate", 0.9, "jit_avx512_f32"),
            ("node_Conv_2046", "Convolution", 0.4, "jit_avx512_f32"),         # the blur
            ("node_sort", "TopK", 0.6, "ref_any_f32"),
            ("node_mean", "ReduceMean", 0.1, "jit_avx512_f32")]
    groups = {g.group: g for g in group_nodes(rows, positional=True)}
    assert groups["preprocess"].ms == 1.0 and groups["quantize"].ms == 0.5
    assert groups["products"].nodes == 2 and groups["products"].ms == 7.0
    assert groups["norm"].ms == 0.5 and groups["attention"].ms == pytest.approx(2.7)
    assert groups["residual/elementwise"].ms == 0.2
    assert groups["distance"].ms == 0.3 and groups["upsample"].ms == 0.9 and groups["blur"].ms == 0.4
    assert groups["score"].ms == pytest.approx(0.7)
    assert sum(g.share for g in groups.values()) == pytest.approx(1.0)


def test_openvino_running_averages_become_per_run_times() -> None:
    from edgead.bench.profile import decumulate

    # a node taking 10, 4, 4, 6 ms reads 10, 7, 6, 6 (OpenVINO CPU's average since compilation)
    runs = [[("/a", "MatMul", avg, "k")] for avg in (10.0, 7.0, 6.0, 6.0)]
    assert [r[0][2] for r in decumulate(runs)] == pytest.approx([10.0, 4.0, 4.0, 6.0])
