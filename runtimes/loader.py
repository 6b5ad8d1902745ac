"""``load(path, engine=None)``: read the manifest, pick the engine, import its runner module lazily.

Which engines exist, which runner module each uses and which artifacts each runs is read from the registry
(``edgead.registry``); adding an engine is adding its runner module and one registry row.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from edgead import precisions, registry
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
    """A runner for the artifact folder ``path`` (or a checkpoint folder, with the reference engine).

    ``threshold=T`` (what a tuned setting's own compile-time gate recomputed, ``tuned_choice``) replaces the
    threshold of the artifact's spec for this runner."""
    threshold = options.pop("threshold", None)
    if threshold is not None:
        runner = load(path, engine, **options)
        runner.spec = runner.spec.with_threshold(float(threshold))  # type: ignore[arg-type]
        return runner
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
    if engine is None and (tuned := tuned_choice(p, manifest.extra)) is not None:
        folder, name, tuned_options = tuned  # the artifact ``edgead tune`` chose for this export
        return load(folder, name, **{**tuned_options, **options})
    chosen = registry.get(engine) if engine else registry.for_artifact(manifest.engine)
    if manifest.engine not in chosen.runs_artifacts:
        raise ArtifactError(
            f"engine '{chosen.name}' cannot run a {manifest.engine} artifact ({p}); it runs "
            f"{', '.join(chosen.runs_artifacts)} artifacts"
        )
    return chosen.runner_class()(p, manifest, **options)


def same_machine(decided: dict) -> bool:
    """Whether the CPU model and instruction-set flags recorded by ``edgead tune`` are this machine's."""
    from edgead.bench.machine import machine_info

    here = machine_info()
    return decided.get("cpu_model") == here.get("cpu_model") and decided.get("flags") == here.get("flags")


def tuned_choice(folder: Path, extra: dict) -> tuple[Path, str, dict] | None:
    """(artifact folder, engine, runner options) named by an export's ``edgead tune`` decision, or None.

    The options are the chosen setting's: runner mode, fixed batch and, where the decision names one (``rest``), the
    precision hint that runs a quantised artifact's float part in a reduced precision (an older decision without
    it loads as before), with the threshold that setting's own compile-time gate recomputed (``threshold``: the
    artifact's manifest holds the one recomputed for its plain setting). A ``precision_hint`` recorded beside the rest
    must be the hint the rest means on the chosen engine. libedgead (``runtimes/c``) follows the same decision when
    opened on the export (``edgead_parse_tuned``), with the same checks.

    On a machine whose CPU differs from the one that decided, the choice still loads, with a warning that it was
    made elsewhere (``edgead tune OUT`` redoes it here).
    """
    decision = extra.get("tune")
    chosen = decision.get("chosen") if isinstance(decision, dict) else None
    if not isinstance(chosen, dict):
        return None
    engine, rel, mode = str(chosen.get("engine", "")), str(chosen.get("folder", "")), str(chosen.get("mode", ""))
    static = chosen.get("static_batch")
    fixed = static if isinstance(static, int) and not isinstance(static, bool) and static > 0 else None
    rest = chosen.get("rest")  # a quantised artifact's float part in a reduced precision; absent before issue 28
    if rest is not None and (not isinstance(rest, str) or precisions.find(rest) is None):
        raise ArtifactError(f"{folder / registry.MANIFEST} names a tuned float-rest precision {rest!r} that is not one "
                            f"of {', '.join(precisions.PRECISIONS)}; run edgead tune {folder} again")
    options = eng.runner_options(mode, fixed, rest) if (eng := registry.find(engine)) is not None else {}
    threshold = chosen.get("threshold")  # the setting's own recomputed threshold (a bf16 rest moves the scores)
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold):
        options["threshold"] = float(threshold)
    given, hint = chosen.get("precision_hint"), options.get("precision_hint")  # the hint recorded beside the rest
    if given is not None and given != hint:  # must be what the rest means (libedgead checks the same)
        raise ArtifactError(f"{folder / registry.MANIFEST} names the tuned precision hint {given!r}, but its float "
                            f"rest {repr(rest) if rest is not None else 'none'} on engine {engine!r} means "
                            f"{repr(hint) if hint else 'no hint'}; run edgead tune {folder} again")
    if (rel == "." or not rel) and not options:
        return None  # the export itself, as exported: load it as usual
    rel = rel or "."
    if "/" in rel or "\\" in rel or rel == ".." or not (folder / rel).is_dir():
        raise ArtifactError(f"{folder / registry.MANIFEST} names a tuned artifact '{rel}' that is not a folder of "
                            f"{folder}; run edgead tune {folder} again")
    if not same_machine(decision.get("machine") or {}):
        cpu = (decision.get("machine") or {}).get("cpu_model")
        warnings.warn(f"{folder}: the artifact was chosen by edgead tune on another machine ({cpu}); run "
                      f"'edgead tune {folder}' here to choose for this CPU", stacklevel=3)
    return (folder if rel == "." else folder / rel), engine, options
