"""INT8 for OpenVINO: NNCF post-training quantisation (transformer model type, symmetric preset, SmoothQuant),
optionally held to an accuracy budget.

Always float: the postprocessing (smoothing convolution, top-k score: a few cheap ops whose precision decides
the score), the first layer, which reads the normalised image (``image_layer``), and a density family's head
(``edgead.calib.always_float``). With an ``AccuracyTarget`` the quantised model goes through the same search as
Q/DQ (``edgead.calib.search``): layers are ranked by how much putting each one alone back in float helps on the
validation set, and the fewest most sensitive ones are put back until the budget holds. The candidates are the
matrix products, convolutions and fused attentions (``ScaledDotProductAttention``: NNCF quantises its query and
key). Putting a layer back means skipping the FakeQuantize nodes in front of its inputs and giving it back the
float model's bias (NNCF's bias correction rewrote it); SmoothQuant's scaling stays on both sides of it, so it
computes what the float layer computes, and with every candidate back the probe is the FP32 model (relative
score error 3.4e-7 on the tiny FBFT; with the corrected biases and the attentions' FakeQuantize kept it was 4.2e-4,
past the 1e-4 FP32 target, and budgets the FP32 model meets were refused "even with all 54 layers in float").
(NNCF's ``quantize_with_accuracy_control`` was used before: its
revert restores the original model's weights while SmoothQuant's activation scaling stays, which broke every
reverted layer, map r 0.059; without SmoothQuant its result missed the map target, map r 0.942, because its
validation function sees one metric only.) The layers left in float are listed in the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import Any

import numpy as np

from edgead.calib import always_float
from edgead.calib.dataset import CalibrationSet
from edgead.calib.validation import AccuracyTarget
from edgead.errors import EdgeadError, require
from edgead.registry import OUTPUTS
from edgead.spec import DetectorSpec

#: statistics methods NNCF offers for activation ranges (None: NNCF's default for the model type)
METHODS = {"minmax": "MINMAX", "mean_minmax": "MEAN_MINMAX", "percentile": "MEAN_QUANTILE",
           "histogram": "HISTOGRAM"}
#: the quantisable ops, each a candidate for the search: matrix products, convolutions, and the fused attention
#: (NNCF quantises its query and key; left out, those FakeQuantize pairs stayed in the "all float" probe)
_COMPUTE = ("MatMul", "Convolution", "ScaledDotProductAttention")


def _advanced(nncf: Any, method: str | None) -> Any:
    if method in (None, "default"):
        return None
    if method not in METHODS:
        raise EdgeadError(f"OpenVINO INT8 statistics method must be one of default, {', '.join(METHODS)}, "
                          f"found '{method}'")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, METHODS[method]))


def image_layer(model: Any) -> str | None:
    """Friendly name of the first convolution / matrix product, the layer that reads the normalised image.

    It stays float: the image has 256 levels per channel, and after the per-channel normalisation one symmetric
    8-bit quantiser over the whole tensor keeps about half of them, noise that every later layer carries (on a
    fitted FBFT it was 92 % of the INT8 map error: 1 - r 1.5e-3 with it quantised, 1.2e-4 without). It is about
    1 % of a ViT's FLOPs. (Q/DQ leaves convolutions in float already.)
    """
    return next((op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in _COMPUTE), None)


def _compute_ops(model: Any, always: tuple[str, ...], first: str | None) -> dict[str, bool]:
    """Matrix products / convolutions that the quantiser may touch (not ``always`` float, not the image layer),
    in graph order, each with whether it reads a FakeQuantize (is INT8)."""
    post = [re.compile(p) for p in always]
    return {n: q for n, q in _fq_inputs(model).items() if n != first and not any(p.match(n) for p in post)}


def float_layers(model: Any, always: tuple[str, ...], first: str | None) -> tuple[list[str], int]:
    """(names of the quantisable ops left in float, how many quantisable ops there are)."""
    ops = _compute_ops(model, always, first)
    return [n for n, q in ops.items() if not q], len(ops)


#: ops that carry a tensor unchanged in value, between a FakeQuantize and the op that reads it (K reaches an
#: attention through two Transposes; a weight through a Convert or Reshape)
_MOVES = ("Convert", "Reshape", "Transpose", "Squeeze", "Unsqueeze")


def _fq_behind(value: Any) -> tuple[Any, Any] | None:
    """(FakeQuantize, the input to rewire) when ``value`` is a FakeQuantize's output, directly or behind a chain of
    data-movement ops (``_MOVES``); else None. Rewiring the input to the FakeQuantize's own input skips it."""
    node, rewire = value.get_node(), None
    for _ in range(4):
        if node.get_type_name() == "FakeQuantize":
            return node, rewire
        if node.get_type_name() not in _MOVES:
            return None
        rewire, node = node.input(0), node.input_value(0).get_node()
    return None


