"""Tests for edgead.evaluate: pixel metrics against masks at their own resolution, never shrunk to the model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import edgead.data
import edgead.evaluate
import edgead.imageio
from edgead.evaluate import evaluate_runner
from edgead.runtimes.base import Predictions
from edgead.spec import DetectorSpec

H, W = 200, 300  # a 300x200 frame (W x H)


class BrightnessRunner:
    """A stand-in detector at 56 px: the map is each input pixel's distance from mid-grey, the score its max."""

    def __init__(self) -> None:
        self.spec = DetectorSpec(family="fbft", backbone="t", norm="layernorm", layers=(0,), input_size=(56, 56))

    def predict(self, images: np.ndarray) -> Predictions:
        assert images.shape[1:] == (56, 56, 3)  # the model only ever sees its input size
        maps = np.abs(images.astype(np.float32).mean(axis=3) - 128.0) / 128.0
        return Predictions(maps.reshape(len(maps), -1).max(axis=1), maps, None)


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _category(root: Path) -> Path:
    """Two good frames and two with a 3x3 px bright defect; masks at the frames' own 300x200."""
    rng = np.random.default_rng(0)
    for i in range(2):
        _write(root / "test" / "good" / f"{i:03d}.png", (128 + rng.integers(-4, 5, (H, W, 3))).astype(np.uint8))
    for i, (y, x) in enumerate(((101, 151), (40, 250))):
        frame = (128 + rng.integers(-4, 5, (H, W, 3))).astype(np.uint8)
        frame[y : y + 3, x : x + 3] = 255
        mask = np.zeros((H, W), np.uint8)
        mask[y : y + 3, x : x + 3] = 255
        _write(root / "test" / "spot" / f"{i:03d}.png", frame)
        _write(root / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)
    return root


