"""The engine and artifact registry: every fact about an engine is written here once, as one row.

Per engine: the name the CLI and runners use and its aliases, the name written into manifests, the runner module,
the Python package it needs and the pip extra that installs it, the compiler that builds its artifacts, the
precisions it runs and builds, the sub-folder of an export folder that holds each artifact and its model file, and
the command that builds a missing one; and its capabilities, which callers read instead of comparing names: the
device it runs on, its runner's modes (OpenVINO's latency/throughput), whether its runner fixes the batch axis at
build time, whether its runner can run a quantised artifact's float part in a reduced precision (OpenVINO's
precision hint: an INT8 IR with its float rest in BF16, no rebuild), which engine runs checkpoints (the reference)
and which one's artifact is the export folder itself, and which of several CPU engines is preferred where both are
installed. Precisions are rows of
``edgead.precisions``. Beside the rows: the graph's tensor names and the files that mark a checkpoint and an
artifact folder. The loader, ``edgead compile``, the benchmark, the builders and the CLI read these rows; the C
core's engine list is tested against them (``tests/test_registry.py``).

Adding an engine is adding a runner module and one ``Engine`` row (``register`` does it at run time, which is how
the tests plug in a fake engine). Imports nothing heavy: the runtime side reads it without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgead import precisions
from edgead.errors import EdgeadError

#: the exported graph's input (uint8 images, NHWC) and outputs (image scores, anomaly maps)
INPUT = "images"
OUTPUTS = ("scores", "maps")
#: the file in every artifact folder (``edgead.runtimes.manifest``)
MANIFEST = "manifest.json"
#: the file that, without a manifest beside it, marks a training checkpoint (``edgead.models.checkpoint``)
CHECKPOINT_SPEC = "spec.json"


@dataclass(frozen=True)
class Engine:
    """One engine: how it is named, installed, built, stored and run."""

    name: str  # CLI and runner name (``--engine``, ``Runner.engine``)
    manifest_name: str  # written into manifest.json ("engine") by the builder of its artifacts
    runner: str  # module defining ``RUNNER``, a ``Runner`` subclass
    package: str  # Python package the runner imports
    extra: str  # pip extra that installs it: pip install 'edgead[<extra>]'
    precisions: tuple[str, ...]  # precisions its artifacts come in (what ``bench`` measures)
    aliases: tuple[str, ...] = ()
    runs: tuple[str, ...] = ()  # manifest names of the artifacts its runner runs (empty: only its own)
    compiler: str = ""  # "module:function" with signature (out, precision, calib, **options) -> Path; "" = none
    compiles: tuple[str, ...] = ()  # precisions ``edgead compile`` builds for it
    folder: str = "{name}-{precision}"  # artifact folder inside an export folder; "." is the export folder
    root_precisions: tuple[str, ...] = ()  # precisions whose artifact is the export folder itself
    hints: tuple[tuple[str, str], ...] = ()  # (precision, command) where the build command is not ``compile``
    checkpoint: bool = False  # runs training checkpoints (the reference engine)
    needs: str = ""  # hardware the package alone does not bring, named in the missing-package line
    title: str = ""  # the engine's name for people ("OpenVINO")
    model_file: str = ""  # the model file inside its artifact folders ("" = none of its own: checkpoints)
    device: str = "CPU"  # where its artifacts run ("CPU", "GPU")
    modes: tuple[str, ...] = ("latency",)  # runner settings ``mode=`` chooses between (first = the default)
    static_batch: bool = False  # its runner takes ``static_batch=N`` (batch axis fixed when the session is built)
    cpu_preference: int = 0  # where several CPU engines are installed, the higher is tried (``edgead compile``)
    profiler: bool = False  # its runner takes ``profiling=True`` and reports node times (``Runner.profile_runs``)
    #: the precision-table column its runner's ``precision_hint=`` takes, which runs the float part of a quantised
    #: artifact (``Precision.rest``) in a reduced precision with no rebuild ("" = no such setting)
    rest_hint: str = ""

    @property
    def label(self) -> str:
        return self.title or self.name

    @property
    def short(self) -> str:
        """The shortest of its names (chart labels)."""
        return min((self.name, *self.aliases), key=len)

    @property
    def tunable(self) -> bool:
        """An engine ``edgead tune`` chooses among on a CPU: runs artifacts (not checkpoints) on the CPU."""
        return self.device == "CPU" and not self.checkpoint

    def runner_options(self, mode: str | None = None, static_batch: int | None = None,
                       rest: str | None = None) -> dict[str, Any]:
        """The options its runner takes for ``mode``, a fixed batch and a quantised artifact's float part run in the
        precision ``rest`` (each only where the runner has it)."""
        opts: dict[str, Any] = {"mode": mode} if mode and len(self.modes) > 1 else {}
        if static_batch and self.static_batch:
            opts["static_batch"] = static_batch
        if hint := self.rest_precision_hint(rest):
            opts["precision_hint"] = hint
        return opts

    def rest_precision_hint(self, rest: str | None) -> str:
        """Its runner's ``precision_hint`` for running a quantised artifact's float part in ``rest`` ("" = none)."""
        if not rest or not self.rest_hint:
            return ""
        return str(getattr(precisions.get(rest), self.rest_hint))

    def rests(self, precision: str) -> list[precisions.Precision]:
        """The reduced float precisions its runner can run the float part of a ``precision`` artifact in."""
        p = precisions.find(precision)
        if p is None or not p.quantized or not self.rest_hint:
            return []
        return [precisions.get(name) for name in p.rest if name in self.precisions and self.rest_precision_hint(name)]

    @property
    def runs_artifacts(self) -> tuple[str, ...]:
        return self.runs or (self.manifest_name,)

    def folder_for(self, precision: str) -> str:
        """Sub-folder of an export folder holding this engine's ``precision`` artifact ("." = the export)."""
        if precision in self.root_precisions:
            return "."
        return self.folder.format(name=self.name, precision=precision)

    def build_hint(self, precision: str) -> str:
        """The command that builds this engine's ``precision`` artifact in an export folder OUT ("" if none)."""
        if dict(self.hints).get(precision):
            return dict(self.hints)[precision]
        if precision not in self.compiles:
            return ""
        quantized = (p := precisions.find(precision)) is not None and p.quantized
        calib = " --calib DIR" if quantized else ""
        return f"edgead compile OUT --engine {self.name} --precision {precision}{calib}"

    def missing(self) -> str | None:
        """None when the runner's package imports here, else one line naming the pip extra to install."""
        if importlib.util.find_spec(self.package) is not None:
            return None
        needs = f" (and {self.needs})" if self.needs else ""
        return f"{self.package} is not installed: pip install 'edgead[{self.extra}]'{needs}"

    def runner_class(self) -> Any:
        """The engine's ``Runner`` subclass (imports the runner module)."""
        return importlib.import_module(self.runner).RUNNER

    def compiler_function(self) -> Callable[..., Path]:
        module, _, function = self.compiler.partition(":")
        return getattr(importlib.import_module(module), function)


