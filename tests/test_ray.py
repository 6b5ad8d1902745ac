"""Scale-out on Ray, really distributed: a head and two worker nodes of a local multi-node cluster (not local mode).

``score --ray`` must give exactly the embedded path's rows, and survive a worker node removed mid-job with every
image scored exactly once.
"""

from __future__ import annotations

import csv
import threading

import pytest

from tests.test_score import make_images, scored_artifact  # noqa: F401 - the shared fixture

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'edgead[ray]'")
from ray.cluster_utils import Cluster  # noqa: E402

from edgead.score import score_archive  # noqa: E402

N_IMAGES = 240


@pytest.fixture(scope="module")
def cluster():
    """Head without CPUs (it schedules nothing) and two 1-CPU worker nodes: each runner actor gets its own node."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
    c.wait_for_nodes()
    c.workers = workers
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    make_images(root, N_IMAGES, seed=3)
    return root


def rows(path) -> dict[str, dict[str, str]]:
    with open(path / "scores.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len({r["path"] for r in got}), "a path has more than one row"
    return {r["path"]: r for r in got}


def test_ray_rows_equal_embedded_rows(cluster, archive, scored_artifact, tmp_path):  # noqa: F811
    artifact, _ = scored_artifact
    emb = score_archive(archive, artifact, tmp_path / "embedded", batch=8)
    dist = score_archive(archive, artifact, tmp_path / "ray", batch=8, use_ray=True, ray_address=cluster.address,
                         ray_actors=2, heatmaps=True)
    assert emb.total == dist.total == dist.scored == N_IMAGES and dist.backend == "ray"
    assert rows(tmp_path / "embedded") == rows(tmp_path / "ray")  # same scores, labels, thresholds, sha, exactly
    assert dist.anomalous == emb.anomalous > 0
    assert len(list((tmp_path / "ray" / "heatmaps").glob("*.png"))) == emb.anomalous
    # the two actors ran on the two worker nodes (the head has no CPU), and each scored a share
    workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0}
    assert set(dist.per_node) == workers and len(workers) == 2
    assert sum(dist.per_node.values()) == N_IMAGES and min(dist.per_node.values()) > 0


def test_worker_node_removed_mid_job_every_image_once(cluster, archive, scored_artifact, tmp_path):  # noqa: F811
    """Fault: one worker node (and the actor on it) goes away while the job runs; a new node joins later, as an
    autoscaler would add one. The job must end with every image scored exactly once and the embedded scores."""
    artifact, _ = scored_artifact
    ref = rows(_embedded(archive, artifact, tmp_path))
    removed = threading.Event()
    gone = cluster.workers[0].node_id

    def progress(done: int, total: int) -> None:
        if done >= total // 5 and not removed.is_set():
            removed.set()
            cluster.remove_node(cluster.workers[0])
            cluster.workers[0] = cluster.add_node(num_cpus=1)

    s = score_archive(archive, artifact, tmp_path / "ray", batch=2, use_ray=True, ray_address=cluster.address,
                      ray_actors=2, progress=progress)
    assert removed.is_set(), "the node was never removed: the test proved nothing"
    assert s.total == s.scored == N_IMAGES == sum(s.per_node.values())
    # rows came from the removed node before it went, and the rest from the nodes alive after
    assert gone in s.per_node and s.per_node[gone] < N_IMAGES, s.per_node
    assert gone not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert rows(tmp_path / "ray") == ref


def _embedded(archive, artifact, tmp_path):
    out = tmp_path / "embedded"
    score_archive(archive, artifact, out, batch=8)
    return out