def test_masks_are_never_resized_to_the_model_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _category(tmp_path)
    runner = BrightnessRunner()
    # shrunk the old way (nearest, to 56 px) one 3x3 px defect vanishes and the other keeps a single pixel
    assert [int(m.sum()) for m in edgead.data.load_masks(edgead.data.test_items(root), runner.spec)] == [0, 0, 0, 1]

    real_resize = edgead.imageio.resize

    def resize_images_only(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
        if nearest or img.ndim == 2:
            raise AssertionError(f"a mask of shape {img.shape} was resized to {size}")
        return real_resize(img, size, nearest)

    def no_prepare(*args: object, **kwargs: object) -> None:
        raise AssertionError("edgead.data.prepare was called: a mask was fitted to the model input")

    seen: list[tuple[tuple[int, int], int]] = []
    real_pixel_metrics = edgead.evaluate.pixel_metrics

    def spy(masks, maps, *args, **kwargs):
        seen.extend((m.shape, int(m.sum())) for m in masks)
        assert [a.shape for a in maps] == [m.shape for m in masks]
        return real_pixel_metrics(masks, maps, *args, **kwargs)

    monkeypatch.setattr(edgead.imageio, "resize", resize_images_only)
    monkeypatch.setattr(edgead.data, "prepare", no_prepare)
    monkeypatch.setattr(edgead.evaluate, "pixel_metrics", spy)
    ev = evaluate_runner(runner, root)

    assert seen == [((H, W), 0), ((H, W), 0), ((H, W), 9), ((H, W), 9)]  # good, good, spot, spot
    assert [m.shape for m in ev.masks] == [(H, W)] * 4 and ev.maps.shape == (4, 56, 56)
    assert ev.by_size is not None and ev.by_size.regions == (2, 2, 2, 2) and ev.by_size.area_edges == (9, 9, 9)
    m = ev.metrics
    assert m.image_auroc == 1.0
    assert m.aupro == pytest.approx(ev.by_size.at(4)) and ev.by_size.q1 == ev.by_size.at(4)
    # the blurred peak of each defect, brought back onto the frame, covers its 9 px before almost any normal one
    assert m.pixel_auroc == pytest.approx(0.99996, abs=2e-5)
    assert m.aupro == pytest.approx(0.99987, abs=5e-5) and ev.by_size.at(1, 0.05) == pytest.approx(0.99925, abs=2e-4)


def test_cli_eval_on_camera_frames_prints_aupro_by_size(tmp_path: Path, tiny_export) -> None:
    """``edgead synth`` camera frames with 3-100 px defects, then ``edgead eval --json`` and the table."""
    import json

    from typer.testing import CliRunner

    import edgead.runtimes as rt
    from edgead.cli.app import app
    from edgead.metrics import robustness

    def edgead_cli(*args: object):
        return CliRunner().invoke(app, [str(a) for a in args])

    out = edgead_cli("synth", tmp_path / "set", "--frame", "240x360", "--defect-px", "3-100", "--train", "1",
                     "--good", "2", "--defects", "2", "--category", "texture")
    assert out.exit_code == 0, out.output
    category, export = tmp_path / "set" / "texture", tiny_export("fbft") / "export"
    out = edgead_cli("eval", export, category, "--json")
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    size = res["aupro_by_size"]
    assert res["images"] == 10 and res["mask_sizes"] == ["240x360"]  # masks at the frames' own size, not 56x56
    assert size["regions"] == [2, 4, 6, 8] and len(size["aupro_30"]) == len(size["aupro_5"]) == 4
    assert size["aupro_30"][3] == pytest.approx(res["aupro"])
    assert size["robustness_30"] == pytest.approx(robustness(size["aupro_30"]))
    ev = evaluate_runner(rt.load(export), category)  # the same numbers in-process
    assert ev.by_size is not None and size["aupro_5"] == pytest.approx(list(ev.by_size.aupro[1]), abs=1e-12)
    assert size["area_edges"] == pytest.approx(list(ev.by_size.area_edges)) and size["area_edges"][0] < 60
    out = edgead_cli("eval", export, category)
    assert out.exit_code == 0, out.output
    for text in ("AUPRO by defect size", "240x360", "Q1", "Q4", "robustness", "AUPRO@5%"):
        assert text in out.stderr


def test_a_tiled_artifact_is_evaluated_on_whole_frames(tmp_path: Path, tiled_export, defect_frame) -> None:
    """A tiled artifact: each test frame scored whole by predict_frames (the line's path), its stitched map met
    with the mask at the frame's 300x250, no resize to the 56 px input; the scores are predict_frames' exactly."""
    import edgead.runtimes as rt

    _, export = tiled_export
    frame, (cy, cx) = defect_frame
    rng = np.random.default_rng(11)
    for i in range(2):
        good = np.clip(rng.normal(120, 4, frame.shape), 0, 255).astype(np.uint8)
        _write(tmp_path / "test" / "good" / f"{i:03d}.png", good[:, :, ::-1])
    mask = np.zeros(frame.shape[:2], np.uint8)
    mask[cy - 3 : cy + 3, cx - 3 : cx + 3] = 255
    _write(tmp_path / "test" / "spot" / "000.png", frame[:, :, ::-1])
    _write(tmp_path / "ground_truth" / "spot" / "000_mask.png", mask)
    with rt.load(export, "onnxruntime") as runner:
        ev = evaluate_runner(runner, tmp_path)
        expected = [float(runner.predict_frames(edgead.imageio.read_image(it.path)).scores[0]) for it in ev.items]
    assert [m.shape for m in ev.maps] == [m.shape for m in ev.masks] == [(300, 250)] * 3
    assert ev.scores.tolist() == pytest.approx(expected, abs=1e-7)
    assert ev.metrics.image_auroc == 1.0 and ev.by_size is not None and ev.by_size.regions == (1, 1, 1, 1)
    # the defect's 36 px hold the stitched map's highest values of the frame
    assert ev.metrics.pixel_auroc > 0.99