def float_biases(model: Any) -> dict[str, tuple[int, np.ndarray]]:
    """The float model's bias of each compute op: {name of the Add reading it: (constant input index, values)}.

    NNCF's bias correction rewrites these constants for the quantised layers; a layer put back in float gets its
    own bias back, so that it computes what the float layer computes (with every layer back, the FP32 model).
    """
    out: dict[str, tuple[int, np.ndarray]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _COMPUTE:
            continue
        for target in op.output(0).get_target_inputs():
            add = target.get_node()
            if add.get_type_name() != "Add":
                continue
            k = 1 - target.get_index()
            const = add.input_value(k).get_node()
            if const.get_type_name() == "Constant":
                out[add.get_friendly_name()] = (k, np.array(const.get_data(), copy=True))
    return out


def _bypass(model: Any, layers: set[str], biases: dict[str, tuple[int, np.ndarray]] | None = None) -> Any:
    """A copy of the quantised ``model`` in which each op named in ``layers`` reads float inputs: the FakeQuantize
    in front of each input (activation and weight; directly, or behind data-movement ops) is skipped, and the
    bias it adds is the float model's again (``biases``, from ``float_biases``: bias correction undone).
    SmoothQuant's scaling stays on both sides, so the layer computes what the float layer computes (weights must
    still be float behind their FakeQuantize: NNCF's ``compress_weights`` off)."""
    from openvino import op as ov_op

    m = model.clone()
    for op in m.get_ordered_ops():
        if op.get_friendly_name() not in layers:
            continue
        for i in range(op.get_input_size()):
            found = _fq_behind(op.input_value(i))
            if found is not None:
                fq, rewire = found
                (rewire or op.input(i)).replace_source_output(fq.input_value(0))
        for target in op.output(0).get_target_inputs():
            add = target.get_node()
            if biases and add.get_friendly_name() in biases:
                k, values = biases[add.get_friendly_name()]
                add.input(k).replace_source_output(ov_op.Constant(values).output(0))
    m.validate_nodes_and_infer_types()
    return m


def still_quantised(model: Any) -> list[str]:
    """Names of the ops that read a FakeQuantize output (directly or behind data-movement ops), in graph order."""
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() not in ("FakeQuantize", *_MOVES)
            and any(_fq_behind(op.input_value(i)) is not None for i in range(op.get_input_size()))]


def _quantized_ops(model: Any, always: tuple[str, ...], first: str | None) -> list[str]:
    """Names of the quantisable ops that are INT8 (a FakeQuantize input), in graph order."""
    return [n for n, q in _compute_ops(model, always, first).items() if q]


def _fq_inputs(model: Any) -> dict[str, bool]:
    return {op.get_friendly_name(): any(_fq_behind(op.input_value(i)) is not None for i in range(op.get_input_size()))
            for op in model.get_ordered_ops() if op.get_type_name() in _COMPUTE}


