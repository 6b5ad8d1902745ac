"""``edgead score --ray``: bulk scoring with Ray Data over a pool of runner actors.

The driver ships the artifact's files once through Ray's object store (nodes need no shared copy of it), builds a
dataset of image paths, and maps batches through ``ArtifactScorer`` actors, each holding one runner. Image paths must
be readable on every node (shared storage), as for any Ray Data file source. The driver writes the rows as batches
arrive, through the same ``ScoreWriter`` as the embedded path, keyed by path.

What Ray guarantees: Ray Data runs its map actors with ``max_restarts=-1`` and ``max_task_retries=-1``, so when a
node dies its actors are restarted elsewhere and their unfinished batches are re-run (at-least-once execution), and
the dataset's output holds each block once. What edgead adds: rows are keyed by the image's absolute path, so a
batch delivered twice adds nothing twice, and the run ends by checking that every image of the archive has exactly
one row (a rerun scores any that have none). An image an actor cannot read comes back as an error row, as on the
embedded path; any other task failure ends the run with one line naming its cause.

Actors copy the shipped artifact into a temporary folder only for as long as the engine takes to load it (see
``artifact_copy``), so an actor killed with its node leaves no ``edgead-artifact-*`` folder behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgead.errors import EdgeadError, InputError, require
from edgead.score import Progress, ScoreWriter, read_batch, read_frames, read_prepared, save_heatmaps, try_flock

COPY_PREFIX = "edgead-artifact-"
#: inside a copy: its owner holds an ``flock`` on this file for as long as the copy exists
HELD = ".held"


def artifact_files(folder: str | Path) -> dict[str, bytes]:
    """The artifact folder's files (the manifest and every file it lists) as bytes, to ship to the actors."""
    from edgead.runtimes.manifest import MANIFEST, read_manifest

    p = Path(folder)
    p = p.parent if p.is_file() else p
    manifest = read_manifest(p)
    return {name: (p / name).read_bytes() for name in (MANIFEST, *manifest.files)}


def sweep_stale_copies(tmp: str | Path | None = None) -> int:
    """Delete the artifact copies in ``tmp`` (the temp folder) whose owner died; return how many.

    A copy's owner holds an ``flock`` on its ``.held`` file; the kernel drops it when the owner dies, even by
    SIGKILL, so a copy whose lock can be taken is an orphan. Folders without ``.held`` (being created, or made by
    something else) are left alone. Pid checks would not do: pids are reused, and containers sharing ``/tmp``
    see different pids.
    """
    swept = 0
    for folder in Path(tmp or tempfile.gettempdir()).glob(COPY_PREFIX + "*"):
        try:
            fh = open(folder / HELD, "rb")  # noqa: SIM115 - closed below, after the delete
        except OSError:
            continue
        with fh:
            if try_flock(fh):
                shutil.rmtree(folder, ignore_errors=True)
                swept += 1
    return swept


@contextlib.contextmanager
def artifact_copy(files: dict[str, bytes]) -> Iterator[Path]:
    """The shipped artifact's files in a fresh temporary folder, deleted when the block ends.

    Use it around ``runtimes.load`` only: an engine reads its model while loading and keeps it in memory (or holds
    the file open, which POSIX allows after the unlink), so the copy need not outlive the load, and an actor killed
    later leaves nothing behind. An actor killed during the load leaves its copy unlocked; the next actor on that
    machine sweeps it (``sweep_stale_copies``).
    """
    sweep_stale_copies()
    folder = Path(tempfile.mkdtemp(prefix=COPY_PREFIX))
    try:
        with open(folder / f"{HELD}.new", "wb") as held:
            try_flock(held)
            (folder / f"{HELD}.new").rename(folder / HELD)  # visible to sweepers only once locked
            for name, data in files.items():
                (folder / name).write_bytes(data)
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class ArtifactScorer:
    """A Ray Data map actor holding one runner, loaded from a temporary copy of the shipped artifact."""

    def __init__(self, files_ref: list[Any], engine: str | None, threads: int, want_maps: bool) -> None:
        import ray

        import edgead.runtimes as rt

        files: dict[str, bytes] = ray.get(files_ref[0])
        with artifact_copy(files) as folder:
            self.runner = rt.load(folder, engine, **({"threads": threads} if threads else {}))
        self.want_maps = want_maps
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = score_paths(self.runner, [str(p) for p in batch["path"]], self.want_maps)
        out["node"] = np.asarray([self.node] * len(out["path"]), dtype=object)
        return out


