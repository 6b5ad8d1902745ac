"""``load(path, engine=None)``: read the manifest, pick the engine, import its runner module lazily.

Each engine lives in its own module ``edgead.runtimes.<module>`` defining a ``Runner`` subclass named ``RUNNER``;
adding an engine is adding one file and one line in ``ENGINES``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from edgead.errors import ArtifactError, EdgeadError
from edgead.runtimes.base import Runner
from edgead.runtimes.manifest import read_manifest

#: engine name -> (runner module, Python package it needs, pip extra, artifact engines it can run)
ENGINES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "onnxruntime": ("edgead.runtimes.ort_runner", "onnxruntime", "onnxruntime", ("onnxruntime",)),
    "openvino": ("edgead.runtimes.openvino_runner", "openvino", "openvino", ("openvino", "onnxruntime")),
    "trt": ("edgead.runtimes.trt_runner", "tensorrt", "trt", ("tensorrt",)),
    "torch": ("edgead.runtimes.torch_runner", "torch", "torch", ("torch",)),
}
_ALIASES = {"tensorrt": "trt", "ort": "onnxruntime", "ov": "openvino"}
_DEFAULT_FOR_ARTIFACT = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "trt", "torch": "torch"}


def engine_name(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in ENGINES:
        raise EdgeadError(f"engine must be one of {', '.join(ENGINES)}, found '{name}'")
    return name


def missing_engine(name: str) -> str | None:
    """None when ``name``'s Python package is importable here, else one line naming the pip extra."""
    import importlib.util

    _module, package, extra, _runs = ENGINES[engine_name(name)]
    if importlib.util.find_spec(package) is not None:
        return None
    gpu = " (and an NVIDIA GPU)" if extra == "trt" else ""
    return f"{package} is not installed: pip install 'edgead[{extra}]'{gpu}"


def available_engines() -> list[str]:
    """Engines whose Python package is importable here."""
    return [e for e in ENGINES if missing_engine(e) is None]


def load(path: str | Path, engine: str | None = None, **options: object) -> Runner:
    """A runner for the artifact folder ``path`` (or a checkpoint folder, with the torch engine)."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if (p / "spec.json").is_file() and not (p / "manifest.json").is_file():
        if engine not in (None, "torch"):
            raise ArtifactError(f"{p} is a training checkpoint, which runs on the torch engine only; "
                                f"export it first (edgead export {p} -o OUT)")
        return importlib.import_module(ENGINES["torch"][0]).RUNNER.from_checkpoint(p, **options)
    manifest = read_manifest(p)
    name = engine_name(engine) if engine else _DEFAULT_FOR_ARTIFACT.get(manifest.engine, manifest.engine)
    module, _package, _extra, runs = ENGINES[engine_name(name)]
    if manifest.engine not in runs:
        raise ArtifactError(
            f"engine '{name}' cannot run a {manifest.engine} artifact ({p}); it runs {', '.join(runs)} artifacts"
        )
    mod = importlib.import_module(module)
    return mod.RUNNER(p, manifest, **options)