ENGINES: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    """Add (or replace) an engine row; its name and aliases must not name another engine."""
    for alias in (engine.name, *engine.aliases):
        owner = _owner(alias)
        if owner is not None and owner.name != engine.name:
            raise EdgeadError(f"engine name '{alias}' is taken by engine '{owner.name}'")
    ENGINES[engine.name] = engine
    return engine


def unregister(name: str) -> None:
    ENGINES.pop(name, None)


@contextmanager
def registered(engine: Engine) -> Iterator[Engine]:
    """``engine`` registered for the duration of a ``with`` block (tests, plug-ins tried out)."""
    previous = ENGINES.get(engine.name)
    register(engine)
    try:
        yield engine
    finally:
        unregister(engine.name)
        if previous is not None:
            register(previous)


def _owner(name: str) -> Engine | None:
    for e in ENGINES.values():
        if name == e.name or name in e.aliases:
            return e
    return None


def find(name: str) -> Engine | None:
    """The engine called ``name`` or one of its aliases, or None."""
    return _owner(name)


def get(name: str) -> Engine:
    """The engine called ``name`` or one of its aliases; an error listing the engines otherwise."""
    found = _owner(name)
    if found is None:
        raise EdgeadError(f"engine must be one of {', '.join(ENGINES)}, found '{name}'")
    return found