def score_paths(runner: Any, paths: list[str], want_maps: bool) -> dict[str, np.ndarray]:
    """One actor batch: rows (path, score, label, error) for ``paths``, readable ones first, then the error rows.

    An artifact with a tiling plan scores each frame read whole with ``Runner.predict_frames``, as the embedded
    path does; otherwise the images are prepared to the model input and run as one batch. With ``want_maps`` the
    maps of anomalous images travel back as .npy bytes (at the frame's size when tiled) for their panels.
    """
    if getattr(runner, "tiling", None) is not None:
        frames = read_frames(paths)
        ok, failed = frames.paths, frames.failed
        preds = [runner.predict_frames(f) for f in frames.frames]
        got_scores = np.concatenate([p.scores for p in preds]) if preds else np.zeros(0, np.float32)
        got_labels = None if not preds or preds[0].labels is None else np.concatenate([p.labels for p in preds])
        got_maps = [p.maps[0] for p in preds]
    else:
        got = read_batch(paths, runner.spec)
        ok, failed = got.paths, got.failed
        p = runner.predict(got.images) if ok else None
        got_scores = p.scores if p is not None else np.zeros(0, np.float32)
        got_labels = None if p is None else p.labels
        got_maps = [] if p is None else list(p.maps)
    n, k = len(ok) + len(failed), len(ok)
    scores = np.full(n, np.nan, dtype=np.float32)
    labels = np.full(n, -1, dtype=np.int8)  # -1: no label (no threshold, or an error row)
    maps = [b""] * n
    scores[:k] = got_scores
    if got_labels is not None:
        labels[:k] = got_labels
    if want_maps:  # only anomalous images' maps travel back
        maps[:k] = [_npy(got_maps[i]) if labels[i] == 1 else b"" for i in range(k)]
    out: dict[str, np.ndarray] = {
        "path": np.asarray([*ok, *failed], dtype=object), "score": scores, "label": labels,
        "error": np.asarray([""] * k + list(failed.values()), dtype=object)}
    if want_maps:
        out["map"] = np.asarray(maps, dtype=object)
    return out


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, dtype=np.float32))
    return buf.getvalue()


ACTOR_START_TIMEOUT_S = 300


def _wrapped(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it wraps, outermost first: Ray keeps causes in ``cause``, ``__cause__`` or args."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if not any(e is s for s in seen):
            seen.append(e)
            todo += [c for c in (getattr(e, "cause", None), e.__cause__, *e.args) if isinstance(c, BaseException)]
    return seen


def task_error(exc: BaseException, artifact: str | Path) -> EdgeadError:
    """A failed Ray task or actor as one line naming the root cause (Ray wraps it in tracebacks of many frames).

    An actor's temporary copy of the artifact, named in the cause but gone by now, is named as ``artifact``."""
    root = next((e for e in reversed(_wrapped(exc)) if not type(e).__module__.startswith("ray")), None)
    if root is not None:
        first = next((ln.strip() for ln in str(root).splitlines() if ln.strip()), "")
        text = first if isinstance(root, EdgeadError) else f"{type(root).__name__}: {first}".rstrip(": ")
    else:  # the cause did not survive Ray's pickling: its last "...Error: message" line in the traceback text
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        text = next((ln for ln in reversed(lines) if re.match(r"[\w.]+(Error|Exception): ", ln)), lines[0])
    text = re.sub(r"[^\s()'\"]*" + COPY_PREFIX + r"\w+", str(artifact), text)
    return EdgeadError(f"expected every Ray task to finish, found one that failed: {text[:500]}; the rows written "
                       f"so far are kept, fix the cause and rerun to score the rest (EDGEAD_DEBUG=1: Ray's traceback)")


def connect(address: str | None) -> Any:
    """Join the Ray cluster at ``address`` or, without one, start a local Ray instance."""
    ray = require("ray", "ray", "scale-out on Ray")
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False) if address else ray.init(include_dashboard=False, log_to_driver=False,
                                                                      configure_logging=False)
        except ConnectionError as exc:
            raise InputError(f"expected a running Ray cluster at {address}, found none ({exc})") from None
    return ray


