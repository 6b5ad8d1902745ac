"""Build-side commands that make data and detectors: ``synth``, ``fit``, ``eval``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from edgead.cli.common import (
    JsonFlag,
    OutDir,
    RunEngine,
    TileOverlap,
    TileSize,
    console,
    emit_json,
    progress_bar,
    tile_plan,
)
from edgead.errors import ConfigError, require

if TYPE_CHECKING:
    from edgead.metrics import AuproBySize


def synth(
    out: Annotated[Path, typer.Argument(help="Folder for the MVTec-layout synthetic set.")],
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 224,
    train: Annotated[int, typer.Option(help="Normal training images per category.")] = 40,
    seed: int = 0,
    frame: Annotated[str | None, typer.Option(
        help="Camera-shaped frames, HxW in pixels like --size elsewhere (e.g. 2048x2448); replaces --size.")] = None,
    defect_px: Annotated[str | None, typer.Option(
        help="Defect diameters MIN-MAX in pixels (e.g. 3-300), log-spaced over the defect images; default: "
             "defects scaled to the image.")] = None,
    good: Annotated[int, typer.Option(help="Normal test images per category.")] = 10,
    defects: Annotated[int, typer.Option(help="Test images per defect type (4 types) per category.")] = 5,
    category: Annotated[str, typer.Option(help="texture | object | all")] = "all",
) -> None:
    """Write a synthetic MVTec-layout set (textures and objects with scratches, spots, cracks, missing pieces)."""
    from edgead.synth import CATEGORIES, make_synthetic

    categories = CATEGORIES if category == "all" else (category,)
    frame_hw = parse_size(frame)
    if isinstance(frame_hw, int):
        frame_hw = (frame_hw, frame_hw)
    make_synthetic(out, categories, size=size, n_train=train, n_test_good=good, n_test_defect=defects, seed=seed,
                   frame=frame_hw, defect_px=parse_range(defect_px))
    shape = f"{frame_hw[0]}x{frame_hw[1]}" if frame_hw else f"{size}x{size}"
    sizes = f", defects {defect_px} px across" if defect_px else ""
    console.print(f"synthetic set written to [bold]{out}[/] (categories: {', '.join(categories)}; {shape} frames"
                  f"{sizes})")


def parse_range(text: str | None) -> tuple[int, int] | None:
    """``--defect-px``: ``MIN-MAX`` in pixels."""
    if text is None:
        return None
    parts = text.split("-")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    raise ConfigError(f"expected --defect-px as MIN-MAX in pixels (e.g. 3-300), found '{text}'")


def parse_size(text: str | int | None) -> int | tuple[int, int] | None:
    """``--size``: ``N`` (square) or ``HxW``; an int (a caller in Python) passes through."""
    if text is None or isinstance(text, int):
        return text
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts):
        values = [int(p) for p in parts]
        return values[0] if len(values) == 1 else (values[0], values[1])
    raise ConfigError(f"expected --size as N or HxW in pixels (e.g. 256 or 256x320), found '{text}'")


def fit(
    data: Annotated[Path, typer.Argument(help="Normal images: an image folder or an MVTec category.")],
    model: Annotated[str, typer.Option("--model", help="fbft | dinomaly | vitad | nf | gmm | mae")] = "fbft",
    backbone: Annotated[str | None, typer.Option(
        help="Backbone name (default vit_small_patch14_dinov2; for mae the configuration, default mae_patch16).")]
    = None,
    weights: Annotated[Path | None, typer.Option(help="Local backbone weights (safetensors or torch file).")] = None,
    norm: Annotated[str, typer.Option(help="layernorm | dyt")] = "layernorm",
    convert_dyt: Annotated[bool, typer.Option(help="Load LayerNorm weights, convert the norms to DyT.")] = False,
    size: Annotated[str | None, typer.Option(
        help="Input size in pixels, N or HxW, a multiple of the patch size (default 224; mae 256).")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Training epochs (default per family); for mae the pre-training phase (default 100).")] = None,
    layers: Annotated[str | None, typer.Option(help="Tapped blocks or stages, 0-based, comma-separated "
                                               "(default per family and backbone).")] = None,
    finetune_epochs: Annotated[int | None, typer.Option(
        help="mae only: fine-tuning epochs, reconstruction MSE only (default 20).")] = None,
    mask_ratio: Annotated[float | None, typer.Option(
        help="mae only: share of patches masked (in blocks) during training, in (0, 1) (default 0.75).")] = None,
    tile: TileSize = None,
    overlap: TileOverlap = None,
    out: OutDir = Path("runs/detector"),
    seed: int = 0,
    json_out: JsonFlag = False,
) -> None:
    """Train on normal images (CPU): the head, or the whole mae network; threshold from held-out normals.

    With --tile/--overlap the head trains on the tiles of each full-resolution frame, the threshold comes from the
    hold-out frames' stitched scores, and the plan travels on to export.

    OUT: the checkpoint folder (detector.safetensors, spec.json), written atomically."""
    require("torch", "torch", "edgead fit")
    if model != "mae" and (finetune_epochs is not None or mask_ratio is not None):
        raise ConfigError(f"--finetune-epochs and --mask-ratio apply to --model mae only, found --model {model}")
    input_size = parse_size(size) or 224
    plan = tile_plan(tile, overlap, (input_size, input_size) if isinstance(input_size, int) else input_size)
    if plan is not None and model == "mae":
        raise ConfigError("--tile/--overlap apply to the head families, found --model mae")
    from edgead.fit import fit as fit_detector
    from edgead.fsutil import check_output_target

    check_output_target(out, inputs=(data,) + ((weights,) if weights else ()))
    with progress_bar(quiet=json_out) as cb:
        r = fit_detector(data, out, model, backbone, norm, parse_size(size), weights, convert_dyt, epochs, seed=seed,
                         progress=cb, layers=parse_layers(layers), finetune_epochs=finetune_epochs,
                         mask_ratio=mask_ratio, tiling=plan)
    result = {"checkpoint": str(r.checkpoint), "train_images": r.train_images, "holdout_images": r.holdout_images,
              "threshold": r.threshold, "final_loss": r.final_loss, "seconds": round(r.seconds, 1)}
    if json_out:
        emit_json(result)
    else:
        console.print(f"checkpoint [bold]{r.checkpoint}[/]: {r.train_images} train / {r.holdout_images} hold-out "
                      f"images, threshold {r.threshold:.4g}, loss {r.final_loss:.4g}, {r.seconds:.0f} s")


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``'6'`` or ``'2,3'`` -> block indices; ``None`` keeps the family default."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--layers must be comma-separated integers like '6' or '2,3', found '{text}'") from None


def eval_cmd(
    target: Annotated[Path, typer.Argument(help="Checkpoint or artifact folder.")],
    data: Annotated[Path, typer.Argument(help="Labelled MVTec-layout category (test/, ground_truth/).")],
    engine: RunEngine = None,
    json_out: JsonFlag = False,
) -> None:
    """Image AUROC, F1-max, pixel AUROC, AUPRO (to 30 % FPR), and AUPRO per defect-size quartile with the
    robustness score; pixel metrics against the masks at their own resolution (docs/metrics.md)."""
    import edgead.runtimes as rt
    from edgead.evaluate import evaluate_runner

    ev = evaluate_runner(rt.load(target, engine), data)
    m, size = ev.metrics, ev.by_size
    result = {"image_auroc": m.image_auroc, "image_f1_max": m.image_f1_max, "pixel_auroc": m.pixel_auroc,
              "aupro": m.aupro, "images": len(ev.items),
              "mask_sizes": sorted({f"{k.shape[0]}x{k.shape[1]}" for k in ev.masks}),
              "aupro_by_size": size.to_dict() if size else None}
    if json_out:
        emit_json(result)
        return
    table = Table(title=f"{target} on {data}")
    for k in ("image AUROC", "image F1-max", "pixel AUROC", "AUPRO@30%"):
        table.add_column(k, justify="right")
    table.add_row(*(f"{v:.4f}" for v in (m.image_auroc, m.image_f1_max, m.pixel_auroc, m.aupro)))
    console.print(table)
    if size is not None:
        console.print(size_table(size, result["mask_sizes"]))


def size_table(size: AuproBySize, mask_sizes: list[str]) -> Table:
    """AUPRO per cumulative quartile of defect area and the robustness score, one row per quartile."""
    shown = ", ".join(mask_sizes[:3]) + (", ..." if len(mask_sizes) > 3 else "")
    table = Table(title=f"AUPRO by defect size (masks at their own resolution: {shown})")
    table.add_column("quartile")
    table.add_column("defect area (px)", justify="right")
    table.add_column("regions", justify="right")
    limits = [f"{x * 100:g}%" for x in size.max_fprs]
    for limit in limits:
        table.add_column(f"AUPRO@{limit}", justify="right")
    for q in range(4):
        area = f"<= {size.area_edges[q]:.6g}" if q < 3 else "all"
        table.add_row(f"Q{q + 1}", area, str(size.regions[q]), *(f"{row[q]:.4f}" for row in size.aupro))
    table.add_row("robustness", "", "", *(f"{r:.4f}" for r in size.robustness), end_section=True)
    return table
