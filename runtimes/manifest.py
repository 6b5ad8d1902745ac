"""``manifest.json``: what an artifact folder holds, for which engine and precision, and the sha256 of each file.

Every output folder (export, each compiled engine) has one. Loading verifies it: a changed, missing, unlisted or
corrupt file, a name that leaves the folder, or an artifact from a newer edgead, is refused with one clear
``ArtifactError`` line, whatever the manifest holds (the mutation test in tests/test_manifest_fuzz.py keeps it
so). The file-name rule (``safe_name``) is the same as libedgead's (runtimes/c/edgead_manifest.c). Imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgead import __version__
from edgead.errors import ArtifactError
from edgead.fsutil import sha256_file, write_text_atomic
from edgead.registry import MANIFEST, exporter
from edgead.spec import DetectorSpec, check_compatible, parse_json_object

MANIFEST_FORMAT = 1
MANIFEST_MAX_BYTES = 16 << 20  # libedgead's limit too


@dataclass(frozen=True)
class Manifest:
    engine: str  # the engine's manifest name in edgead.registry (which engines run it: Engine.runs)
    precision: str  # "fp32", "bf16", "fp16", "int8"
    model: str  # main file, relative to the folder
    spec: DetectorSpec
    files: dict[str, str]  # name -> sha256
    versions: dict[str, str] = field(default_factory=dict)
    batch: tuple[int, int | None] = (1, None)  # (min, max); max None = any
    extra: dict[str, Any] = field(default_factory=dict)
    edgead_version: str = __version__
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "precision": self.precision, "model": self.model,
            "spec": self.spec.to_dict(), "files": dict(sorted(self.files.items())),
            "versions": self.versions, "batch": list(self.batch), "extra": self.extra,
            "edgead_version": self.edgead_version, "format": self.format,
        }


def safe_name(name: object) -> bool:
    """A listed file must be named plainly inside its folder: no path separators, drive colons, leading dot
    (which also rules out ``..``), control characters, and at most 255 bytes. libedgead applies the same rule."""
    return (isinstance(name, str) and 0 < len(name.encode("utf-8", "surrogatepass")) < 256 and name[0] != "."
            and not any(c in name for c in "/\\:") and all(ord(c) >= 32 for c in name))


def hash_folder(folder: Path) -> dict[str, str]:
    """sha256 of every regular file directly in ``folder`` (sub-folders are artifacts of their own)."""
    return {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }


def write_manifest(
    folder: str | Path,
    engine: str,
    precision: str,
    model: str,
    spec: DetectorSpec,
    versions: dict[str, str] | None = None,
    batch: tuple[int, int | None] = (1, None),
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Hash the folder's files and write its manifest (call it last, once every file is in place)."""
    folder = Path(folder)
    if not (folder / model).is_file():
        raise ArtifactError(f"expected the model file {model} in {folder} before writing its manifest")
    m = Manifest(engine, precision, model, spec, hash_folder(folder), dict(versions or {}), batch, dict(extra or {}))
    write_text_atomic(folder / MANIFEST, json.dumps(m.to_dict(), indent=2) + "\n")
    return m


def read_manifest(folder: str | Path, verify: bool = True) -> Manifest:
    """Read and (by default) verify a folder's manifest against the files beside it."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"expected an artifact folder, found no folder at {folder}")
    if not path.is_file():
        raise ArtifactError(f"expected {MANIFEST} in {folder}, found none; is it an edgead artifact folder?")
    try:
        with open(path, "rb") as f:
            raw = f.read(MANIFEST_MAX_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupt: expected UTF-8 JSON, found unreadable bytes ({exc})") from None
    if len(raw) > MANIFEST_MAX_BYTES:
        raise ArtifactError(f"{path} is corrupt: expected a manifest of at most {MANIFEST_MAX_BYTES} bytes")
    m = manifest_from_dict(parse_json_object(text, str(path)), str(path))
    if verify:
        verify_files(folder, m)
    return m


def _field(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ArtifactError(f"{where} is corrupt: field '{key}' is missing")
        return default
    value = d[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ArtifactError(f"{where} is corrupt: expected field '{key}' to be {names}, found {type(value).__name__}")
    return value


def manifest_from_dict(d: dict[str, Any], where: str = MANIFEST) -> Manifest:
    """Check every field's type and range and build the ``Manifest``; anything else is an ``ArtifactError``."""
    fmt = _field(d, "format", int, where, 0)
    if fmt > MANIFEST_FORMAT:
        raise ArtifactError(f"{where} has manifest format {fmt}, this edgead {__version__} reads "
                            f"format {MANIFEST_FORMAT}; upgrade edgead")
    version = _field(d, "edgead_version", str, where, "0")
    spec_d = _field(d, "spec", dict, where)
    spec_fmt = spec_d.get("format", 0)
    if not isinstance(spec_fmt, int) or isinstance(spec_fmt, bool):
        raise ArtifactError(f"{where} is corrupt: expected an integer spec.format")
    check_compatible({"version": version, "format": spec_fmt})
    spec = DetectorSpec.from_dict(spec_d)
    model = _field(d, "model", str, where)
    if not safe_name(model):
        raise ArtifactError(f"{where} is corrupt: expected a plain model file name, found '{model[:100]}'")
    files = _field(d, "files", dict, where)
    for name, digest in files.items():
        if not safe_name(name):
            raise ArtifactError(f"{where} is corrupt: expected plain file names in 'files', found '{name[:100]}'")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdefABCDEF" for c in digest)):
            raise ArtifactError(f"{where} is corrupt: expected a 64-digit sha256 for file '{name}'")
    batch = _field(d, "batch", list, where, [1, None])
    if (len(batch) != 2 or not isinstance(batch[0], int) or isinstance(batch[0], bool) or not 1 <= batch[0] <= 1 << 20
            or not (batch[1] is None or (isinstance(batch[1], int) and not isinstance(batch[1], bool)
                                         and batch[0] <= batch[1] <= 1 << 20))):
        raise ArtifactError(f"{where} is corrupt: expected 'batch' as [min, max or null] with 1 <= min <= max")
    versions = _field(d, "versions", dict, where, {})
    return Manifest(
        engine=_field(d, "engine", str, where), precision=_field(d, "precision", str, where), model=model,
        spec=spec, files={k: v.lower() for k, v in files.items()},
        versions={str(k): str(v) for k, v in versions.items()},
        batch=(batch[0], batch[1]), extra=_field(d, "extra", dict, where, {}), edgead_version=version, format=fmt,
    )


