"""ONNX Runtime runner: the portable reference for exported (FP32) and Q/DQ INT8 ONNX artifacts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgead.errors import require
from edgead.runtimes.base import Runner
from edgead.runtimes.manifest import Manifest


class OnnxRuntimeRunner(Runner):
    """One ``InferenceSession`` on the CPU provider (or the providers given).

    ``InferenceSession.run`` is documented as safe to call from several threads, so this runner is thread safe.
    """

    engine = "onnxruntime"
    thread_safe = True

    def __init__(self, folder: Path, manifest: Manifest, threads: int | None = None,
                 providers: list[str] | None = None, static_batch: int | None = None) -> None:
        super().__init__(folder, manifest)
        self.fix_batch(static_batch)
        ort = require("onnxruntime", "onnxruntime", "running ONNX artifacts")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        if static_batch:  # the exported batch axis is named "batch": fixed, ORT plans every shape once
            opts.add_free_dimension_override_by_name("batch", static_batch)
        self.session = ort.InferenceSession(str(self.folder / manifest.model), opts,
                                            providers=providers or ["CPUExecutionProvider"])
        self.check_model_input(self.session.get_inputs()[0].shape)
        self._input = self.session.get_inputs()[0].name
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.session.run(self._outputs, {self._input: images})
        return scores, maps

    def close(self) -> None:
        self.session = None


RUNNER = OnnxRuntimeRunner
