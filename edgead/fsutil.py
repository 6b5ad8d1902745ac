"""Atomic file and folder writes, the one output-target rule, and hashing.

Nothing half-written stays on disk when something fails, and no writer replaces what edgead did not write:
``check_output_target`` is the rule every writer goes through (``atomic_dir`` applies it). Outputs are created
with the permissions a normal file gets under the process umask (not the 0700/0600 of ``tempfile``), so a
service running as another user can read an artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgead.errors import OutputError

#: Written into every folder ``atomic_dir`` creates: the mark that edgead may replace the folder later.
OUTPUT_MARK = ".edgead-output"
#: Files that mark a folder as an edgead output written before the mark existed.
_LEGACY_MARKS = ("manifest.json", "spec.json", ".edgead-build-c.json")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public(path: Path, mode: int) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would (``mode`` minus the umask)."""
    os.chmod(path, mode & ~_umask())


def is_edgead_output(folder: Path) -> bool:
    return any((folder / name).is_file() for name in (OUTPUT_MARK, *_LEGACY_MARKS))


def check_output_target(target: str | Path, inputs: tuple[str | Path, ...] = (), kind: str = "folder") -> Path:
    """The one rule for every output: refuse a target whose replacement could lose data that edgead did not write.

    A ``kind="folder"`` target may be absent, an empty folder or an earlier edgead output (it holds
    ``.edgead-output``, a manifest or a checkpoint spec); a ``kind="file"`` target may be absent or a regular
    file. Refused, with an ``OutputError``: a regular file where a folder goes
    (or a folder where a file goes), a foreign non-empty folder, the working folder or one of its parents, and any
    target that is or contains one of ``inputs`` (a target inside an input folder is fine: it replaces nothing).
    """
    t = Path(target)
    resolved = t.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"expected a new or earlier edgead output {kind} as target, found the working folder "
                          f"or one of its parents ({t}); name a sub-folder such as runs/out")
    for src in inputs:
        s = Path(src).resolve()
        if resolved == s or s.is_relative_to(resolved):  # replacing it would delete the input
            raise OutputError(f"expected an output {kind} apart from the inputs, found {t}, which overlaps the "
                              f"input {src}; pick another target")
    if not t.exists() and not t.is_symlink():
        return t
    if kind == "file":
        if t.is_symlink() or not t.is_file():
            raise OutputError(f"expected a regular file or nothing at {t}, found a folder or a link; pick another "
                              f"target")
        return t
    if t.is_symlink() or not t.is_dir():
        raise OutputError(f"expected a folder or nothing at {t}, found a file or a link, which edgead will not "
                          f"replace; pick another target")
    if any(t.iterdir()) and not is_edgead_output(t):
        raise OutputError(f"expected {t} to be absent, empty or an earlier edgead output, found other files, "
                          f"which edgead will not replace; pick a new folder")
    return t


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = True, inputs: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``, on error it goes.

    ``target`` must pass ``check_output_target`` (checked before and again just before the swap), and its
    previous contents stay untouched until the new folder is complete. The new folder carries ``OUTPUT_MARK``.
    """
    target = Path(target)
    check_output_target(target, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        (tmp / OUTPUT_MARK).write_text("written by edgead; edgead may replace this folder\n")
        _public(tmp, 0o777)
        check_output_target(target, inputs)
        if target.exists():
            if not overwrite:
                raise FileExistsError(f"{target} exists")
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "wb") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; it is renamed onto ``target`` only if the block succeeds."""
    target = Path(target)
    check_output_target(target, kind="file")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            _public(tmp, 0o666)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
