"""``edgead import``: turn a checkpoint written by another implementation into an edgead checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgead.cli.common import JsonFlag, OutDir, console, emit_json
from edgead.errors import EdgeadError, require


def _frame(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EdgeadError(f"--frame must be HxW (e.g. 1000x1500), found '{text}'") from None
    return h, w


def import_cmd(
    file: Annotated[Path, typer.Argument(help="Checkpoint written by the original implementation.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="dinomaly | anomalib-dinomaly | l2bt | timm")],
    out: OutDir,
    backbone: Annotated[str | None, typer.Option(help="edgead backbone name (default: matched to the weights).")]
    = None,
    size: Annotated[int | None, typer.Option(
        help="Input (crop) side: Dinomaly 392, anomalib from its checkpoint (else 392), L2BT 1036, timm per family.")]
    = None,
    resize: Annotated[int | None, typer.Option(
        help="Dinomaly: frames are resized to this, then cropped (448; anomalib: from its checkpoint).")] = None,
    weights: Annotated[Path | None, typer.Option(help="L2BT: DINOv2 teacher weights.")] = None,
    backward: Annotated[Path | None, typer.Option(help="L2BT: the backward_net file (FILE is forward_net).")] = None,
    frame: Annotated[str | None, typer.Option(help="L2BT: original frame HxW (map upsampled and cropped to it).")]
    = None,
    pairing: Annotated[str, typer.Option(
        help="L2BT: trained (block 7 -> forward_net, as L2BT trains and infers) | reversed (its older inference).")]
    = "trained",
    model: Annotated[str, typer.Option("--model", help="timm: family of the new detector (fbft|dinomaly|vitad).")]
    = "fbft",
    json_out: JsonFlag = False,
) -> None:
    """Import an original Dinomaly, anomalib Dinomaly, L2BT/FBFT or timm/DINOv2 checkpoint (see docs/import.md).

    OUT: the edgead checkpoint folder, written atomically."""
    require("torch", "torch", "edgead import")
    from edgead.fsutil import check_output_target
    from edgead.importers import import_checkpoint
    from edgead.models.checkpoint import read_spec

    check_output_target(out, inputs=tuple(p for p in (file, weights, backward) if p is not None))
    opts: dict = {"backbone": backbone}
    if fmt == "dinomaly":
        opts.update(input_size=size or 392, resize=resize or 448)
    elif fmt == "anomalib-dinomaly":
        opts.update(input_size=size, resize=resize)
    elif fmt == "l2bt":
        opts.update(input_size=size or 1036, weights=weights, backward=backward, frame=_frame(frame),
                    pairing=pairing)
    elif fmt == "timm":
        opts.update(family=model, input_size=size)
    path = import_checkpoint(file, fmt, out, **opts)
    spec = read_spec(path)
    result = {"checkpoint": str(path), "format": fmt, "family": spec.family, "backbone": spec.backbone,
              "input_size": list(spec.input_size), "resize": list(spec.resize) if spec.resize else None}
    if json_out:
        emit_json(result)
    else:
        console.print(f"imported {fmt} checkpoint {file.name} as [bold]{path}[/] ({spec.family}, {spec.backbone}, "
                      f"{spec.input_size[0]}x{spec.input_size[1]})")
