"""Artifact discovery: which runner measures ``engine`` at ``precision`` for a checkpoint or an export folder.

Where each artifact lives, which engine runs checkpoints and how a missing artifact is built come from the
registry (``edgead.registry``); a combination that cannot run here comes back as a one-line reason.
"""

from __future__ import annotations

from pathlib import Path

from edgead import registry
from edgead.errors import EdgeadError
from edgead.runtimes.base import Runner


def _reference_source(target: Path) -> Path | None:
    """The checkpoint behind ``target``: itself, or the one an export's manifest names."""
    if registry.is_checkpoint(target):
        return target
    try:
        from edgead.runtimes.manifest import read_manifest

        ckpt = read_manifest(target, verify=False).extra.get("checkpoint")
    except EdgeadError:
        return None
    return Path(ckpt) if ckpt and Path(ckpt).is_dir() else None


def find_runner(target: Path, engine: str, precision: str) -> tuple[Runner | None, str, str]:
    """(runner or None, artifact path, reason when None)."""
    from edgead import runtimes

    eng = registry.get(engine)
    missing = eng.missing()
    if missing:
        return None, "", missing
    if eng.checkpoint:
        src = _reference_source(target)
        if src is None:
            return (
                None,
                "",
                "no checkpoint: the export's manifest names none (export with a checkpoint source)",
            )
        return runtimes.load(src, engine=eng.name), str(src), ""
    folder = registry.artifact_folder(target, eng.name, precision)
    if not (folder / registry.MANIFEST).is_file():
        hint = eng.build_hint(precision)
        return None, str(folder), f"no {folder.name}/ artifact" + (f" (build it: {hint})" if hint else "")
    try:
        return runtimes.load(folder, engine=engine), str(folder), ""
    except EdgeadError as exc:
        return None, str(folder), str(exc).splitlines()[0]
