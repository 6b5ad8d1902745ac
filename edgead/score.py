"""Bulk scoring of image archives: one row per image, resumable, embedded or on Ray Data.

``edgead score ARCHIVE --artifact A -o OUT`` reads a folder tree (or a text file listing image paths), scores every
image with one artifact and writes ``OUT/scores.csv`` (path, score, label, threshold, artifact_sha256, error),
optional heatmap panels of the anomalous images in ``OUT/heatmaps/``, and ``OUT/summary.json``.

Rows are appended chunk by chunk and flushed, so an interrupted run keeps what it finished; a rerun reads the rows,
drops a torn last line, and scores only the images that have no row yet. Rows are keyed by the image's absolute path:
whatever a distributed backend retries, each image ends with exactly one row. An image that cannot be read gets an
*error row* (no score, the reason in ``error``) and the run goes on; a rerun keeps error rows unless asked to retry
them. One run at a time writes into ``OUT`` (an ``flock`` on ``OUT/.edgead-score.lock``), files under ``OUT`` are
never part of the archive, and the run ends by reading ``scores.csv`` back: every image must have exactly one row.
Imports no torch and no Ray.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from edgead import registry
from edgead.errors import EdgeadError, InputError, OutputError
from edgead.fsutil import atomic_file, sha256_file, write_text_atomic
from edgead.imageio import IMAGE_SUFFIXES, prepare, read_image
from edgead.registry import MANIFEST

SCORES = "scores.csv"
SUMMARY = "summary.json"
HEATMAPS = "heatmaps"
LOCK = ".edgead-score.lock"
COLUMNS = ("path", "score", "label", "threshold", "artifact_sha256", "error")
#: the columns before error rows existed; such a file is rewritten with an empty ``error`` column on resume
LEGACY_COLUMNS = COLUMNS[:-1]
#: what reading one image may raise and still leave the run going: edgead's checks, the file system, OpenCV
UNREADABLE = (EdgeadError, OSError, cv2.error)

#: ``(done, total)`` progress callback
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ScoreSummary:
    """What one ``score`` run did: counts, anomaly rate and throughput of the images scored in this run."""

    total: int  # images in the archive
    scored: int  # images scored by this run
    failed: int  # images this run could not read: each got an error row
    skipped: int  # images that already had a row (resumed), error rows included
    anomalous: int  # rows labelled anomalous, over the whole output
    anomaly_rate: float | None  # anomalous / rows with a label, over the whole output (None: no threshold)
    errors: int  # error rows, over the whole output
    seconds: float
    images_per_s: float
    backend: str  # "embedded" or "ray"
    artifact: str
    artifact_sha256: str
    output: str
    per_node: dict[str, int] | None = None  # Ray: images scored by each node's actors in this run

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def list_archive(source: str | Path, skip: str | Path | None = None) -> list[Path]:
    """Image paths of ``source``: a folder tree (recursively, sorted) or a text file with one path per line.

    Relative paths in a list file are relative to the list file's folder; blank lines and ``#`` comments are
    skipped. Paths are made absolute (they are the rows' keys) and duplicates are dropped. Files under ``skip``
    (the output folder, when it lies inside the archive) are left out, so a rerun never scores its own heatmaps.
    """
    src = Path(source)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(src).parts))
        files = _outside(files, skip, src)
        if not files:
            raise InputError(f"expected image files ({', '.join(IMAGE_SUFFIXES)}) under {src}, found none")
    elif src.is_file():
        try:
            lines = src.read_text().splitlines()
        except UnicodeDecodeError:
            raise InputError(f"expected a folder or a text file listing image paths, found binary data: {src}") \
                from None
        files = []
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line)
            p = p if p.is_absolute() else src.parent / p
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"expected an image path ({', '.join(IMAGE_SUFFIXES)}) on line {n} of {src}, "
                                 f"found '{line}'")
            files.append(p)
        files = _outside(files, skip)
        if not files:
            raise InputError(f"expected image paths in the list file {src}, found none")
    else:
        raise InputError(f"expected a folder of images or a text file listing image paths, found nothing at {src}")
    seen: dict[str, Path] = {}
    for p in files:
        seen.setdefault(os.path.abspath(p), p)
    return [Path(k) for k in seen]


def _outside(files: list[Path], skip: str | Path | None, root: Path | None = None) -> list[Path]:
    """``files`` without those under ``skip``; for a folder ``root`` only when ``skip`` lies inside it (cheap)."""
    if skip is None:
        return files
    fence = os.path.realpath(skip)
    if root is not None:
        rel = os.path.relpath(fence, os.path.realpath(root))
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return files
        parts = Path(rel).parts
        return [p for p in files if p.relative_to(root).parts[: len(parts)] != parts]
    return [p for p in files if not os.path.realpath(p).startswith(fence + os.sep)]


def artifact_digest(folder: str | Path) -> str:
    """sha256 of the artifact's ``manifest.json``: it lists the sha256 of every file, so it names the artifact."""
    p = Path(folder)
    p = p.parent if p.is_file() else p
    m = p / MANIFEST
    if not m.is_file():
        raise InputError(f"expected a compiled artifact folder with manifest.json, found none in {p}")
    return sha256_file(m)


def heatmap_name(path: str) -> str:
    """A panel file name that is unique per image path and still readable."""
    return f"{Path(path).stem}-{hashlib.sha1(path.encode()).hexdigest()[:10]}.png"


def try_flock(fh: IO) -> bool:
    """Take an exclusive ``flock`` on an open file without waiting; False when another open file holds it.

    The kernel drops the lock when its holder closes the file or dies (even by SIGKILL), so a lock never outlives
    the run that took it.
    """
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_output(folder: Path) -> IO:
    """Hold ``folder``'s lock for this run, or fail at once naming the run that holds it."""
    path = folder / LOCK
    fh = open(path, "a+")  # noqa: SIM115 - held until ScoreWriter.close(); "a+" leaves the holder's note intact
    if not try_flock(fh):
        fh.seek(0)
        holder = " ".join(fh.read().split()) or "a run that is just starting"
        fh.close()
        raise OutputError(f"expected {folder} to be free, found another 'edgead score' run writing into it ({holder}; "
                          f"lock {path}); wait for it to finish or choose another -o")
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
    fh.flush()
    return fh


def duplicates_error(csv_path: Path, counts: Mapping[str, int]) -> OutputError | None:
    """The error for paths with more than one row (two writers at once), or None."""
    dup = [p for p, n in counts.items() if n > 1]
    if not dup:
        return None
    extra = sum(counts[p] - 1 for p in dup)
    return OutputError(f"expected one row per image in {csv_path}, found {len(dup)} images with more than one row "
                       f"({extra} extra rows; first: {dup[0]}), as two runs writing into one folder at once leave; "
                       f"score into a new -o")


def _one_line(reason: str) -> str:
    return " ".join(reason.split())


def unreadable_reason(exc: BaseException) -> str:
    """The ``error`` column of an image that could not be read: edgead's own message, or what the system said."""
    if isinstance(exc, EdgeadError):
        return _one_line(str(exc))
    if isinstance(exc, OSError):
        return _one_line(f"could not read the file: {exc.strerror or exc}")
    lines = str(exc).strip().splitlines()
    return _one_line(f"could not decode the image: {lines[-1] if lines else type(exc).__name__}")


class ScoreWriter:
    """Appends rows to ``OUT/scores.csv``, resuming from what an earlier run of the same artifact wrote.

    The output folder may be new, or one an earlier ``score`` run made; any other existing path is refused, so
    a typo never writes into (or over) a user's folder. The writer holds ``OUT``'s lock from construction to
    ``close()``: a second run into the same folder fails at once. ``retry_errors`` drops the error rows of earlier
    runs, so those images are read again.
    """

    def __init__(self, out: str | Path, artifact_sha256: str, retry_errors: bool = False) -> None:
        self.out = Path(out)
        self.sha = artifact_sha256
        self.csv_path = self.out / SCORES
        self.rows: dict[str, dict[str, str]] = {}
        self._check_target()
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = lock_output(self.out)
        try:
            if self.csv_path.exists():
                self._resume(retry_errors)
            else:
                write_text_atomic(self.csv_path, ",".join(COLUMNS) + "\n")
            self._fh = open(self.csv_path, "a", newline="")  # noqa: SIM115 - closed by close()
        except BaseException:
            self._lock.close()
            raise
        self._csv = csv.writer(self._fh)

    def __enter__(self) -> ScoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_target(self) -> None:
        o = self.out
        if o.exists() and not o.is_dir():
            raise InputError(f"expected -o to name a folder for the scores, found a file at {o}")
        if o.is_dir() and any(p.name != LOCK for p in o.iterdir()) and not (o / SCORES).is_file():
            raise InputError(f"expected -o to name a new folder or an earlier 'edgead score' output, found a folder "
                             f"with other files at {o}; nothing was written")

    def _resume(self, retry_errors: bool) -> None:
        raw = self.csv_path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]  # a torn last line (killed mid-write) is dropped
        reader = csv.DictReader(io.StringIO(complete.decode("utf-8", errors="strict")))
        columns = tuple(reader.fieldnames or ())
        if columns not in (COLUMNS, LEGACY_COLUMNS):
            raise InputError(f"expected {self.csv_path} to have the columns {','.join(COLUMNS)}, found "
                             f"{','.join(columns)}; choose another -o")
        counts: Counter[str] = Counter()
        for row in reader:
            if row["artifact_sha256"] != self.sha:
                raise InputError(
                    f"{self.out} holds scores of another artifact (sha256 {row['artifact_sha256'][:12]}…, this one "
                    f"is {self.sha[:12]}…); choose another -o to re-score the archive with this artifact")
            row["error"] = row.get("error") or ""
            self.rows[row["path"]] = row
            counts[row["path"]] += 1
        if (dup := duplicates_error(self.csv_path, counts)) is not None:
            raise dup
        retry = [p for p, r in self.rows.items() if r["error"]] if retry_errors else []
        for p in retry:
            del self.rows[p]
        if retry or columns != COLUMNS:
            self._rewrite()
        elif len(complete) != len(raw):
            with open(self.csv_path, "r+b") as f:
                f.truncate(len(complete))

    def _rewrite(self) -> None:
        """Replace ``scores.csv`` (atomically) by the rows held now, in the current columns."""
        with atomic_file(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            w.writerows([r[c] for c in COLUMNS] for r in self.rows.values())

    def pending(self, paths: Sequence[Path]) -> list[Path]:
        return [p for p in paths if str(p) not in self.rows]

    def _append(self, row: dict[str, str]) -> None:
        self._csv.writerow([row[c] for c in COLUMNS])
        self.rows[row["path"]] = row

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def add(self, paths: Sequence[str], scores: np.ndarray, labels: np.ndarray | None,
            threshold: float | None) -> int:
        """Append the rows of images that have none yet (a retried batch adds nothing twice); return how many."""
        added = 0
        thr = "" if threshold is None else repr(float(threshold))
        for i, path in enumerate(paths):
            if path in self.rows:
                continue
            label = "" if labels is None else ("anomalous" if bool(labels[i]) else "normal")
            self._append({"path": path, "score": repr(float(scores[i])), "label": label, "threshold": thr,
                          "artifact_sha256": self.sha, "error": ""})
            added += 1
        self._sync()
        return added

    def add_errors(self, reasons: Mapping[str, str]) -> int:
        """Append an error row (no score, no label; the reason) for each image that has no row yet; return how many."""
        added = 0
        for path, reason in reasons.items():
            if path in self.rows:
                continue
            self._append({"path": path, "score": "", "label": "", "threshold": "", "artifact_sha256": self.sha,
                          "error": _one_line(reason) or "unreadable"})
            added += 1
        if added:
            self._sync()
        return added

    def check(self, paths: Sequence[Path]) -> None:
        """Read ``scores.csv`` back from disk and check that every image of ``paths`` has exactly one row.

        From disk, not from memory: rows that another writer added behind this one's back count too.
        """
        self._fh.flush()
        with open(self.csv_path, newline="") as f:
            reader = csv.reader(f)
            next(reader, None)
            counts = Counter(row[0] for row in reader if row)
        if (dup := duplicates_error(self.csv_path, counts)) is not None:
            raise dup
        missing = [p for p in paths if str(p) not in counts]
        if missing:
            raise InputError(f"expected a row for every image, found {len(missing)} without one (first: "
                             f"{missing[0]}); rerun the same command to score them")

    def close(self) -> None:
        """Close the rows file and release ``OUT``'s lock."""
        if not self._fh.closed:
            self._fh.close()
        if not self._lock.closed:
            self._lock.close()

    def counts(self) -> tuple[int, int]:
        """(anomalous rows, rows with a label)."""
        labelled = [r for r in self.rows.values() if r["label"]]
        return sum(r["label"] == "anomalous" for r in labelled), len(labelled)

    def errors(self) -> int:
        """Error rows: images that could not be read."""
        return sum(1 for r in self.rows.values() if r["error"])

    def write_parquet(self) -> Path:
        """Also write the rows as ``scores.parquet`` (needs pyarrow, which the ``ray`` extra brings)."""
        from edgead.errors import require

        pa = require("pyarrow", "ray", "Parquet output")
        pq = require("pyarrow.parquet", "ray", "Parquet output")
        rows = list(self.rows.values())
        table = pa.table({
            "path": [r["path"] for r in rows],
            "score": pa.array([float(r["score"]) if r["score"] else None for r in rows], pa.float32()),
            "label": [r["label"] or None for r in rows],
            "threshold": [float(r["threshold"]) if r["threshold"] else None for r in rows],
            "artifact_sha256": [r["artifact_sha256"] for r in rows],
            "error": [r["error"] or None for r in rows],
        })
        target = self.out / "scores.parquet"
        with atomic_file(target) as tmp:
            pq.write_table(table, str(tmp))
        return target


@dataclass(frozen=True)
class ReadBatch:
    """A chunk of images read for inference: the prepared images that could be read, and why the others could not."""

    paths: list[str]  # the images that were read, in order
    images: np.ndarray  # their prepared uint8 batch (len(paths), H, W, 3)
    failed: dict[str, str]  # path -> reason, for the images that could not be read


def read_batch(paths: Sequence[str | Path], spec) -> ReadBatch:  # noqa: ANN001 - DetectorSpec
    """Read and prepare a chunk of images; an image that cannot be read is set aside with its reason."""
    h, w = spec.input_size
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    ok: list[str] = []
    failed: dict[str, str] = {}
    for p in paths:
        try:
            out[len(ok)] = prepare(read_image(p), spec)
        except UNREADABLE as exc:
            failed[str(p)] = unreadable_reason(exc)
            continue
        ok.append(str(p))
    return ReadBatch(ok, out[: len(ok)], failed)


@dataclass(frozen=True)
class ReadFrames:
    """A chunk of images read whole, for a tiled artifact: the frames that could be read, and why the others not."""

    paths: list[str]
    frames: list[np.ndarray]  # uint8 (H, W, 3), each at its own size
    failed: dict[str, str]


def read_frames(paths: Sequence[str | Path]) -> ReadFrames:
    """Read a chunk of images at their own size; an image that cannot be read is set aside with its reason."""
    ok: list[str] = []
    frames: list[np.ndarray] = []
    failed: dict[str, str] = {}
    for p in paths:
        try:
            frames.append(read_image(p))
        except UNREADABLE as exc:
            failed[str(p)] = unreadable_reason(exc)
            continue
        ok.append(str(p))
    return ReadFrames(ok, frames, failed)


def read_prepared(paths: Sequence[str | Path], spec) -> np.ndarray:  # noqa: ANN001 - DetectorSpec
    """Read and prepare a chunk of images into one uint8 batch; the first unreadable image raises."""
    h, w = spec.input_size
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = prepare(read_image(p), spec)
    return out


def _chunks(items: Sequence[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def save_heatmaps(out: Path, paths: Sequence[str], images: np.ndarray, maps: np.ndarray, scores: np.ndarray,
                  threshold: float | None) -> None:
    """Heatmap panels for the given (anomalous) images into ``out/heatmaps``."""
    from edgead.viz import panel_vmax, save_panel

    folder = out / HEATMAPS
    folder.mkdir(exist_ok=True)
    for path, img, amap, s in zip(paths, images, maps, scores, strict=True):
        save_panel(folder / heatmap_name(path), img, amap, 0.0, panel_vmax(amap, threshold), float(s), threshold)


def score_embedded(runner, writer: ScoreWriter, todo: Sequence[Path], batch: int = 8, workers: int = 2,  # noqa: ANN001
                   heatmaps: bool = False, progress: Progress | None = None) -> tuple[int, int]:
    """Score ``todo`` on this machine: decode in a thread pool (at most two chunks ahead), predict batch by batch.

    Memory stays bounded by ``(2 + 1) * batch`` prepared images whatever the archive's size. Returns the rows
    added: (scored, error rows).
    """
    spec = runner.spec
    thr = spec.threshold
    chunks = list(_chunks(todo, batch))
    if getattr(runner, "tiling", None) is not None:
        return _score_tiled(runner, writer, todo, chunks, workers, heatmaps, progress)
    added = failed = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [pool.submit(read_batch, c, spec) for c in chunks[:2]]
        for k in range(len(chunks)):
            got = pending.pop(0).result()
            if k + 2 < len(chunks):
                pending.append(pool.submit(read_batch, chunks[k + 2], spec))
            if got.paths:
                p = runner.predict(got.images)
                added += writer.add(got.paths, p.scores, p.labels, thr)
                if heatmaps and p.labels is not None and p.labels.any():
                    idx = np.flatnonzero(p.labels)
                    save_heatmaps(writer.out, [got.paths[i] for i in idx], got.images[idx], p.maps[idx],
                                  p.scores[idx], thr)
            failed += writer.add_errors(got.failed)
            if progress:
                progress(min((k + 1) * batch, len(todo)), len(todo))
    return added, failed


def artifact_spec(folder: str | Path):  # noqa: ANN201 - DetectorSpec
    """The spec of an artifact folder's manifest, or of a checkpoint's spec.json, read without loading a model."""
    from edgead.runtimes.manifest import read_manifest
    from edgead.spec import DetectorSpec

    p = Path(folder)
    if registry.is_checkpoint(p):
        return DetectorSpec.from_json((p / registry.CHECKPOINT_SPEC).read_text())
    return read_manifest(p).spec


def _score_tiled(runner, writer: ScoreWriter, todo: Sequence[Path], chunks: list[list[Path]], workers: int,  # noqa: ANN001
                 heatmaps: bool, progress: Progress | None) -> tuple[int, int]:
    """``score_embedded`` for an artifact with a tiling plan: each frame, read whole, goes through
    ``Runner.predict_frames`` (its tiles batched through the engine); heatmaps are drawn at the frame's size."""
    thr = runner.spec.threshold
    added = failed = done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [pool.submit(read_frames, c) for c in chunks[:2]]
        for k in range(len(chunks)):
            got = pending.pop(0).result()
            if k + 2 < len(chunks):
                pending.append(pool.submit(read_frames, chunks[k + 2]))
            preds = [runner.predict_frames(f) for f in got.frames]
            if preds:
                scores = np.concatenate([p.scores for p in preds])
                labels = None if thr is None else np.concatenate([p.labels for p in preds])
                added += writer.add(got.paths, scores, labels, thr)
                if heatmaps and labels is not None and labels.any():
                    idx = np.flatnonzero(labels).tolist()
                    save_heatmaps(writer.out, [got.paths[i] for i in idx], [got.frames[i] for i in idx],
                                  [preds[i].maps[0] for i in idx], scores[idx], thr)
            failed += writer.add_errors(got.failed)
            done += len(chunks[k])
            if progress:
                progress(done, len(todo))
    return added, failed


def score_archive(
    archive: str | Path,
    artifact: str | Path,
    out: str | Path,
    *,
    engine: str | None = None,
    batch: int = 8,
    workers: int = 2,
    heatmaps: bool = False,
    parquet: bool = False,
    retry_errors: bool = False,
    ray_address: str | None = None,
    use_ray: bool = False,
    ray_actors: int = 2,
    ray_cpus: float = 1.0,
    progress: Progress | None = None,
) -> ScoreSummary:
    """Score every image of ``archive`` not yet in ``out`` with ``artifact``; see the module docstring."""
    if batch < 1:
        raise InputError(f"expected --batch of at least 1, found {batch}")
    if workers < 1:
        raise InputError(f"expected --workers of at least 1, found {workers}")
    if os.path.realpath(out) == os.path.realpath(archive):
        raise OutputError(f"expected -o apart from the archive, found the archive itself ({out}); name a new folder")
    paths = list_archive(archive, skip=out)
    sha = artifact_digest(artifact)
    import edgead.runtimes as rt

    with ScoreWriter(out, sha, retry_errors=retry_errors) as writer:
        todo = writer.pending(paths)
        t0 = time.perf_counter()
        per_node = None
        if not todo:
            added = failed = 0
        elif use_ray:
            from edgead.scale.ray_data import score_on_ray

            added, failed, per_node = score_on_ray(
                artifact, writer, todo, engine=engine, batch=batch, address=ray_address, actors=ray_actors,
                cpus_per_actor=ray_cpus, heatmaps=heatmaps, progress=progress)
        else:
            with rt.load(artifact, engine) as runner:
                added, failed = score_embedded(runner, writer, todo, batch=batch, workers=workers,
                                               heatmaps=heatmaps, progress=progress)
        seconds = time.perf_counter() - t0
        writer.check(paths)
        if parquet:
            writer.write_parquet()
        anomalous, labelled = writer.counts()
        summary = ScoreSummary(
            total=len(paths), scored=added, failed=failed, skipped=len(paths) - len(todo), anomalous=anomalous,
            anomaly_rate=(anomalous / labelled) if labelled else None, errors=writer.errors(), seconds=seconds,
            images_per_s=(added / seconds) if added and seconds > 0 else 0.0,
            backend="ray" if use_ray else "embedded", artifact=str(artifact), artifact_sha256=sha, output=str(out),
            per_node=per_node,
        )
        write_text_atomic(Path(out) / SUMMARY, json.dumps(summary.to_dict(), indent=2, default=str) + "\n")
    return summary