def _measure_fn(model: Any, target: AccuracyTarget, biases: dict[str, tuple[int, np.ndarray]] | None = None) -> Any:
    import openvino as ov

    core = ov.Core()

    def measure(layers: list[str], quick: bool = False) -> Any:
        compiled = core.compile_model(_bypass(model, set(layers), biases) if layers else model, "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        def infer(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out = compiled(images)
            scores, maps = out[compiled.output(OUTPUTS[0])], out[compiled.output(OUTPUTS[1])]
            return np.asarray(scores).reshape(-1), np.asarray(maps)

        # images 8 at a time, or a tiled set's frames cut, run and stitched (``ValidationSet.run``)
        return target.measure_infer(infer, f"OpenVINO INT8, {len(layers)} float", "int8")

    return measure


def _search(model: Any, target: AccuracyTarget, always: tuple[str, ...], first: str | None,
            max_float: int | None, biases: dict[str, tuple[int, np.ndarray]]) -> Any:
    """The search record: the fewest layers of ``model`` back in float that meet ``target``'s budget."""
    from edgead.calib.search import fewest_float_layers

    layers = _quantized_ops(model, always, first)
    return fewest_float_layers(layers, _measure_fn(model, target, biases), target.budget, "OpenVINO INT8",
                               max_float=max_float, still_quantised=still_quantised(_bypass(model, set(layers))))


@contextlib.contextmanager
def _statistics_first(own_outputs: set[str]) -> Any:
    """While NNCF quantises: compile each statistics model it builds with its statistic outputs ahead of the
    model's own (``own_outputs``, friendly names of the Result nodes).

    NNCF appends a Result per statistic (an in-graph reduction of an activation) after the model's outputs, and the
    CPU plugin's execution order follows the order of the results: the model's outputs pull in the whole network
    first and every statistic branch (``Abs`` + ``ReduceMax``/``ReduceMin`` of an activation, up to 5477 x 1536 at
    1036 px) runs after the model's last op, so all the activations they read stay alive to the end of the
    inference. At 1036 px one inference of NNCF's statistics models took +1070 / +1350 MiB over the model (plain FP32
    inference: +213 MiB), the INT8 compile's peak; with the statistic outputs first each branch runs right after the
    activation it reads (+368 MiB). Same graph, same kernels: the statistics, and the artifact, are bitwise the same
    (docs/line-resolution.md, "Compile memory at 1036 px").
    """
    try:
        from nncf.openvino import engine
    except ImportError:  # NNCF's layout changed: quantise as it does
        yield
        return
    import openvino as ov

    original = engine.OVNativeEngine.__init__

    def init(self: Any, model: Any, *args: Any, **kwargs: Any) -> None:
        results = list(model.get_results())
        own = [r for r in results if r.get_friendly_name() in own_outputs]
        if own and len(own) < len(results) and not model.get_sinks():
            model = ov.Model([r for r in results if r.get_friendly_name() not in own_outputs] + own,
                             model.get_parameters(), model.get_friendly_name())
        original(self, model, *args, **kwargs)

    engine.OVNativeEngine.__init__ = init
    try:
        yield
    finally:
        engine.OVNativeEngine.__init__ = original


def quantize_openvino(model: Any, spec: DetectorSpec, calib: CalibrationSet, method: str | None = None,
                      target: AccuracyTarget | None = None, max_float_layers: int | None = None
                      ) -> tuple[Any, dict, dict]:
    """(quantised model, calibration record, quantisation record) for the manifest."""
    nncf = require("nncf", "nncf", "INT8 quantisation for OpenVINO")
    nncf.set_log_level(logging.WARNING)  # its per-node INFO lines drown the CLI output
    dataset = nncf.Dataset(list(calib.batches(1)))
    always = always_float(spec.family)
    first = image_layer(model)
    common = dict(
        model_type=nncf.ModelType.TRANSFORMER,
        # Symmetric activations: on FBFT ViT-S/14 (synthetic texture) the map Pearson correlation with FP32 was
        # 0.9948 against 0.9762 with the transformer default (mixed), at equal image AUROC.
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(calib),
        ignored_scope=nncf.IgnoredScope(names=[first] if first else [], patterns=list(always), validate=False),
    )
    advanced = _advanced(nncf, method)
    found = None
    own_outputs = {r.get_friendly_name() for r in model.get_results()}
    with contextlib.redirect_stdout(sys.stderr), _statistics_first(own_outputs):  # NNCF's progress bars: stderr
        if target is not None:
            # searched on a model whose weights keep their FakeQuantize (not folded to int8 constants), so a layer
            # put back in float reads its exact float weights; the artifact is then quantised again with the
            # chosen layers in NNCF's ignored scope (no SmoothQuant or bias correction on them: exact float)
            from dataclasses import replace

            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

            probe_params = replace(advanced or AdvancedQuantizationParameters(),
                                   backend_params={"compress_weights": False})
            probe = nncf.quantize(model.clone(), dataset, advanced_parameters=probe_params, **common)
            found = _search(probe, target, always, first, max_float_layers, float_biases(model))
            del probe
            if found.float_layers:
                common["ignored_scope"] = nncf.IgnoredScope(names=[*([first] if first else []),
                                                                   *found.float_layers],
                                                            patterns=list(always), validate=False)
        quantized = nncf.quantize(model, dataset, advanced_parameters=advanced, **common)
    kept, total = float_layers(quantized, always, first)  # the image layer is float by rule: not counted
    calib_rec = {**calib.describe(), "method": method or "default (NNCF, transformer model type)"}
    quant_rec = {"tool": "nncf", "accuracy_control": target is not None, "float_layers": kept,
                 "float_reason": "kept in float by the accuracy-aware search" if target else "not quantised by NNCF",
                 "quantized_layers": total - len(kept), "compute_layers": total,
                 "always_float": list(always), "image_layer": first}
    if target is not None:
        quant_rec["budget"] = {"metric": target.budget.metric, "max_drop": target.budget.max_drop}
        quant_rec["search"] = found.steps if found else []
        quant_rec["sensitivity"] = found.sensitivity if found else {}
    return quantized, calib_rec, quant_rec
