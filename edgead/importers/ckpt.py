"""Read checkpoint files without running code from them, Lightning ``.ckpt`` files included.

Everything goes through ``torch.load(weights_only=True)``, PyTorch's restricted unpickler: only tensors,
containers and numbers are built, and any other global must be allow-listed. A Lightning checkpoint written by
anomalib also pickles a few records edgead never uses (an anomalib enum in ``hyper_parameters``, numpy arrays in
the optimizer and scheduler state); exactly those names are allow-listed, each bound to an inert stand-in that
only remembers its arguments, so nothing from anomalib, Lightning or numpy is imported or called. A checkpoint
asking for any other global (``os.system``, ``builtins.eval``, a class of its own...) is refused naming it,
before anything is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgead.errors import ArtifactError, InputError

#: Globals an anomalib/Lightning checkpoint may hold besides tensors (optimizer and scheduler state, enums).
_INERT_NAMES = frozenset({
    "_codecs.encode",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
})
#: Whole packages whose records (enums, attribute dicts, configs) are read as inert stand-ins.
_INERT_PACKAGES = ("anomalib.", "lightning.", "pytorch_lightning.", "lightning_fabric.")


class Inert:
    """Stands in for a class or function a checkpoint names; keeps its arguments and state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        obj = super().__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Inert{self.args!r}"


def _is_inert(name: str) -> bool:
    return name in _INERT_NAMES or name.startswith(_INERT_PACKAGES) or name.startswith("numpy.dtypes.")


def load_restricted(path: str | Path) -> Any:
    """The object pickled in the torch file ``path``, unpickled with PyTorch's weights-only unpickler.

    Globals beyond PyTorch's defaults are accepted only when they are the inert records listed above.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"expected a checkpoint file, found nothing at {p}")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(p))
    except Exception as exc:
        raise ArtifactError(f"expected a torch checkpoint (zip or legacy pickle), could not read {p}: "
                            f"{str(exc).splitlines()[0][:200]}") from exc
    refused = sorted(n for n in names if not _is_inert(n))
    if refused:
        raise ArtifactError(f"{p.name}: refusing to unpickle {', '.join(refused[:3])}: a checkpoint may only hold "
                            "tensors, numbers, strings and Lightning/anomalib records; nothing was executed")
    try:
        with torch.serialization.safe_globals([(Inert, n) for n in names]):
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"expected a torch checkpoint, could not read {p}: "
                            f"{str(exc).splitlines()[0][:200]}") from exc


def tensors_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object (``state_dict`` / ``model`` wrappers removed)."""
    for key in ("state_dict", "model", "teacher", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"expected a dictionary of tensors in {source}, found {type(obj).__name__}")
    return dict(obj)
