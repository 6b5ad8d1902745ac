"""INT8 for OpenVINO: NNCF post-training quantisation (transformer model type, symmetric preset), optionally
accuracy-controlled.

The postprocessing (smoothing convolution, top-k score) stays in float: it is a few cheap ops whose precision
decides the score, and quantising them buys nothing. With an ``AccuracyTarget`` the build is NNCF's
``quantize_with_accuracy_control``: it ranks the quantised layers by their effect on the outputs and reverts
the most harmful to float until the validation function (edgead's own metric on the validation set, as a
drop from FP32) is within the budget. The matrix products left in float are listed in the manifest.
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
from edgead.errors import EdgeadError, FidelityError, require
from edgead.spec import DetectorSpec

#: ONNX node-name patterns of the in-graph postprocessing, kept in float for every family (``always_float``
#: adds the density heads)
FLOAT_PATTERNS = always_float("")
#: statistics methods NNCF offers for activation ranges (None: NNCF's default for the model type)
METHODS = {"minmax": "MINMAX", "mean_minmax": "MEAN_MINMAX", "percentile": "MEAN_QUANTILE",
           "histogram": "HISTOGRAM"}
_COMPUTE = ("MatMul", "Convolution")
#: NNCF reverts one group of quantisers to float per iteration; beyond this many it gives up (the gate then
#: reports the best it reached)
MAX_ITERATIONS = 40


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


def float_layers(model: Any, patterns: tuple[str, ...] = FLOAT_PATTERNS) -> tuple[list[str], int]:
    """(names of matrix products / convolutions outside ``patterns`` (always float) with no quantised input, how
    many such ops there are in all)."""
    post = [re.compile(p) for p in patterns]
    kept, total = [], 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _COMPUTE or any(p.match(op.get_friendly_name()) for p in post):
            continue
        total += 1
        sources = {op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())}
        if "FakeQuantize" not in sources:
            kept.append(op.get_friendly_name())
    return kept, total


def _validation_fn(target: AccuracyTarget) -> Any:
    """NNCF's validation function: edgead's metric on the validation set (items are indices into it).

    Given fewer items than the whole set (NNCF probes with one item to choose its ranking mode) it returns no
    metric, so NNCF ranks layers by how much their reverting moves the outputs.
    """

    def validate(compiled: Any, items: Any) -> tuple[float | None, None]:
        idx = [int(i) for i in items]
        if len(idx) < len(target.val):
            return None, None
        scores, maps = [], []
        for i in idx:
            out = compiled(target.val.images[i : i + 1])
            scores.append(np.asarray(out[0]).reshape(-1))
            maps.append(np.asarray(out[1]).reshape((1, *out[1].shape[-2:])))
        fid = target.measure(np.concatenate(scores), np.concatenate(maps), "candidate", "int8")
        drop = fid.drop(target.budget.metric)
        return (1.0 - float(drop)), None  # NNCF maximises; FP32 itself measures 1.0

    return validate


def _quantize(nncf: Any, model: Any, dataset: Any, common: dict, advanced: Any,
              target: AccuracyTarget | None) -> Any:
    if target is None:
        return nncf.quantize(model, dataset, advanced_parameters=advanced, **common)
    from dataclasses import replace

    from nncf.quantization.advanced_parameters import (
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    # No SmoothQuant under accuracy control: NNCF reverts a layer by restoring the weights of the *original*
    # model, while the activation scaling SmoothQuant inserted in front of it stays, so every reverted layer
    # computes x/s @ W instead of x @ W (measured on FBFT ViT-S/14, grass: map r 0.059 after the revert, 0.998
    # before it).
    advanced = replace(advanced or AdvancedQuantizationParameters(),
                       smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1))
    val = nncf.Dataset(list(range(len(target.val))), lambda i: target.val.images[i : i + 1])
    try:
        return nncf.quantize_with_accuracy_control(
            model, dataset, val, _validation_fn(target), max_drop=target.budget.max_drop,
            drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=advanced,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=MAX_ITERATIONS, num_ranking_workers=1), **common)
    except nncf.errors.Error as exc:  # NNCF gives up when even reverting every layer does not reach it
        raise FidelityError(f"OpenVINO INT8 could not meet a {target.budget.metric} drop of "
                            f"{target.budget.max_drop}: {exc}") from exc


def quantize_openvino(model: Any, spec: DetectorSpec, calib: CalibrationSet, method: str | None = None,
                      target: AccuracyTarget | None = None) -> tuple[Any, dict, dict]:
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
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars; stdout is for --json
        quantized = _quantize(nncf, model, dataset, common, _advanced(nncf, method), target)
    kept, total = float_layers(quantized, always)
    if first in kept:  # float by rule, like the postprocessing: not counted among the layers left out
        kept.remove(first)
        total -= 1
    calib_rec = {**calib.describe(), "method": method or "default (NNCF, transformer model type)"}
    quant_rec = {"tool": "nncf", "accuracy_control": target is not None, "float_layers": kept,
                 "float_reason": "kept in float by NNCF accuracy control" if target else "not quantised by NNCF",
                 "quantized_layers": total - len(kept), "compute_layers": total,
                 "always_float": list(always), "image_layer": first}
    if target is not None:
        quant_rec["budget"] = {"metric": target.budget.metric, "max_drop": target.budget.max_drop}
        quant_rec["smooth_quant"] = False  # see _quantize
    return quantized, calib_rec, quant_rec
