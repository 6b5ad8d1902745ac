"""``edgead score``: bulk scoring of an image archive, on this machine or on a Ray cluster.

Exit codes: 0 every image has a score; 3 the run finished but some images have error rows (unreadable files, the
count is in the summary line); 1 an error (nothing or only part was scored; rerun to finish).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgead.cli.common import JsonFlag, OutDir, RunEngine, console, emit_json, progress_bar

#: the run finished, but some images have error rows
ERRORS_EXIT = 3


def score(
    archive: Annotated[Path, typer.Argument(help="Folder tree of images, or a text file with one image path a line.")],
    artifact: Annotated[Path, typer.Option("--artifact", "-a", help="Compiled artifact folder (with manifest.json).")],
    out: OutDir,
    engine: RunEngine = None,
    batch: Annotated[int, typer.Option(help="Images per inference call.")] = 8,
    workers: Annotated[int, typer.Option(help="Decoding threads (embedded path).")] = 2,
    heatmaps: Annotated[bool, typer.Option("--heatmaps", help="Heatmap panels of the anomalous images.")] = False,
    parquet: Annotated[bool, typer.Option("--parquet", help="Also write scores.parquet (needs pyarrow).")] = False,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Read the images of earlier error rows again.")]
    = False,
    ray: Annotated[bool, typer.Option("--ray", help="Score on Ray Data (a local Ray instance unless --address).")]
    = False,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster to join, e.g. 10.0.0.5:6379; "
                                                "implies --ray.")] = None,
    ray_actors: Annotated[int, typer.Option(help="Runner actors in the Ray pool.")] = 2,
    ray_cpus: Annotated[float, typer.Option(help="CPUs reserved per runner actor.")] = 1.0,
    json_out: JsonFlag = False,
) -> None:
    """Score every image of an archive with one artifact: one row per image, resumable, embedded or on Ray.

    OUT: scores.csv, summary.json, heatmaps/. Rerunning into the same folder scores only the images without a row.
    An unreadable image gets an error row and the run goes on; the exit code is then 3."""
    from edgead.score import score_archive

    with progress_bar(quiet=json_out) as update:
        summary = score_archive(
            archive, artifact, out, engine=engine, batch=batch, workers=workers, heatmaps=heatmaps, parquet=parquet,
            retry_errors=retry_errors,
            use_ray=ray or address is not None, ray_address=address, ray_actors=ray_actors, ray_cpus=ray_cpus,
            progress=(lambda d, t: update("score", d, t)) if update else None,
        )
    if json_out:
        emit_json(summary.to_dict())
    else:
        rate = "-" if summary.anomaly_rate is None else f"{100 * summary.anomaly_rate:.1f} %"
        errors = (f"{summary.errors} error rows (unreadable images, {summary.failed} found now; reason in the "
                  f"error column)" if summary.errors else "0 error rows")
        console.print(
            f"{summary.total} images: {summary.scored} scored now, {summary.skipped} already had a row; "
            f"{summary.anomalous} anomalous ({rate}); {errors}; {summary.images_per_s:.1f} images/s on "
            f"{summary.backend}; rows in [bold]{Path(out) / 'scores.csv'}[/]", soft_wrap=True,
        )
    if summary.errors:
        raise typer.Exit(ERRORS_EXIT)
