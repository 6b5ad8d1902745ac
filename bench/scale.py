"""Throughput of ``edgead score``: embedded vs Ray Data on 1 and 2 worker nodes, measured in one run.

``python -m edgead.bench.scale ARTIFACT ARCHIVE [--repeats 2] [--json F]`` scores the same archive with each
backend (alternating, ``repeats`` rounds, fresh output folders), then prints images/s per backend, the ratio to the
embedded path, and per-node shares (how many images each Ray node's actors scored). The Ray cases run on a local
multi-node cluster (``ray.cluster_utils.Cluster``: a head without CPUs and 1 or 2 worker nodes of ``--node-cpus``).
On one machine the nodes share its cores, so this measures overhead and balance, not the gain of real extra
machines; the CPU flags and core count are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from edgead.score import score_archive
from edgead.term import make_console


def _machine() -> dict[str, Any]:
    from edgead.bench.machine import machine_info

    return machine_info()


def run_scale_bench(artifact: Path, archive: Path, repeats: int = 2, node_cpus: int = 1, batch: int = 8,
                    engine: str | None = None) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    cases: dict[str, list[float]] = {"embedded": [], "ray 1 node": [], "ray 2 nodes": []}
    shares: dict[str, list[dict[str, int]]] = {k: [] for k in cases}
    work = Path(tempfile.mkdtemp(prefix="edgead-scale-"))
    try:
        for r in range(repeats):
            s = score_archive(archive, artifact, work / f"emb{r}", batch=batch, engine=engine)
            cases["embedded"].append(s.images_per_s)
            for nodes in (1, 2):
                c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
                for _ in range(nodes):
                    c.add_node(num_cpus=node_cpus)
                c.wait_for_nodes()
                try:
                    s = score_archive(archive, artifact, work / f"ray{nodes}-{r}", batch=batch, engine=engine,
                                      use_ray=True, ray_address=c.address, ray_actors=nodes,
                                      ray_cpus=float(node_cpus))
                finally:
                    ray.shutdown()
                    c.shutdown()
                key = f"ray {nodes} node" + ("s" if nodes > 1 else "")
                cases[key].append(s.images_per_s)
                shares[key].append(dict(s.per_node or {}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(cases["embedded"])
    rows = []
    for k, v in cases.items():
        med = statistics.median(v)
        rows.append({"backend": k, "images_per_s": med, "runs": v, "vs_embedded": med / base if base else None,
                     "per_node_images": [sorted(d.values(), reverse=True) for d in shares[k]]})
    return {"artifact": str(artifact), "archive": str(archive), "repeats": repeats, "node_cpus": node_cpus,
            "batch": batch, "machine": _machine(), "results": rows}


def render(doc: dict[str, Any]) -> Table:
    m = doc["machine"]
    flags = ", ".join(f for f, on in m["flags"].items() if on)
    t = Table(title=f"edgead score throughput — {m['cpu_model']}, {m['cores']} cores; flags: {flags}")
    for col in ("backend", "images/s (median)", "runs", "vs embedded", "images per node"):
        t.add_column(col)
    for r in doc["results"]:
        t.add_row(r["backend"], f"{r['images_per_s']:.1f}", " ".join(f"{x:.1f}" for x in r["runs"]),
                  f"{r['vs_embedded']:.2f}x" if r["vs_embedded"] else "-",
                  "; ".join("/".join(map(str, n)) for n in r["per_node_images"]) or "-")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("archive", type=Path)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--node-cpus", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--engine", default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the results to this file")
    a = ap.parse_args()
    doc = run_scale_bench(a.artifact, a.archive, a.repeats, a.node_cpus, a.batch, a.engine)
    make_console().print(render(doc))
    if a.json:
        a.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
