"""ONNX Runtime runner: the portable reference for exported (FP32) and Q/DQ INT8 ONNX artifacts.

The session is built from the model bytes that were checked against the manifest's sha256 (and, for a model with
external data, from the listed data files read and checked the same way), never from a path read again later.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from edgead.errors import ArtifactError, InputError, require
from edgead.registry import ONNX
from edgead.runtimes.base import Runner
from edgead.runtimes.manifest import Manifest
from edgead.runtimes.onnx_data import external_files


class OnnxRuntimeRunner(Runner):
    """One ``InferenceSession`` on the CPU provider (or the providers given).

    ``InferenceSession.run`` is documented as safe to call from several threads, so this runner is thread safe.
    """

    engine = ONNX.name
    thread_safe = True

    def __init__(self, folder: Path, manifest: Manifest, threads: int | None = None,
                 providers: list[str] | None = None, static_batch: int | None = None,
                 profiling: bool = False) -> None:
        super().__init__(folder, manifest)
        self.fix_batch(static_batch)
        ort = require(ONNX.package, ONNX.extra, "running ONNX artifacts")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        if profiling:  # a per-node trace (``profile_runs``), written to a temporary folder
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="edgead-ortprof-")) / "ort")
        if static_batch:  # the exported batch axis is named "batch": fixed, ORT plans every shape once
            opts.add_free_dimension_override_by_name("batch", static_batch)
        model = self.read_artifact(manifest.model)
        external = external_files(model, str(self.folder / manifest.model))
        if external:  # weights in other files: hand ONNX Runtime their checked bytes, so it opens no path itself
            if not hasattr(opts, "add_external_initializers_from_files_in_memory"):
                raise ArtifactError(f"{self.folder / manifest.model} keeps its weights in {', '.join(external[:3])}; "
                                    f"this onnxruntime {ort.__version__} cannot take them from memory, and reading "
                                    f"them by path would skip the hash check; upgrade onnxruntime")
            data = [self.read_artifact(name) for name in external]
            opts.add_external_initializers_from_files_in_memory(external, data, [len(d) for d in data])
        self.session = ort.InferenceSession(model, opts, providers=providers or ["CPUExecutionProvider"])
        self.check_model_input(self.session.get_inputs()[0].shape)
        self._input = self.session.get_inputs()[0].name
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.session.run(self._outputs, {self._input: images})
        return scores, maps

    def profile_runs(self, images: np.ndarray, runs: int) -> list[list[tuple[str, str, float, str]]]:
        """Each run's node kernel times from ONNX Runtime's profiling trace (``profiling=True``; the trace ends with
        this call). A node belongs to the run whose ``model_run`` span holds its start."""
        if not self.session.get_session_options().enable_profiling:
            raise InputError("ONNX Runtime profiling is off: load the runner with profiling=True")
        images = self.validate(images)
        for _ in range(runs):
            self.session.run(self._outputs, {self._input: images})
        trace = json.loads(Path(self.session.end_profiling()).read_text())
        spans = [(ev["ts"], ev["ts"] + ev["dur"]) for ev in trace
                 if ev.get("cat") == "Session" and ev.get("name") == "model_run"]
        out: list[list[tuple[str, str, float, str]]] = [[] for _ in spans]
        for ev in trace:
            if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
                continue
            i = next((i for i, (a, b) in enumerate(spans) if a <= ev["ts"] <= b), None)
            if i is not None:
                out[i].append((ev["name"][: -len("_kernel_time")], ev.get("args", {}).get("op_name", ""),
                               ev["dur"] / 1e3, ""))
        return out

    def close(self) -> None:
        self.session = None


RUNNER = OnnxRuntimeRunner
