"""Checkpoints: a folder with ``detector.safetensors`` (all weights) and ``spec.json``, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from edgead.errors import ArtifactError
from edgead.fsutil import atomic_dir
from edgead.models.build import build_detector
from edgead.models.detector import Detector
from edgead.registry import CHECKPOINT_SPEC as SPEC
from edgead.spec import DetectorSpec

WEIGHTS = "detector.safetensors"


def save_checkpoint(detector: Detector, out: str | Path, extra: dict | None = None) -> Path:
    """Write the detector to folder ``out``; the folder appears only once complete."""
    out = Path(out)
    state = {k: v.detach().contiguous() for k, v in detector.state_dict().items()}
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"edgead_spec": detector.spec.to_json()})
        (tmp / SPEC).write_text(json.dumps(detector.spec.to_dict(), indent=2, sort_keys=True) + "\n")
        if extra:
            (tmp / "fit.json").write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n")
    return out


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return (p / SPEC).is_file() and (p / WEIGHTS).is_file()


def read_spec(path: str | Path) -> DetectorSpec:
    p = Path(path)
    if not (p / SPEC).is_file():
        raise ArtifactError(f"expected an edgead checkpoint folder with {SPEC}, found none in {p}")
    return DetectorSpec.from_json((p / SPEC).read_text())


def load_checkpoint(path: str | Path) -> Detector:
    """Rebuild the detector from its spec and load every weight strictly."""
    p = Path(path)
    spec = read_spec(p)
    if not (p / WEIGHTS).is_file():
        raise ArtifactError(f"expected {WEIGHTS} in checkpoint {p}, found none")
    detector = build_detector(spec)
    try:
        state = load_file(str(p / WEIGHTS))
    except Exception as exc:
        raise ArtifactError(f"checkpoint weights {p / WEIGHTS} are corrupt: {str(exc)[:200]}") from exc
    own = detector.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ArtifactError(f"checkpoint {p} does not match its spec: missing {missing[:3]}, unknown {unexpected[:3]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ArtifactError(
                f"checkpoint tensor '{k}' has shape {tuple(v.shape)}, its spec expects {tuple(own[k].shape)}"
            )
    detector.load_state_dict(state)
    return detector.eval()
