"""``edgead score --ray``: bulk scoring with Ray Data over a pool of runner actors.

The driver ships the artifact's files once through Ray's object store (nodes need no shared copy of it), builds a
dataset of image paths, and maps batches through ``ArtifactScorer`` actors, each holding one runner. Image paths must
be readable on every node (shared storage), as for any Ray Data file source. The driver writes the rows as batches
arrive, through the same ``ScoreWriter`` as the embedded path, keyed by path.

What Ray guarantees: Ray Data runs its map actors with ``max_restarts=-1`` and ``max_task_retries=-1``, so when a
node dies its actors are restarted elsewhere and their unfinished batches are re-run (at-least-once execution), and
the dataset's output holds each block once. What edgead adds: rows are keyed by the image's absolute path, so a
batch delivered twice adds nothing twice, and the run ends by checking that every image of the archive has exactly
one row (a rerun scores any that have none).
"""

from __future__ import annotations

import atexit
import io
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgead.errors import InputError, require
from edgead.score import Progress, ScoreWriter, read_prepared, save_heatmaps


def artifact_files(folder: str | Path) -> dict[str, bytes]:
    """The artifact folder's files (the manifest and every file it lists) as bytes, to ship to the actors."""
    from edgead.runtimes.manifest import MANIFEST, read_manifest

    p = Path(folder)
    p = p.parent if p.is_file() else p
    manifest = read_manifest(p)
    return {name: (p / name).read_bytes() for name in (MANIFEST, *manifest.files)}


class ArtifactScorer:
    """A Ray Data map actor: materialises the shipped artifact in a temporary folder and holds one runner."""

    def __init__(self, files_ref: list[Any], engine: str | None, threads: int, want_maps: bool) -> None:
        import ray

        import edgead.runtimes as rt

        files: dict[str, bytes] = ray.get(files_ref[0])
        self.folder = Path(tempfile.mkdtemp(prefix="edgead-artifact-"))
        atexit.register(shutil.rmtree, self.folder, True)
        for name, data in files.items():
            (self.folder / name).write_bytes(data)
        self.runner = rt.load(self.folder, engine, **({"threads": threads} if threads else {}))
        self.want_maps = want_maps
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        images = read_prepared(paths, self.runner.spec)
        p = self.runner.predict(images)
        n = len(paths)
        labels = np.full(n, -1, dtype=np.int8) if p.labels is None else p.labels.astype(np.int8)
        out: dict[str, np.ndarray] = {"path": np.asarray(paths, dtype=object), "score": p.scores.astype(np.float32),
                                      "label": labels, "node": np.asarray([self.node] * n, dtype=object)}
        if self.want_maps:  # maps travel back (as .npy bytes) only for anomalous images, for their heatmap panels
            out["map"] = np.asarray([_npy(p.maps[i]) if labels[i] == 1 else b"" for i in range(n)], dtype=object)
        return out


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, dtype=np.float32))
    return buf.getvalue()


ACTOR_START_TIMEOUT_S = 300


def _chain(first: Any, rest: Any) -> Any:
    if first is not None:
        yield first
    yield from rest


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
                 heatmaps: bool = False, progress: Progress | None = None) -> tuple[int, dict[str, int]]:
    """Score ``todo`` with a pool of ``actors`` runner actors on the Ray cluster.

    Returns the rows added and, per Ray node id, how many of them that node's actors scored.
    """
    if actors < 1:
        raise InputError(f"expected --ray-actors of at least 1, found {actors}")
    ray = connect(address)
    import ray.data as rd

    from edgead.runtimes.manifest import read_manifest

    spec = read_manifest(Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent).spec
    thr = spec.threshold
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
    added = done = 0
    per_node: dict[str, int] = {}
    try:
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        first = next(batches, None)
    except ray.exceptions.GetTimeoutError:
        raise InputError(f"expected room for {actors} runner actors of {cpus_per_actor:g} CPU on the Ray cluster, "
                         f"found none free within {ACTOR_START_TIMEOUT_S} s; lower --ray-actors or --ray-cpus") \
            from None
    for out in _chain(first, batches):
        paths = [str(p) for p in out["path"]]
        labels = None if (out["label"] < 0).all() else out["label"] == 1
        for path, node in zip(paths, out["node"], strict=True):
            if path not in writer.rows:
                per_node[str(node)] = per_node.get(str(node), 0) + 1
        added += writer.add(paths, out["score"], labels, thr)
        if heatmaps and labels is not None and labels.any():
            idx = [i for i in np.flatnonzero(labels) if len(out["map"][i])]
            names = [paths[i] for i in idx]
            images = read_prepared(names, spec)
            maps = np.stack([np.load(io.BytesIO(out["map"][i])) for i in idx])
            save_heatmaps(writer.out, names, images, maps, out["score"][idx], thr)
        done += len(paths)
        if progress:
            progress(min(done, len(todo)), len(todo))
    return added, per_node