def engine_name(name: str) -> str:
    """The registry name for ``name`` or an alias (``tensorrt`` -> ``trt``)."""
    return get(name).name


def names() -> list[str]:
    return list(ENGINES)


def compilable() -> list[Engine]:
    """Engines ``edgead compile`` builds artifacts for."""
    return [e for e in ENGINES.values() if e.compiler]


def for_artifact(manifest_name: str) -> Engine:
    """The default engine for an artifact whose manifest says ``manifest_name``."""
    for e in ENGINES.values():
        if e.manifest_name == manifest_name:
            return e
    for e in ENGINES.values():
        if manifest_name in e.runs_artifacts:
            return e
    raise EdgeadError(f"expected an artifact of one of the engines {', '.join(ENGINES)}, found engine "
                      f"'{manifest_name}' in its manifest")


def reference() -> Engine:
    """The engine that runs training checkpoints (the FP32 reference)."""
    return next(e for e in ENGINES.values() if e.checkpoint)


def exporter() -> Engine:
    """The engine whose full-precision artifact is the export folder itself (the FP32 ONNX export)."""
    return next(e for e in ENGINES.values() if precisions.full().name in e.root_precisions)


def tunable() -> list[Engine]:
    """CPU engines ``edgead tune`` chooses among, the preferred first."""
    return sorted((e for e in ENGINES.values() if e.tunable), key=lambda e: -e.cpu_preference)


def is_checkpoint(path: str | Path) -> bool:
    """A training checkpoint folder: a spec without an artifact manifest beside it."""
    p = Path(path)
    return (p / CHECKPOINT_SPEC).is_file() and not (p / MANIFEST).is_file()


def artifact_folder(export_dir: str | Path, engine: str, precision: str) -> Path:
    """Where the export folder ``export_dir`` keeps the artifact of ``engine`` at ``precision``."""
    folder = get(engine).folder_for(precision)
    return Path(export_dir) if folder == "." else Path(export_dir) / folder


# -- the built-in engines ----------------------------------------------------------------------------------
ONNX = register(Engine(
    name="onnxruntime", manifest_name="onnxruntime", aliases=("ort",),
    runner="edgead.runtimes.ort_runner", package="onnxruntime", extra="onnxruntime",
    precisions=("fp32", "fp16", "int8"), compiler="edgead.export.compile:build_onnxruntime",
    compiles=("fp16", "int8"),
    folder="onnx-{precision}", root_precisions=("fp32",),
    hints=(("int8", "edgead calibrate OUT --calib DIR"),),
    title="ONNX Runtime", model_file="model.onnx", static_batch=True, cpu_preference=1, profiler=True,
))
OPENVINO = register(Engine(
    name="openvino", manifest_name="openvino", aliases=("ov",),
    runner="edgead.runtimes.openvino_runner", package="openvino", extra="openvino",
    precisions=("fp32", "bf16", "int8"), runs=("openvino", "onnxruntime"),
    compiler="edgead.export.compile:build_openvino", compiles=("fp32", "bf16", "int8"),
    title="OpenVINO", model_file="model.xml", modes=("latency", "throughput"), static_batch=True,
    profiler=True, rest_hint="openvino_hint",
    cpu_preference=2,  # on x86 CPUs it ran at 0.75-1.0x ONNX Runtime's time at every precision (docs/bench.md)
))
TENSORRT = register(Engine(
    name="trt", manifest_name="tensorrt", aliases=("tensorrt",),
    runner="edgead.runtimes.trt_runner", package="tensorrt", extra="trt",
    precisions=("fp16", "int8"), compiler="edgead.export.compile:build_tensorrt", compiles=("fp16", "int8"),
    needs="an NVIDIA GPU", title="TensorRT", model_file="model.engine", device="GPU",
))
TORCH = register(Engine(
    name="torch", manifest_name="torch", runner="edgead.runtimes.torch_runner", package="torch", extra="torch",
    precisions=("fp32",), folder=".", checkpoint=True, title="PyTorch",
))
