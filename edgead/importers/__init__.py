"""Import checkpoints written by other implementations as edgead checkpoints (build side, needs torch).

``import_checkpoint(file, fmt, out, **opts)`` reads ``file``, checks it is the ``fmt`` it claims to be (a
mismatch is refused naming what was found), rebuilds the original's detector as an edgead ``Detector`` and writes
an edgead checkpoint. Formats: ``dinomaly`` (original), ``anomalib-dinomaly``, ``l2bt`` and ``timm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgead.errors import EdgeadError
from edgead.importers import anomalib_dinomaly, dinomaly, l2bt, timm
from edgead.importers.ckpt import load_restricted, tensors_of
from edgead.importers.detect import NAMES, check_format, sniff
from edgead.models.checkpoint import save_checkpoint
from edgead.models.detector import Detector
from edgead.models.weights import read_state_dict

_CONVERTERS = {m.FORMAT: m.convert for m in (dinomaly, anomalib_dinomaly, l2bt, timm)}
FORMATS = tuple(_CONVERTERS)


def convert_checkpoint(file: str | Path, fmt: str, **opts: Any) -> Detector:
    """The edgead detector for ``file`` in format ``fmt`` (not written anywhere)."""
    if fmt not in _CONVERTERS:
        raise EdgeadError(f"import format must be one of {', '.join(FORMATS)}, found '{fmt}'")
    file = Path(file)
    if file.suffix == ".safetensors":
        raw: Any = read_state_dict(file)  # sized, then read from the same open file
    else:
        raw = load_restricted(file)  # sized, then loaded from the same open file
    sd = check_format(tensors_of(raw, file.name), fmt, file.name)
    if fmt == "timm":
        opts["file"] = file
    if fmt == "anomalib-dinomaly":
        opts["checkpoint"] = raw if isinstance(raw, dict) else {}
    return _CONVERTERS[fmt](sd, file.name, **opts)


def import_checkpoint(file: str | Path, fmt: str, out: str | Path, **opts: Any) -> Path:
    """Convert ``file`` (format ``fmt``) and write the edgead checkpoint folder ``out``; returns ``out``."""
    detector = convert_checkpoint(file, fmt, **opts)
    info = {"imported_from": str(Path(file).resolve()), "format": fmt,
            "options": {k: str(v) for k, v in opts.items() if k not in ("file", "checkpoint")}}
    return save_checkpoint(detector, out, extra=info)


__all__ = ["FORMATS", "NAMES", "convert_checkpoint", "import_checkpoint", "sniff"]