def _open_regular(p: Path) -> int:
    """A read descriptor for ``p`` only if it is a regular file and not a link: a FIFO, device or a symlink
    (to /dev/zero, or out of the artifact folder) is refused instead of hashed forever or followed."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise ArtifactError(f"artifact file {p} listed in the manifest is missing") from None
    except OSError as exc:
        raise ArtifactError(f"expected artifact file {p} to be a regular file inside its folder, found a link or "
                            f"unreadable entry ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArtifactError(f"expected artifact file {p} to be a regular file, found a FIFO, device or folder")
    return fd


def _hashed(p: Path, digest: str, keep: bool) -> bytes:
    """Hash the regular file ``p`` and compare with ``digest``; with ``keep``, the bytes that were hashed (else b"")."""
    data = b""
    with os.fdopen(_open_regular(p), "rb") as f:
        if keep:  # one read into one buffer (sized from fstat), hashed as it is
            data = f.read()
            h = hashlib.sha256(data)
        else:
            h = hashlib.sha256()
            while block := f.read(1 << 20):
                h.update(block)
    if h.hexdigest() != digest.lower():
        raise ArtifactError(f"artifact file {p} was changed or is corrupt: its sha256 differs from the manifest")
    return data


def read_verified(folder: Path, m: Manifest, name: str) -> bytes:
    """The bytes of the listed file ``name``, hashed from exactly these bytes.

    Runners compile from what this returns, never from the path: a file swapped on disk after ``verify_files``
    checked it is either refused here (its hash differs) or never read at all (time of check to time of use).
    """
    where = Path(folder) / MANIFEST
    if not safe_name(name):
        raise ArtifactError(f"{where} is corrupt: expected a plain file name, found '{str(name)[:100]}'")
    if name not in m.files:
        raise ArtifactError(f"{where} does not list {name}, which the model needs; an unlisted file could be changed "
                            f"undetected, so the artifact is refused (re-export it)")
    return _hashed(Path(folder) / name, m.files[name], keep=True)


def verify_files(folder: Path, m: Manifest) -> None:
    """Every listed file is a regular file with its sha256, the model is listed, and nothing beside the
    manifest goes unlisted (OpenVINO's model.bin, for one, is read although the manifest names model.xml)."""
    where = folder / MANIFEST
    if m.model not in m.files:
        raise ArtifactError(f"{where} does not list its model file {m.model}")
    for name, digest in m.files.items():
        if not safe_name(name):
            raise ArtifactError(f"{where} is corrupt: expected plain file names in 'files', found '{name[:100]}'")
        _hashed(folder / name, digest, keep=False)
    unlisted = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and not p.name.startswith(".")
                      and not p.is_dir() and p.name not in m.files)
    if unlisted:
        raise ArtifactError(f"{where} does not list {', '.join(unlisted[:3])}, found beside it; an unlisted file could "
                            f"be changed undetected, so the artifact is refused (re-export or remove the file)")


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` holds an export (the FP32 ONNX model ``edgead export`` wrote), not a compiled artifact."""
    folder = Path(folder)
    return (folder / MANIFEST).is_file() and read_manifest(folder, verify=False).engine == exporter().manifest_name


def export_of(artifact: str | Path) -> Path | None:
    """The export folder an artifact folder sits in (its parent, when that is an export), else None."""
    parent = Path(artifact).resolve().parent
    return parent if is_export(parent) else None


def find_artifacts(root: str | Path) -> list[Path]:
    """``root`` and its direct sub-folders that hold a manifest, in a stable order."""
    root = Path(root)
    found = [root] if (root / MANIFEST).is_file() else []
    if root.is_dir():
        # Hidden folders are edgead's own temporaries (a crashed write), never artifacts.
        found += sorted(p for p in root.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())
    return found
