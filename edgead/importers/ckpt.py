"""Read checkpoint files without running code from them, Lightning ``.ckpt`` files included.

Everything goes through ``torch.load(weights_only=True)``, PyTorch's restricted unpickler: only tensors,
containers and numbers are built, and any other global must be allow-listed. A Lightning checkpoint written by
anomalib also pickles a few records edgead never uses (an anomalib enum in ``hyper_parameters``, numpy arrays in
the optimizer and scheduler state); exactly those names are allow-listed, each bound to an inert stand-in that
only remembers its arguments, so nothing from anomalib, Lightning or numpy is imported or called. A checkpoint
asking for any other global (``os.system``, ``builtins.eval``, a class of its own...) is refused naming it,
before anything is unpickled.

Before that, ``open_checked`` bounds what the file may inflate to: at most ``max_bytes()`` and at most ``MAX_RATIO``
times the file's own size; a torch zip by its entries' uncompressed sizes, read from the zip's directory without
decompressing anything, a safetensors file by its size (it is stored uncompressed). A legacy (pre-1.6, non-zip)
torch pickle is refused: PyTorch allocates each tensor at the size the pickle declares before reading its bytes,
so its size cannot be bounded beforehand.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from edgead.errors import ArtifactError, InputError

#: Most bytes an imported file may hold once decompressed (``EDGEAD_IMPORT_MAX_BYTES`` overrides it): the largest
#: detector edgead imports, Dinomaly on ViT-L/14 (about 0.41 G parameters, 1.7 GB in float32), plus an anomalib
#: Lightning file's optimizer state (Adam's two moments of the trainable 0.11 G, 0.9 GB): 2.6 GB, with margin.
MAX_BYTES = 4 << 30
MAX_BYTES_ENV = "EDGEAD_IMPORT_MAX_BYTES"
#: torch.save stores tensors uncompressed, and trained weights barely compress: a zip that inflates to more than
#: this many times its own size is a decompression bomb, not a checkpoint (262 KB inflating to 256 MB is 1000x).
MAX_RATIO = 16

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


def max_bytes() -> int:
    """The decompressed-size cap: ``EDGEAD_IMPORT_MAX_BYTES`` (a positive number of bytes) or ``MAX_BYTES``."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return MAX_BYTES
    if not raw.isdigit() or int(raw) <= 0:
        raise InputError(f"expected {MAX_BYTES_ENV} to be a positive number of bytes, found '{raw[:40]}'")
    return int(raw)


def _check_inflated(f: BinaryIO, p: Path) -> None:
    """Refuse the open file ``f`` (named ``p``) if it would hold more than ``max_bytes()`` once decompressed, or
    inflate to more than ``MAX_RATIO`` times its size; reads only the zip directory, and rewinds ``f``."""
    cap, size = max_bytes(), os.fstat(f.fileno()).st_size
    if zipfile.is_zipfile(f):
        try:
            with zipfile.ZipFile(f) as z:  # a ZipFile given a file object leaves it open
                total = sum(info.file_size for info in z.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ArtifactError(f"{p.name}: expected a torch zip checkpoint, found an unreadable zip ({exc})") from None
    elif p.suffix == ".safetensors":
        total = size
    else:
        raise ArtifactError(f"{p.name}: expected a torch zip checkpoint (torch.save since PyTorch 1.6) or a "
                            f".safetensors file, found neither; a legacy torch pickle declares tensor sizes PyTorch "
                            f"allocates before reading them, so it is not loaded: re-save it with a current torch.save")
    f.seek(0)
    if total > cap:
        raise ArtifactError(f"{p.name}: expected at most {cap} bytes once decompressed, found {total} bytes; nothing "
                            f"was loaded (a larger trusted file: set {MAX_BYTES_ENV})")
    if total > MAX_RATIO * size:
        raise ArtifactError(f"{p.name}: expected a checkpoint stored as torch.save writes it (uncompressed), found "
                            f"{size} bytes that inflate to {total}; nothing was loaded (re-save it with torch.save)")


@contextlib.contextmanager
def open_checked(path: str | Path) -> Iterator[tuple[Path, BinaryIO]]:
    """The file at ``path``, opened once and size-checked (``_check_inflated``), rewound for reading: load from this
    file object, not the path, so the file checked is the file loaded."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"expected a checkpoint file, found nothing at {p}")
    with open(p, "rb") as f:
        _check_inflated(f, p)
        yield p, f


def load_restricted(path: str | Path) -> Any:
    """The object pickled in the torch file ``path``, unpickled with PyTorch's weights-only unpickler.

    Globals beyond PyTorch's defaults are accepted only when they are the inert records listed above. The file is
    opened once: its decompressed size is checked (``open_checked``), its globals listed and it is loaded from that
    one open file, so a file swapped on disk in between is never what gets loaded.
    """
    with open_checked(path) as (p, f):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(f)
        except Exception as exc:
            raise ArtifactError(f"expected a torch checkpoint, could not read {p}: "
                                f"{str(exc).splitlines()[0][:200]}") from exc
        refused = sorted(n for n in names if not _is_inert(n))
        if refused:
            raise ArtifactError(f"{p.name}: refusing to unpickle {', '.join(refused[:3])}: a checkpoint may only "
                                "hold tensors, numbers, strings and Lightning/anomalib records; nothing was executed")
        f.seek(0)
        try:
            with torch.serialization.safe_globals([(Inert, n) for n in names]):
                return torch.load(f, map_location="cpu", weights_only=True)
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