def score_on_ray(artifact: str | Path, writer: ScoreWriter, todo: Sequence[Path], *, engine: str | None = None,
                 batch: int = 8, address: str | None = None, actors: int = 2, cpus_per_actor: float = 1.0,
                 heatmaps: bool = False, progress: Progress | None = None) -> tuple[int, int, dict[str, int]]:
    """Score ``todo`` with a pool of ``actors`` runner actors on the Ray cluster.

    Returns the rows added (scored, error rows) and, per Ray node id, how many images that node's actors scored.
    """
    if actors < 1:
        raise InputError(f"expected --ray-actors of at least 1, found {actors}")
    ray = connect(address)
    import ray.data as rd

    from edgead.runtimes.manifest import read_manifest

    spec = read_manifest(Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent).spec
    files_ref = ray.put(artifact_files(artifact))
    ctx = rd.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S  # start the whole pool before the first batch, or fail clearly
    ds = rd.from_items([{"path": str(p)} for p in todo], override_num_blocks=max(1, min(len(todo) // batch, 200)))
    ds = ds.map_batches(
        ArtifactScorer,
        fn_constructor_kwargs={"files_ref": [files_ref], "engine": engine, "threads": max(1, int(cpus_per_actor)),
                               "want_maps": heatmaps},
        batch_size=batch, batch_format="numpy", num_cpus=cpus_per_actor,
        compute=rd.ActorPoolStrategy(size=actors),
    )
    added = failed = done = 0
    per_node: dict[str, int] = {}
    tracer = logging.getLogger("ray.data.exceptions")  # logs a failed task's traceback; we raise it as one line
    quiet, tracer.disabled = tracer.disabled, True
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            a, f = _write_batch(out, writer, spec, heatmaps, per_node)
            added, failed, done = added + a, failed + f, done + len(out["path"])
            if progress:
                progress(min(done, len(todo)), len(todo))
    except ray.exceptions.GetTimeoutError:
        raise InputError(f"expected room for {actors} runner actors of {cpus_per_actor:g} CPU on the Ray cluster, "
                         f"found none free within {ACTOR_START_TIMEOUT_S} s; lower --ray-actors or --ray-cpus") \
            from None
    except ray.exceptions.RayError as exc:
        raise task_error(exc, artifact) from exc
    finally:
        tracer.disabled = quiet
    return added, failed, per_node


def _write_batch(out: dict[str, np.ndarray], writer: ScoreWriter, spec: Any, heatmaps: bool,
                 per_node: dict[str, int]) -> tuple[int, int]:
    """Write one batch of actor output: scored rows, error rows and heatmap panels; returns (scored, error rows)."""
    thr = spec.threshold
    paths = [str(p) for p in out["path"]]
    ok = np.array([not e for e in out["error"]], dtype=bool)
    names = [p for p, good in zip(paths, ok, strict=True) if good]
    for path, node in zip(names, out["node"][ok], strict=True):
        if path not in writer.rows:
            per_node[str(node)] = per_node.get(str(node), 0) + 1
    scores, label = out["score"][ok], out["label"][ok]
    labels = None if (label < 0).all() else label == 1
    added = writer.add(names, scores, labels, thr) if names else 0
    failed = writer.add_errors({p: str(e) for p, e, good in zip(paths, out["error"], ok, strict=True) if not good})
    if heatmaps and labels is not None and labels.any():
        maps = out["map"][ok]
        idx = [i for i in np.flatnonzero(labels) if len(maps[i])]
        hot = [names[i] for i in idx]
        hot_maps = [np.load(io.BytesIO(maps[i])) for i in idx]
        images = read_frames(hot).frames if spec.tiling is not None else read_prepared(hot, spec)  # as scored
        save_heatmaps(writer.out, hot, images, hot_maps, scores[idx], thr)
    return added, failed
