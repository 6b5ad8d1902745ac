"""The benchmark's table for people: one row per measurement, skipped combinations in the caption, and the line
naming the machine that goes with every figure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgead.bench.schema import BenchResult


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _spread(r: BenchResult) -> str:
    if r.median_ms_per_image is None:
        return "-"
    return f"{r.min_ms_per_image:.2f} / {r.median_ms_per_image:.2f} / {r.max_ms_per_image:.2f} ({r.rounds})"


def _share(r: BenchResult) -> str:
    if r.share_of_peak is None:
        return "-"
    spread = "" if r.share_min is None else f" ({100 * r.share_min:.0f}-{100 * r.share_max:.0f})"
    return f"{100 * r.share_of_peak:.0f} %{spread} of {r.peak_precision}"


def _ratio(r: BenchResult) -> str:
    if r.vs_baseline is None:
        return "-"
    spread = "" if r.vs_baseline_min is None or r.vs_baseline_min == r.vs_baseline_max else \
        f" ({r.vs_baseline_min:.2f}-{r.vs_baseline_max:.2f})"
    return f"{r.vs_baseline:.2f}x{spread}"


def render_table(results: Sequence[BenchResult], title: str = "edgead bench") -> Any:
    """A rich ``Table``: one row per engine x precision x batch; a skipped combination is one row with its
    reason. Each row shows the min/median/max of its interleaved rounds' medians, its share of the peak of the
    precision it executed (with the per-round spread) and, with a plain-PyTorch baseline, how many times faster it
    is than the strongest PyTorch row at that batch (``vs PyTorch``; the baseline rows themselves name it)."""
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
        "rounds min/med/max ms/img",
        "peak RSS MB",
        "share of peak",
        "vs PyTorch",
    ):
        table.add_column(col, justify="left" if col in ("engine", "precision", "executed") else "right")
    skipped: dict[tuple[str, str, str], list[str]] = {}
    for r in results:
        if r.skipped:
            skipped.setdefault((r.engine, r.precision, r.skipped), []).append(str(r.batch))
            continue
        table.add_row(
            r.label if r.mode else r.engine,
            r.precision,
            r.executed_precision,
            str(r.batch),
            _fmt(r.p50_ms),
            _fmt(r.p90_ms),
            _fmt(r.p99_ms),
            _fmt(r.p50_ms_per_image),
            _fmt(r.throughput_ips, 1),
            _spread(r),
            _fmt(r.peak_rss_mb, 0),
            _share(r),
            _ratio(r),
        )
    if skipped:
        table.caption = "\n".join(
            f"skipped {engine} {precision} (batch {','.join(b)}): {escape(reason)}"
            for (engine, precision, reason), b in skipped.items()
        )
        table.caption_justify = "left"
    return table


def render_machine_line(machine: dict[str, Any]) -> str:
    """One line naming the CPU, its cores and the flags that decide f32/bf16/int8 speed: printed with every
    figure, since a ratio means little without the machine it was measured on."""
    flags = ", ".join(f for f, on in machine["flags"].items() if on) or "none of " + ", ".join(machine["flags"])
    cap = machine.get("isa_cap")
    capped = (f" (capped at {cap['ONEDNN_MAX_CPU_ISA']} by ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY="
              f"{cap.get('ATEN_CPU_CAPABILITY') or 'unset'}: an emulation on this CPU)") if cap else ""
    return f"measured on {machine['cpu_model']}, {machine['cores']} cores; flags: {flags}{capped}"
