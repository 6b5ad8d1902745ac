"""``load(path, engine=None)``: read the manifest, pick the engine, import its runner module lazily.

Which engines exist, which runner module each uses and which artifacts each runs is read from the registry
(``edgead.registry``); adding an engine is adding its runner module and one registry row.
"""

from __future__ import annotations

from pathlib import Path

from edgead import registry
from edgead.errors import ArtifactError
from edgead.registry import ENGINES, engine_name
from edgead.runtimes.base import Runner
from edgead.runtimes.manifest import read_manifest

__all__ = ["ENGINES", "available_engines", "engine_name", "load", "missing_engine"]


def missing_engine(name: str) -> str | None:
    """None when ``name``'s Python package is importable here, else one line naming the pip extra."""
    return registry.get(name).missing()


def available_engines() -> list[str]:
    """Engines whose Python package is importable here."""
    return [e.name for e in ENGINES.values() if e.missing() is None]


def load(path: str | Path, engine: str | None = None, **options: object) -> Runner:
    """A runner for the artifact folder ``path`` (or a checkpoint folder, with the reference engine)."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if registry.is_checkpoint(p):
        ref = registry.reference()
        if engine is not None and registry.get(engine).name != ref.name:
            raise ArtifactError(f"{p} is a training checkpoint, which runs on the {ref.name} engine only; "
                                f"export it first (edgead export {p} -o OUT)")
        return ref.runner_class().from_checkpoint(p, **options)
    manifest = read_manifest(p)
    chosen = registry.get(engine) if engine else registry.for_artifact(manifest.engine)
    if manifest.engine not in chosen.runs_artifacts:
        raise ArtifactError(
            f"engine '{chosen.name}' cannot run a {manifest.engine} artifact ({p}); it runs "
            f"{', '.join(chosen.runs_artifacts)} artifacts"
        )
    return chosen.runner_class()(p, manifest, **options)
