"""The benchmark's table for people: one row per measurement, skipped combinations in the caption."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgead.bench.schema import BenchResult


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render_table(results: Sequence[BenchResult], title: str = "edgead bench") -> Any:
    """A rich ``Table``: one row per engine x precision x batch; a skipped combination is one row with its
    reason."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in (
        "engine",
        "precision",
        "executed",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "ms/img",
        "img/s",
        "peak RSS MB",
        "share of peak",
    ):
        table.add_column(col, justify="left" if col in ("engine", "precision", "executed") else "right")
    skipped: dict[tuple[str, str, str], list[str]] = {}
    for r in results:
        if r.skipped:
            skipped.setdefault((r.engine, r.precision, r.skipped), []).append(str(r.batch))
            continue
        table.add_row(
            r.engine,
            r.precision,
            r.executed_precision,
            str(r.batch),
            _fmt(r.p50_ms),
            _fmt(r.p90_ms),
            _fmt(r.p99_ms),
            _fmt(r.p50_ms_per_image),
            _fmt(r.throughput_ips, 1),
            _fmt(r.peak_rss_mb, 0),
            "-" if r.share_of_peak is None else f"{100 * r.share_of_peak:.0f} % of {r.peak_precision}",
        )
    if skipped:
        table.caption = "\n".join(
            f"skipped {engine} {precision} (batch {','.join(b)}): {escape(reason)}"
            for (engine, precision, reason), b in skipped.items()
        )
        table.caption_justify = "left"
    return table
