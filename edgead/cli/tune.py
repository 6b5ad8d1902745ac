"""``edgead tune``: build, gate and time the artifacts that make sense on this CPU, and keep the fastest faithful."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgead.cli.common import JsonFlag, console, emit_json


def tune(
    out: Annotated[Path, typer.Argument(help="Export folder (edgead export CKPT -o OUT).")],
    batch: Annotated[int, typer.Option(help="Batch size the line runs; candidates are timed at it.")] = 1,
    calib: Annotated[Path | None, typer.Option(help="Normal images for INT8 calibration and the fidelity gate.")]
    = None,
    data: Annotated[Path | None, typer.Option(help="Held-out images for the gate (default: --calib's).")] = None,
    iters: Annotated[int, typer.Option(help="Timed iterations per candidate and round.")] = 20,
    rounds: Annotated[int, typer.Option(help="Interleaved timing rounds (medians are compared).")] = 3,
    noise: Annotated[float, typer.Option(help="Relative margin within which the higher precision wins.")] = 0.03,
    json_out: JsonFlag = False,
) -> None:
    """The fastest artifact that passes its fidelity gate on this machine; edgead.runtimes.load(OUT) then runs it."""
    from rich.table import Table

    from edgead.tune import tune as run_tune

    decision = run_tune(out, batch, calib, data, iters, rounds, noise,
                        progress=None if json_out else (lambda m: console.print(f"[dim]{m}[/dim]")))
    if json_out:
        emit_json(decision)
        return
    m = decision["machine"]
    flags = ", ".join(f for f, on in m["flags"].items() if on)
    chosen = decision["chosen"]
    t = Table(title=f"edgead tune {out}, batch {batch} — {m['cpu_model']}, {m['cores']} cores; {flags}",
              title_justify="left")
    for col in ("candidate", "executed", "gate", "ms/img (median)", "runs", ""):
        t.add_column(col)
    for c in decision["candidates"]:
        name = c["candidate"]["name"]
        gate = "skipped: " + c["skipped"] if c["skipped"] else ("pass" if c["passed"] else
                                                                   "FAIL: " + "; ".join(c["failures"]))
        ms = "-" if c["ms_per_image"] is None else f"{c['ms_per_image']:.2f}"
        runs = " ".join(f"{x:.1f}" for x in c["runs_ms"])
        mark = "[bold green]chosen[/]" if (c["folder"] == chosen["folder"] and c["candidate"]["engine"] ==
                                           chosen["engine"] and c["candidate"]["mode"] == chosen["mode"]
                                           and c["candidate"]["static"] == chosen.get("static_batch")
                                           and c["candidate"].get("rest") == chosen.get("rest")) else ""
        t.add_row(name, c["executed"] or "-", gate, ms, runs, mark)
    console.print(t)
    static = f", batch fixed at {chosen['static_batch']}" if chosen.get("static_batch") else ""
    rest = f", float rest in {chosen['rest']}" if chosen.get("rest") else ""
    console.print(f"chosen: [bold]{chosen['engine']} {chosen['precision']}[/] ({chosen['mode']}{static}{rest}) in "
                  f"{chosen['folder']}"
                  f"; edgead.runtimes.load({out}) runs it")
