"""Terminal output shared by the CLI and the benchmarks: rich consoles that keep table columns in logs."""

from __future__ import annotations

import sys

from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    """A rich console; when the stream is not a terminal (a log, CI) tables get 140 columns instead of 80."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 140)
