"""The accuracy/latency plot of ``edgead select``: every candidate, the Pareto front joined by a line (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgead.errors import require
from edgead.fsutil import atomic_file

_FAMILY_MARKERS = {"fbft": "o", "dinomaly": "s", "vitad": "D", "nf": "^", "gmm": "v"}


def _label_front(fig: Any, ax: Any, pts: Sequence[Any]) -> None:
    """Label each front point below-right of it; a label that would overlap one already placed moves down a line
    at a time (with a leader line), so close points (two candidates at the same AUROC and ms) stay readable."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    for r in sorted(pts, key=lambda r: (-r.image_auroc, r.p50_ms)):
        text = f"{r.family}/{r.backbone}" + ("/dyt" if r.norm == "dyt" else "")
        for step in range(12):
            dy = -10 - 11 * step
            ann = ax.annotate(text, (r.p50_ms, r.image_auroc), textcoords="offset points", xytext=(6, dy),
                              fontsize=7, arrowprops=None if step == 0 else
                              {"arrowstyle": "-", "color": "grey", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3})
            ann.update_positions(renderer)  # an annotation places its text only when drawn
            box = Text.get_window_extent(ann, renderer)  # the text alone, not its leader line
            if not any(box.overlaps(b) for b in placed) or step == 11:
                break
            ann.remove()
        placed.append(box)


def plot_pareto(results: Sequence[Any], front: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Image AUROC against ms/image (log scale); front points joined and labelled; written atomically."""
    matplotlib = require("matplotlib", "torch", "the Pareto plot of edgead select")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used through the matplotlib name

    by_key = {r.key: r for r in results}
    backbones = sorted({r.backbone for r in results})
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backbones)}
    fig, ax = plt.subplots(figsize=(9.5, 5.5), dpi=110)
    for r in results:
        ax.scatter(r.p50_ms, r.image_auroc, s=60, marker=_FAMILY_MARKERS.get(r.family, "o"),
                   color=colours[r.backbone], edgecolor="black" if r.key in front else "none", linewidth=1.2,
                   zorder=3)
    pts = [by_key[k] for k in front]
    ax.plot([r.p50_ms for r in pts], [r.image_auroc for r in pts], color="black", linewidth=1, linestyle="--",
            zorder=2, label="Pareto front")
    for b in backbones:
        ax.scatter([], [], color=colours[b], label=b, s=40)
    for fam in sorted({r.family for r in results}):
        ax.scatter([], [], color="grey", marker=_FAMILY_MARKERS.get(fam, "o"), label=fam, s=40)
    ax.set_xscale("log")
    ms = [r.p50_ms for r in results]
    ax.set_xlim(min(ms) / 1.6, max(ms) * 1.6)  # a span over 2.5x always holds one of the 1-2-5 ticks
    _label_front(fig, ax, pts)  # after the limits: it measures where labels land
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("ms / image (batch 1, median)")
    ax.set_ylabel("image AUROC")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # outside: hides no point
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
