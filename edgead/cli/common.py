"""Shared CLI pieces: option aliases defined once, the console, progress bars, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.models import OptionInfo

from edgead import registry
from edgead.errors import InputError
from edgead.term import make_console

# People read stderr; stdout stays clean for --json. Tables keep their columns when piped into a log.
console = make_console(stderr=True)



class _LiveHelpInfo(OptionInfo):
    """A typer option whose help text is computed each time typer builds the command (it reads ``help`` then), so
    options that list engines or precisions show what the registry holds now, without a CLI edit."""

    describe: Callable[[], str]

    @property  # type: ignore[override]
    def help(self) -> str:
        return self.describe()

    @help.setter
    def help(self, value: str | None) -> None:  # OptionInfo.__init__ assigns it; ``describe`` replaces it
        pass


def live_option(*decls: str, describe: Callable[[], str]) -> Any:
    info = typer.Option(*decls)
    info.__class__ = _LiveHelpInfo
    info.describe = describe
    return info


def _engines(text: str, compiling: bool = False, extra: tuple[str, ...] = ()) -> Callable[[], str]:
    def describe() -> str:
        engines = registry.compilable() if compiling else registry.ENGINES.values()
        return f"{text} One of: {', '.join([e.name for e in engines] + list(extra))}."

    return describe


def _compile_precisions() -> str:
    return ("Per engine: " + "; ".join(f"{e.name}: {', '.join(e.compiles)}" for e in registry.compilable())
            + "; or auto (any engine: edgead tune, the fastest artifact that passes its gate on this CPU). "
            "Default: the artifact tune would choose, found with the candidates this CPU's flags prune.")


JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
#: the folder a command writes its results into; each command's description says what goes there
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder (what goes there: see above).")]
MaybeOutDir = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (what goes there: see above).")]
#: the engine that runs an artifact; None: the one its manifest names
RunEngine = Annotated[str | None, live_option("--engine", "-e", describe=_engines(
    "Runner engine (default: the artifact's)."))]
#: the engine ``compile`` builds for
CompileEngine = Annotated[str, live_option("--engine", "-e", describe=_engines("Engine to compile for.", True))]
CompilePrecision = Annotated[str, live_option("--precision", "-p", describe=_compile_precisions)]
#: the engine a command builds artifacts for and then runs them on (select)
BuildRunEngine = Annotated[str, live_option("--engine", "-e", describe=_engines("Engine to build for and run on."))]
#: engines to benchmark: a comma list, or all
BenchEngines = Annotated[str, live_option("--engine", "-e", describe=_engines(
    "Engines to measure: a comma list, or all.", extra=("all",)))]


#: the tiling plan written at fit or export (edgead.spec.TilePlan)
TileSize = Annotated[int | None, typer.Option(
    "--tile", help="Tile frames bigger than the input: tiles of N px, which must be the input size (default with "
                   "--overlap: the input size). See docs/tiling.md.")]
TileOverlap = Annotated[int | None, typer.Option(
    "--overlap", help="Pixels neighbouring tiles share (at most half a tile); writes a tiling plan.")]
#: run an artifact by the full-frame path even when it has a plan
FullFrame = Annotated[bool, typer.Option(
    "--full-frame", help="Ignore the artifact's tiling plan: resize and centre-crop each frame to the input.")]


def tile_plan(tile: int | None, overlap: int | None, input_size: tuple[int, int]):  # noqa: ANN201 - TilePlan | None
    """The plan ``--tile``/``--overlap`` ask for (None when neither is given); the tile must be the input size."""
    from edgead.errors import ConfigError
    from edgead.spec import TilePlan

    if tile is None and overlap is None:
        return None
    if tile is not None and (tile, tile) != tuple(input_size):
        raise ConfigError(f"expected --tile {input_size[0]} (tiles are the model input, {input_size[0]}x"
                          f"{input_size[1]}), found --tile {tile}; fit at --size {tile} for tiles of {tile} px")
    return TilePlan(tuple(input_size), int(overlap or 0))


def check_batch(batch: int, option: str = "--batch") -> int:
    """A batch size must be a positive integer (0 or -1 would score nothing and still exit 0)."""
    if batch < 1:
        raise InputError(f"{option} must be a positive number of images, found {batch}")
    return batch


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
