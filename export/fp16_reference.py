"""FP16 arithmetic on the CPU: the FP16 ONNX graph executed op by op with numpy, for verification only.

ONNX Runtime's CPU provider has no FP16 kernels for most ops on x86; it runs them in FP32 between Casts it
inserts and then removes the FP16 round trips between neighbouring ops, so an FP16 graph there computes in
FP32 (``tests/test_precision.py`` shows ``2048 + 1`` staying 2049). Measuring FP16 error that way would measure
FP16 weights up-cast to FP32. Here the graph runs in ``onnx.reference.ReferenceEvaluator``: every FP16 tensor
is a numpy float16 array and every element-wise op rounds its result to FP16; MatMul, Gemm and Conv take FP16
inputs, accumulate in FP32 and round the output to FP16, as FP16 tensor-core kernels do. The FP32 islands run in
FP32 because the graph says so. This is a verifier, not a runtime: slow, and never used to serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgead.registry import INPUT, OUTPUTS
from edgead.runtimes.base import Runner
from edgead.runtimes.manifest import Manifest


def _accumulating_in_fp32(base: type) -> type:
    """``base`` (an onnx reference op) run in FP32 on FP16 inputs, its output rounded back to FP16."""

    class Op(base):  # type: ignore[misc, valid-type]
        def _run(self, *args: Any, **kwargs: Any) -> tuple:
            if not any(isinstance(a, np.ndarray) and a.dtype == np.float16 for a in args):
                return super()._run(*args, **kwargs)
            wide = [a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == np.float16 else a
                    for a in args]
            return tuple(o.astype(np.float16) for o in super()._run(*wide, **kwargs))

    Op.__name__ = base.__name__.split("_")[0]
    Op.op_domain = ""
    return Op


def reference_evaluator(model: onnx.ModelProto | str | Path) -> Any:
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops import op_conv, op_gemm, op_matmul

    ops = [_accumulating_in_fp32(c) for c in (op_matmul.MatMul, op_gemm.Gemm_7, op_conv.Conv)]
    return ReferenceEvaluator(str(model) if isinstance(model, Path) else model, new_ops=ops)


class Fp16ReferenceRunner(Runner):
    """The FP16 graph of ``folder`` through ``reference_evaluator``, behind the ``Runner`` interface."""

    engine = "onnx-reference-fp16"
    thread_safe = False

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        super().__init__(folder, manifest)
        self._eval = reference_evaluator(self.folder / manifest.model)

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self._eval.run(list(OUTPUTS), {INPUT: images})
        return np.asarray(scores, np.float32), np.asarray(maps, np.float32)

    def describe(self) -> str:
        return f"FP16 graph executed in FP16 (numpy reference) ({self.folder})"
