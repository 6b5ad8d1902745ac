"""Shared CLI pieces: option aliases defined once, the console, progress bars, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgead.term import make_console

# People read stderr; stdout stays clean for --json. Tables keep their columns when piped into a log.
console = make_console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder (written atomically).")]
Engine = Annotated[str, typer.Option("--engine", "-e", help="trt | openvino | onnxruntime | torch")]


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bar(quiet: bool = False) -> Iterator[Any]:
    """Yield a ``(stage, done, total)`` callback drawing one rich bar per stage."""
    if quiet:
        yield None
        return
    with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as prog:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=total)
            prog.update(tasks[stage], completed=done, total=total)

        yield update
