"""``edgead``: wires the commands; each command module checks its flags and calls the library.

Every ``EdgeadError`` becomes one line on stderr and exit code 1; ``EDGEAD_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from edgead import __version__
from edgead.cli import deploy, importing, line, run, score, select, serve, train, tune
from edgead.errors import EdgeadError

app = typer.Typer(
    name="edgead",
    help="Transformer anomaly detectors from a PyTorch checkpoint to a fast, verified engine on the line.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("synth")(train.synth)
app.command("fit")(train.fit)
app.command("eval")(train.eval_cmd)
app.command("import")(importing.import_cmd)
app.command("export")(deploy.export)
app.command("compile")(deploy.compile_cmd)
app.command("calibrate")(deploy.calibrate)
app.command("verify")(deploy.verify)
app.command("build-c")(deploy.build_c)
app.command("predict")(run.predict)
app.command("bench")(run.bench)
app.command("demo")(run.demo)
app.command("score")(score.score)
app.command("serve")(serve.serve)
app.command("line")(line.line)
app.command("select")(select.select_cmd)
app.command("tune")(tune.tune)


@app.command("version")
def version() -> None:
    """Print the edgead version."""
    typer.echo(__version__)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, EdgeadError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"the system refused an operation: {exc.strerror or exc}{where}"
    if isinstance(exc, MemoryError):
        return "out of memory; use smaller batches or images"
    return " ".join(str(exc).split())


def main() -> None:
    try:
        app()
    except (EdgeadError, OSError, MemoryError) as exc:
        # The one error mapper: edgead's own errors, and what the system refuses (disk full, permission denied,
        # out of memory), become one line and exit code 1; EDGEAD_DEBUG=1 shows the traceback.
        if os.environ.get("EDGEAD_DEBUG") == "1":
            raise
        typer.secho(f"error: {_one_line(exc)}", err=True, fg="red")
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
