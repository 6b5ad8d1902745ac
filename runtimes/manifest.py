"""``manifest.json``: what an artifact folder holds, for which engine and precision, and the sha256 of each file.

Every output folder (export, each compiled engine) has one. Loading verifies it: a changed, missing or corrupt
file, or an artifact from a newer edgead, is refused with one clear line. Imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgead import __version__
from edgead.errors import ArtifactError
from edgead.fsutil import sha256_file, write_text_atomic
from edgead.registry import MANIFEST
from edgead.spec import DetectorSpec, check_compatible

MANIFEST_FORMAT = 1


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
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupt: expected JSON, found unreadable text ({exc})") from exc
    if not isinstance(d, dict):
        raise ArtifactError(f"{path} is corrupt: expected a JSON object")
    if int(d.get("format", 0)) > MANIFEST_FORMAT:
        raise ArtifactError(f"{path} has manifest format {d.get('format')}, this edgead {__version__} reads "
                            f"format {MANIFEST_FORMAT}; upgrade edgead")
    try:
        check_compatible({"version": d.get("edgead_version", "0"), "format": d.get("spec", {}).get("format", 0)})
        spec = DetectorSpec.from_dict(d["spec"])
        batch = tuple(d.get("batch", [1, None]))
        m = Manifest(
            engine=str(d["engine"]), precision=str(d["precision"]), model=str(d["model"]), spec=spec,
            files=dict(d["files"]), versions=dict(d.get("versions", {})), batch=(int(batch[0]), batch[1]),
            extra=dict(d.get("extra", {})), edgead_version=str(d.get("edgead_version", "0")),
            format=int(d.get("format", 0)),
        )
    except KeyError as exc:
        raise ArtifactError(f"{path} is corrupt: field {exc} is missing") from exc
    if verify:
        verify_files(folder, m)
    return m


def verify_files(folder: Path, m: Manifest) -> None:
    if m.model not in m.files:
        raise ArtifactError(f"{folder / MANIFEST} does not list its model file {m.model}")
    for name, digest in m.files.items():
        p = folder / name
        if not p.is_file():
            raise ArtifactError(f"artifact file {p} listed in the manifest is missing")
        if sha256_file(p) != digest:
            raise ArtifactError(f"artifact file {p} was changed or is corrupt: its sha256 differs from the manifest")


def find_artifacts(root: str | Path) -> list[Path]:
    """``root`` and its direct sub-folders that hold a manifest, in a stable order."""
    root = Path(root)
    found = [root] if (root / MANIFEST).is_file() else []
    if root.is_dir():
        found += sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())
    return found
