"""Commands that run artifacts: ``predict``, ``bench``, and the built-in ``demo``."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgead.cli.common import (
    BenchEngines,
    FullFrame,
    JsonFlag,
    MaybeOutDir,
    OutDir,
    RunEngine,
    check_batch,
    console,
    emit_json,
)
from edgead.errors import InputError
from edgead.fsutil import write_text_atomic
from edgead.imageio import IMAGE_SUFFIXES, list_images, load_batch, read_image


def _expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += list_images(p)
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        else:
            raise InputError(f"expected an image file or a folder of images, found {p}")
    return files


def predict(
    target: Annotated[Path, typer.Argument(help="Checkpoint or artifact folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    out: MaybeOutDir = None,
    engine: RunEngine = None,
    batch: Annotated[int, typer.Option(help="Images per inference call.")] = 8,
    full_frame: FullFrame = False,
    json_out: JsonFlag = False,
) -> None:
    """Score images: score, label against the artifact's threshold, and heatmap overlays with --out.

    An artifact with a tiling plan scores each image at its own size (tiles stitched back; the heatmap is the
    frame's size); --full-frame resizes and centre-crops to the input instead.

    OUT: heatmap overlay PNGs, one per image, written atomically."""
    import numpy as np

    import edgead.runtimes as rt
    from edgead.fsutil import atomic_dir, check_output_target
    from edgead.runtimes.base import Predictions
    from edgead.viz import panel_vmax, save_panel

    check_batch(batch)
    files = _expand(images)
    if out is not None:
        check_output_target(out, inputs=(target, *images))
    runner = rt.load(target, engine)
    if full_frame:
        runner.tiling = None
    thr = runner.spec.threshold
    rows = []
    # Panels are written chunk by chunk from the prepared batch (no second read, no map kept); colours span
    # 0..2x threshold, or 0..each map's max when the artifact has no threshold.
    with atomic_dir(out, inputs=(target, *images)) if out is not None else contextlib.nullcontext() as tmp:
        for i in range(0, len(files), batch):
            chunk = files[i : i + batch]
            if runner.tiling is None:
                prepared = load_batch(chunk, runner.spec)
                p = runner.predict(prepared)
            else:  # each frame at its own size through the plan; frames in one chunk may differ in size
                prepared = [read_image(f) for f in chunk]
                parts = [runner.predict_frames(f) for f in prepared]
                p = Predictions(np.concatenate([q.scores for q in parts]), [q.maps[0] for q in parts],
                                None if thr is None else np.concatenate([q.labels for q in parts]))
            for j, f in enumerate(chunk):
                label = None if p.labels is None else ("anomalous" if p.labels[j] else "normal")
                row = {"image": str(f), "score": float(p.scores[j]), "label": label}
                if tmp is not None:
                    name = f"{i + j:04d}_{f.stem}.png"
                    save_panel(tmp / name, prepared[j], p.maps[j], 0.0, panel_vmax(p.maps[j], thr), row["score"], thr)
                    row["heatmap"] = str(out / name)
                rows.append(row)
    if json_out:
        tiling = None if runner.tiling is None else {"tile": list(runner.tiling.tile), "overlap": runner.tiling.overlap}
        emit_json({"target": str(target), "engine": runner.engine, "threshold": thr, "tiling": tiling,
                   "results": rows})
        return
    table = Table(title=f"{target} ({runner.engine} {runner.manifest.precision})")
    table.add_column("image")
    table.add_column("score", justify="right")
    table.add_column("label")
    for row in rows:
        colour = "red" if row["label"] == "anomalous" else "green"
        table.add_row(row["image"], f"{row['score']:.4f}", f"[{colour}]{row['label'] or '-'}[/]")
    console.print(table)
    if out is not None:
        console.print(f"heatmaps written to [bold]{out}[/]")


def _bench_frames(target: str, engine: str, precisions: tuple[str, ...], frame: str, iters: int,
                  json_out: bool, rounds: int = 3) -> None:
    from edgead.bench.frames import bench_frames_target, frames_document, render_frames
    from edgead.cli.train import parse_size

    size = parse_size(frame)
    hw = (size, size) if isinstance(size, int) else size
    engines = None if engine == "all" else [e for e in engine.split(",") if e]
    timings, skipped = bench_frames_target(Path(target), hw, engines, precisions or None, iters,
                                           progress=None if json_out else lambda m: console.print(f"[dim]{m}[/dim]"),
                                           rounds=rounds)
    if json_out:
        emit_json(frames_document(timings, skipped, target))
        return
    console.print(render_frames(timings, f"edgead bench {target} --frame {hw[0]}x{hw[1]}"))
    for reason in skipped:
        console.print(f"[dim]skipped {reason}[/dim]")


def bench(
    target: Annotated[str, typer.Argument(help="Checkpoint or export folder; 'norms': the DyT vs LayerNorm study.")],
    engine: BenchEngines = "all",
    precision: Annotated[str, typer.Option("--precision", "-p", help="Comma list, e.g. fp32,int8 (default all).")]
    = "",
    batch: Annotated[str, typer.Option(help="Comma list of batch sizes.")] = "1,8",
    iters: Annotated[int, typer.Option(help="Timed iterations per configuration.")] = 20,
    frame: Annotated[str | None, typer.Option(
        help="Time whole frames of HxW pixels (e.g. 2048x2448) through predict_frames: a tiled row when the "
             "artifact has a tiling plan and a full-frame (resize/crop) row; --batch is not used.")] = None,
    json_file: Annotated[Path | None, typer.Option("--json-out", help="Also write the results as JSON to this file "
                                                   "(the norms study: its folder).")] = None,
    backbone: Annotated[str | None, typer.Option(
        help="Backbone (mae: configuration) for the norms study (default: the family's).")] = None,
    size: Annotated[int | None, typer.Option(help="Input size for the norms study (default 224; vitad, mae 256).")]
    = None,
    family: Annotated[str, typer.Option(help="Detector family for the norms study (fbft, dinomaly, vitad, mae).")]
    = "fbft",
    peak: Annotated[bool, typer.Option("--peak/--no-peak", help="Measure this machine's peak matmul rates and show "
                                       "each row's share of it (a few seconds).")] = True,
    json_out: JsonFlag = False,
    device: Annotated[str, typer.Option(help="cpu | cuda (torch on the GPU: eager, CUDA graph, torch.compile).")]
    = "cpu",
    rounds: Annotated[int, typer.Option(help="Interleaved rounds: --iters is split over them and each row shows the "
                                        "min/median/max of its round medians.")] = 3,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Add the plain-PyTorch rows (eager "
                                           "fp32; torch.compile, with bf16 autocast where the CPU has bf16) and "
                                           "each row's speed-up over the faster of them.")] = True,
    baseline_backend: Annotated[str, typer.Option(help="torch.compile backend of the baseline row (inductor; "
                                                  "eager to skip code generation).")] = "inductor",
) -> None:
    """Latency p50/p90/p99, throughput and memory per engine, precision and batch size, and the share of peak."""
    try:
        batches = tuple(int(b) for b in batch.split(",") if b)
    except ValueError:
        raise InputError(f"--batch must be a comma list of integers such as 1,8, found '{batch}'") from None
    for b in batches:
        check_batch(b)
    precisions = tuple(p for p in precision.split(",") if p)
    if frame is not None:
        if rounds < 1:
            raise InputError(f"--rounds must be at least 1, found {rounds}")
        _bench_frames(target, engine, precisions, frame, iters, json_out, rounds)
        return
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda, found '{device}'")
    if device == "cuda":
        _bench_cuda(target, engine, batches, iters, json_file, json_out, backbone, size, family)
        return
    if target == "norms":
        from edgead.bench.norms import run_norm_study

        folder = json_file.parent if json_file else Path("runs/norms")
        with contextlib.redirect_stdout(sys.stderr):  # calibration libraries print; stdout is kept for --json
            run_norm_study(backbone=backbone, size=size, family=family, iters=iters, batches=batches, out=folder,
                           console=console)
        if json_out:
            emit_json(json.loads((folder / "norms.json").read_text()))
        return
    from edgead.bench import run_bench

    engines = None if engine == "all" else [e for e in engine.split(",") if e]
    if rounds < 1:
        raise InputError(f"--rounds must be at least 1, found {rounds}")
    run_bench(Path(target), engines, precisions or None, batches, iters, json_path=json_file, console=console,
              table=not json_out, peak=peak, rounds=rounds, baseline=baseline, baseline_backend=baseline_backend,
              emit=emit_json if json_out else None)


def _bench_cuda(target: str, engine: str, batches: tuple[int, ...], iters: int, json_path: Path | None,
                json_out: bool, backbone: str, size: int, family: str) -> None:
    from edgead import registry
    from edgead.bench.gpu import bench_detector, cuda_unavailable, norms_study_gpu

    if engine != "all" and registry.find(engine) is not registry.reference():
        raise InputError(f"--device cuda benchmarks the torch engine (TensorRT engines always run on the GPU), "
                         f"found --engine {engine}")
    why = cuda_unavailable()
    if why:
        if json_out:
            emit_json({"skipped": why, "results": []})
        else:
            console.print(why)
        return
    if target == "norms":
        results = norms_study_gpu(backbone, size, family, batches=batches, iters=iters)
    else:
        from edgead.models.checkpoint import load_checkpoint

        results = bench_detector(load_checkpoint(Path(target)), target, batches, iters)
    doc = [r.to_dict() for r in results]
    if json_path:
        write_text_atomic(json_path, json.dumps(doc, indent=2) + "\n")
    if json_out:
        emit_json({"skipped": None, "results": doc})
        return
    table = Table(title=f"torch on {results[0].device if results else 'cuda'}")
    for col in ("detector", "mode", "batch", "ms p50", "ms p90", "ms/img"):
        table.add_column(col)
    for r in results:
        cells = [f"{v:.3f}" if v is not None else "-" for v in (r.ms_p50, r.ms_p90, r.ms_per_image)]
        table.add_row(r.name, r.mode, str(r.batch), *(cells if not r.skipped else [f"skipped: {r.skipped}", "", ""]))
    console.print(table)


def demo(
    out: OutDir = Path("runs/demo"),
    backbone: Annotated[str, typer.Option(help="Backbone (random init: no weights are downloaded).")]
    = "vit_small_patch14_dinov2",
    category: Annotated[str, typer.Option(help="Synthetic category to fit: texture | object.")] = "texture",
    epochs: Annotated[int, typer.Option(help="FBFT training epochs.")] = 40,
    iters: Annotated[int, typer.Option(help="Benchmark iterations.")] = 10,
) -> None:
    """The built-in default: synthetic data, fit FBFT, evaluate, heatmaps, export, compile, verify, bench.

    OUT: the demo's working folder (synthetic/, detector/, heatmaps/, export/, bench.json)."""
    from edgead.cli import deploy, train

    t0 = time.perf_counter()
    data, ckpt, art = out / "synthetic", out / "detector", out / "export"
    cat = data / category

    def step(title: str) -> None:
        console.rule(f"[bold]{title}[/]  ({time.perf_counter() - t0:.0f} s)")

    step("1/7 synthetic data")
    train.synth(data)
    step("2/7 fit FBFT")
    train.fit(cat, model="fbft", backbone=backbone, size=224, epochs=epochs, out=ckpt)
    step("3/7 evaluate")
    train.eval_cmd(ckpt, cat)
    step("4/7 heatmaps")
    defects = sorted(p for p in (cat / "test").iterdir() if p.is_dir())
    samples = [list_images(d)[0] for d in defects]
    predict(ckpt, samples, out=out / "heatmaps")
    step("5/7 export")
    deploy.export(ckpt, out=art)
    step("6/7 compile OpenVINO f32 (the reference row) and the default: this CPU's fastest faithful artifact")
    deploy.compile_cmd(art, engine="openvino", precision="fp32")
    deploy.compile_cmd(art, calib=cat)
    deploy.verify(art, data=cat)
    step("7/7 bench")
    bench(str(art), engine="all", batch="1", iters=iters, json_file=out / "bench.json")
    console.rule(f"[bold green]demo done in {time.perf_counter() - t0:.0f} s[/]; everything is in {out}")
