"""``edgead score``: bulk scoring of an image archive, on this machine or on a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgead.cli.common import JsonFlag, OutDir, RunEngine, console, emit_json, progress_bar


def score(
    archive: Annotated[Path, typer.Argument(help="Folder tree of images, or a text file with one image path a line.")],
    artifact: Annotated[Path, typer.Option("--artifact", "-a", help="Compiled artifact folder (with manifest.json).")],
    out: OutDir,
    engine: RunEngine = None,
    batch: Annotated[int, typer.Option(help="Images per inference call.")] = 8,
    workers: Annotated[int, typer.Option(help="Decoding threads (embedded path).")] = 2,
    heatmaps: Annotated[bool, typer.Option("--heatmaps", help="Heatmap panels of the anomalous images.")] = False,
    parquet: Annotated[bool, typer.Option("--parquet", help="Also write scores.parquet (needs pyarrow).")] = False,
    ray: Annotated[bool, typer.Option("--ray", help="Score on Ray Data (a local Ray instance unless --address).")]
    = False,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster to join, e.g. 10.0.0.5:6379; "
                                                "implies --ray.")] = None,
    ray_actors: Annotated[int, typer.Option(help="Runner actors in the Ray pool.")] = 2,
    ray_cpus: Annotated[float, typer.Option(help="CPUs reserved per runner actor.")] = 1.0,
    json_out: JsonFlag = False,
) -> None:
    """Score every image of an archive with one artifact: one row per image, resumable, embedded or on Ray.

    OUT: scores.csv, summary.json, heatmaps/. Rerunning into the same folder scores only the images without a row."""
    from edgead.score import score_archive

    with progress_bar(quiet=json_out) as update:
        summary = score_archive(
            archive, artifact, out, engine=engine, batch=batch, workers=workers, heatmaps=heatmaps, parquet=parquet,
            use_ray=ray or address is not None, ray_address=address, ray_actors=ray_actors, ray_cpus=ray_cpus,
            progress=(lambda d, t: update("score", d, t)) if update else None,
        )
    if json_out:
        emit_json(summary.to_dict())
        return
    rate = "-" if summary.anomaly_rate is None else f"{100 * summary.anomaly_rate:.1f} %"
    console.print(
        f"{summary.total} images: {summary.scored} scored now, {summary.skipped} already scored; "
        f"{summary.anomalous} anomalous ({rate}); {summary.images_per_s:.1f} images/s on {summary.backend}; "
        f"rows in [bold]{Path(out) / 'scores.csv'}[/]"
    )
