"""Bulk scoring of image archives: one row per image, resumable, embedded or on Ray Data.

``edgead score ARCHIVE --artifact A -o OUT`` reads a folder tree (or a text file listing image paths), scores every
image with one artifact and writes ``OUT/scores.csv`` (path, score, label, threshold, artifact_sha256), optional
heatmap panels of the anomalous images in ``OUT/heatmaps/``, and ``OUT/summary.json``.

Rows are appended chunk by chunk and flushed, so an interrupted run keeps what it finished; a rerun reads the rows,
drops a torn last line, and scores only the images that have no row yet. Rows are keyed by the image's absolute path:
whatever a distributed backend retries, each image ends with exactly one row. Imports no torch and no Ray.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgead.errors import InputError
from edgead.fsutil import sha256_file, write_text_atomic
from edgead.imageio import IMAGE_SUFFIXES, prepare, read_image
from edgead.registry import MANIFEST

SCORES = "scores.csv"
SUMMARY = "summary.json"
HEATMAPS = "heatmaps"
COLUMNS = ("path", "score", "label", "threshold", "artifact_sha256")

#: ``(done, total)`` progress callback
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ScoreSummary:
    """What one ``score`` run did: counts, anomaly rate and throughput of the images scored in this run."""

    total: int  # images in the archive
    scored: int  # images scored by this run
    skipped: int  # images that already had a row (resumed)
    anomalous: int  # rows labelled anomalous, over the whole output
    anomaly_rate: float | None  # anomalous / rows with a label, over the whole output (None: no threshold)
    seconds: float
    images_per_s: float
    backend: str  # "embedded" or "ray"
    artifact: str
    artifact_sha256: str
    output: str
    per_node: dict[str, int] | None = None  # Ray: images scored by each node's actors in this run

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def list_archive(source: str | Path) -> list[Path]:
    """Image paths of ``source``: a folder tree (recursively, sorted) or a text file with one path per line.

    Relative paths in a list file are relative to the list file's folder; blank lines and ``#`` comments are
    skipped. Paths are made absolute (they are the rows' keys) and duplicates are dropped.
    """
    src = Path(source)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(src).parts))
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
        if not files:
            raise InputError(f"expected image paths in the list file {src}, found none")
    else:
        raise InputError(f"expected a folder of images or a text file listing image paths, found nothing at {src}")
    seen: dict[str, Path] = {}
    for p in files:
        seen.setdefault(os.path.abspath(p), p)
    return [Path(k) for k in seen]


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


class ScoreWriter:
    """Appends rows to ``OUT/scores.csv``, resuming from what an earlier run of the same artifact wrote.

    The output folder may be new, or one an earlier ``score`` run made; any other existing path is refused, so
    a typo never writes into (or over) a user's folder.
    """

    def __init__(self, out: str | Path, artifact_sha256: str) -> None:
        self.out = Path(out)
        self.sha = artifact_sha256
        self.csv_path = self.out / SCORES
        self.rows: dict[str, dict[str, object]] = {}
        self._check_target()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.csv_path.exists():
            self._resume()
        else:
            write_text_atomic(self.csv_path, ",".join(COLUMNS) + "\n")
        self._fh = open(self.csv_path, "a", newline="")  # noqa: SIM115 - closed by close()
        self._csv = csv.writer(self._fh)

    def _check_target(self) -> None:
        o = self.out
        if o.exists() and not o.is_dir():
            raise InputError(f"expected -o to name a folder for the scores, found a file at {o}")
        if o.is_dir() and any(o.iterdir()) and not (o / SCORES).is_file():
            raise InputError(f"expected -o to name a new folder or an earlier 'edgead score' output, found a folder "
                             f"with other files at {o}; nothing was written")

    def _resume(self) -> None:
        raw = self.csv_path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]  # a torn last line (killed mid-write) is dropped
        reader = csv.DictReader(io.StringIO(complete.decode("utf-8", errors="strict")))
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise InputError(f"expected {self.csv_path} to have the columns {','.join(COLUMNS)}, found "
                             f"{','.join(reader.fieldnames or ())}; choose another -o")
        for row in reader:
            if row["artifact_sha256"] != self.sha:
                raise InputError(
                    f"{self.out} holds scores of another artifact (sha256 {row['artifact_sha256'][:12]}…, this one "
                    f"is {self.sha[:12]}…); choose another -o to re-score the archive with this artifact")
            self.rows[row["path"]] = row
        if len(complete) != len(raw):
            with open(self.csv_path, "r+b") as f:
                f.truncate(len(complete))

    def pending(self, paths: Sequence[Path]) -> list[Path]:
        return [p for p in paths if str(p) not in self.rows]

    def add(self, paths: Sequence[str], scores: np.ndarray, labels: np.ndarray | None,
            threshold: float | None) -> int:
        """Append the rows of images that have none yet (a retried batch adds nothing twice); return how many."""
        added = 0
        for i, path in enumerate(paths):
            if path in self.rows:
                continue
            label = "" if labels is None else ("anomalous" if bool(labels[i]) else "normal")
            row = {"path": path, "score": repr(float(scores[i])), "label": label,
                   "threshold": "" if threshold is None else repr(float(threshold)), "artifact_sha256": self.sha}
            self._csv.writerow([row[c] for c in COLUMNS])
            self.rows[path] = row
            added += 1
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return added

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def counts(self) -> tuple[int, int]:
        """(anomalous rows, rows with a label)."""
        labelled = [r for r in self.rows.values() if r["label"]]
        return sum(r["label"] == "anomalous" for r in labelled), len(labelled)

    def write_parquet(self) -> Path:
        """Also write the rows as ``scores.parquet`` (needs pyarrow, which the ``ray`` extra brings)."""
        from edgead.errors import require

        pa = require("pyarrow", "ray", "Parquet output")
        pq = require("pyarrow.parquet", "ray", "Parquet output")
        rows = list(self.rows.values())
        table = pa.table({
            "path": [r["path"] for r in rows],
            "score": pa.array([float(r["score"]) for r in rows], pa.float32()),
            "label": [r["label"] or None for r in rows],
            "threshold": [float(r["threshold"]) if r["threshold"] else None for r in rows],
            "artifact_sha256": [r["artifact_sha256"] for r in rows],
        })
        from edgead.fsutil import atomic_file

        target = self.out / "scores.parquet"
        with atomic_file(target) as tmp:
            pq.write_table(table, str(tmp))
        return target


def read_prepared(paths: Sequence[str | Path], spec) -> np.ndarray:  # noqa: ANN001 - DetectorSpec
    """Read and prepare a chunk of images into one uint8 batch (what every backend feeds the runner)."""
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
    from edgead.viz import save_panel

    folder = out / HEATMAPS
    folder.mkdir(exist_ok=True)
    for path, img, amap, s in zip(paths, images, maps, scores, strict=True):
        vmax = float(2.0 * threshold) if threshold else float(np.max(amap))
        save_panel(folder / heatmap_name(path), img, amap, 0.0, vmax, float(s), threshold)


def score_embedded(runner, writer: ScoreWriter, todo: Sequence[Path], batch: int = 8, workers: int = 2,  # noqa: ANN001
                   heatmaps: bool = False, progress: Progress | None = None) -> int:
    """Score ``todo`` on this machine: decode in a thread pool (at most two chunks ahead), predict batch by batch.

    Memory stays bounded by ``(2 + 1) * batch`` prepared images whatever the archive's size. Returns rows added.
    """
    spec = runner.spec
    thr = spec.threshold
    chunks = list(_chunks(todo, batch))
    added = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [pool.submit(read_prepared, c, spec) for c in chunks[:2]]
        for k, chunk in enumerate(chunks):
            images = pending.pop(0).result()
            if k + 2 < len(chunks):
                pending.append(pool.submit(read_prepared, chunks[k + 2], spec))
            p = runner.predict(images)
            names = [str(x) for x in chunk]
            added += writer.add(names, p.scores, p.labels, thr)
            if heatmaps and p.labels is not None and p.labels.any():
                idx = np.flatnonzero(p.labels)
                save_heatmaps(writer.out, [names[i] for i in idx], images[idx], p.maps[idx], p.scores[idx], thr)
            if progress:
                progress(min((k + 1) * batch, len(todo)), len(todo))
    return added


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
    paths = list_archive(archive)
    sha = artifact_digest(artifact)
    import edgead.runtimes as rt

    writer = ScoreWriter(out, sha)
    try:
        todo = writer.pending(paths)
        t0 = time.perf_counter()
        per_node = None
        if not todo:
            added = 0
        elif use_ray:
            from edgead.scale.ray_data import score_on_ray

            added, per_node = score_on_ray(artifact, writer, todo, engine=engine, batch=batch, address=ray_address,
                                 actors=ray_actors, cpus_per_actor=ray_cpus, heatmaps=heatmaps, progress=progress)
        else:
            with rt.load(artifact, engine) as runner:
                added = score_embedded(runner, writer, todo, batch=batch, workers=workers, heatmaps=heatmaps,
                                       progress=progress)
        seconds = time.perf_counter() - t0
        missing = [p for p in paths if str(p) not in writer.rows]
        if missing:
            raise InputError(f"expected a row for every image, found {len(missing)} without one (first: "
                             f"{missing[0]}); rerun the same command to score them")
        if parquet:
            writer.write_parquet()
    finally:
        writer.close()
    anomalous, labelled = writer.counts()
    summary = ScoreSummary(
        total=len(paths), scored=added, skipped=len(paths) - len(todo), anomalous=anomalous,
        anomaly_rate=(anomalous / labelled) if labelled else None, seconds=seconds,
        images_per_s=(added / seconds) if added and seconds > 0 else 0.0, backend="ray" if use_ray else "embedded",
        artifact=str(artifact), artifact_sha256=sha, output=str(out), per_node=per_node,
    )
    write_text_atomic(Path(out) / SUMMARY, json.dumps(summary.to_dict(), indent=2, default=str) + "\n")
    return summary
