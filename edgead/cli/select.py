"""``edgead select``: fit, evaluate and bench a grid of detectors on your data and engine; table and Pareto plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgead.cli.common import BuildRunEngine, JsonFlag, OutDir, console, emit_json, progress_bar
from edgead.errors import EdgeadError, require
from edgead.select import DEFAULT_BACKBONES, DEFAULT_EPOCHS, DEFAULT_FAMILIES, DEFAULT_NORMS, DEFAULT_SIZE


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def select_cmd(
    data: Annotated[Path, typer.Argument(help="Labelled MVTec-layout category (train/good, test/, ground_truth/).")],
    out: OutDir = Path("runs/select"),
    families: Annotated[str, typer.Option(help="Comma-separated families.")] = ",".join(DEFAULT_FAMILIES),
    backbones: Annotated[str, typer.Option(help="Comma-separated backbones.")] = ",".join(DEFAULT_BACKBONES),
    norms: Annotated[str, typer.Option(help="Comma-separated norms (layernorm, dyt).")] = ",".join(DEFAULT_NORMS),
    size: Annotated[int, typer.Option(help="Input side in pixels for every candidate.")] = DEFAULT_SIZE,
    engine: BuildRunEngine = "openvino",
    precision: Annotated[str, typer.Option("--precision", "-p", help="fp32 | bf16 | fp16 | int8")] = "fp32",
    epochs: Annotated[int, typer.Option(help="Training epochs of every candidate.")] = DEFAULT_EPOCHS,
    iters: Annotated[int, typer.Option(help="Timed iterations per candidate.")] = 20,
    seed: int = 0,
    json_out: JsonFlag = False,
) -> None:
    """Which detector for this line? Fits every (family x backbone x norm), evaluates and benches it; resumes.

    OUT: candidates/<key>/ (checkpoint, export, result.json), select.json and pareto.png."""
    require("torch", "torch", "edgead select")
    from edgead.select import select

    with progress_bar(quiet=json_out) as cb:
        try:
            sel = select(data, out, _names(families), _names(backbones), _names(norms), size, engine, precision,
                         epochs, iters, seed, progress=cb)
        except ValueError as exc:
            raise EdgeadError(str(exc)) from exc
    if json_out:
        emit_json(json.loads((out / "select.json").read_text()))
        return
    table = Table(title=f"edgead select {data} ({engine} {precision}, {size} px)")
    for col in ("candidate", "image AUROC", "AUPRO", "ms/img p50", "params", "GFLOPs", "Pareto"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for r in sorted(sel.results, key=lambda r: (-r.image_auroc, r.p50_ms)):
        table.add_row(r.key, f"{r.image_auroc:.4f}", f"{r.aupro:.4f}", f"{r.p50_ms:.2f}", f"{r.params / 1e6:.2f} M",
                      f"{r.flops / 1e9:.2f}", "*" if r.key in sel.pareto else "")
    console.print(table)
    for key, reason in sel.skipped:
        console.print(f"skipped {key}: {reason}")
    for key, err in sel.failed:
        console.print(f"[red]failed[/] {key}: {err}")
    console.print(f"{len(sel.reused)} reused from an earlier run; {sel.seconds:.0f} s; "
                  f"written {out / 'select.json'} and {out / 'pareto.png'}")
