"""Tests for edgead.viz: JET overlays with fixed value ranges and the PNG verdict panel."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead.errors import InputError
from edgead.imageio import read_image
from edgead.viz import colorize, heatmap_overlay, panel_vmax, render_panel, save_panel, verdict_text


def test_colorize_uses_jet_with_clipping() -> None:
    amap = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]])
    rgb = colorize(amap, vmin=0.0, vmax=1.0)
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    jet = cv2.applyColorMap(np.array([[0, 128, 255]], np.uint8), cv2.COLORMAP_JET)[0, :, ::-1]
    np.testing.assert_array_equal(rgb[0, [0, 1, 2, 3, 4]], jet[[0, 0, 1, 2, 2]])
    assert rgb[0, 0, 2] > 100 and rgb[0, 0, 0] == 0  # low values are blue (RGB order)
    assert rgb[0, 4, 0] > 100 and rgb[0, 4, 2] == 0  # high values are red


def test_overlay_blends_and_resizes() -> None:
    image = np.full((40, 60, 3), 100, np.uint8)
    amap = np.zeros((10, 15), np.float32)
    out = heatmap_overlay(image, amap, 0.0, 1.0, alpha=0.5)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    blue = colorize(np.zeros((1, 1)), 0.0, 1.0)[0, 0].astype(float)
    np.testing.assert_allclose(out[20, 30], 0.5 * 100 + 0.5 * blue, atol=1)
    np.testing.assert_array_equal(heatmap_overlay(image, amap, 0.0, 1.0, alpha=0.0), image)


def test_overlay_rejects_bad_inputs() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match="vmax > vmin"):
        heatmap_overlay(image, np.zeros((8, 8)), 1.0, 1.0)
    with pytest.raises(InputError, match="RGB uint8 image"):
        heatmap_overlay(np.zeros((8, 8), np.uint8), np.zeros((8, 8)), 0.0, 1.0)
    with pytest.raises(InputError, match="2-D anomaly map"):
        heatmap_overlay(image, np.zeros((2, 8, 8)), 0.0, 1.0)
    with pytest.raises(InputError, match=r"alpha in \[0, 1\]"):
        heatmap_overlay(image, np.zeros((8, 8)), 0.0, 1.0, alpha=1.5)


def test_verdict_text() -> None:
    assert verdict_text(0.1234, 0.1) == "score 0.123 / thr 0.100 ANOMALY"
    assert verdict_text(0.05, 0.1) == "score 0.050 / thr 0.100 OK"
    assert verdict_text(0.05, None) == "score 0.050"


def test_save_panel_writes_image_overlay_and_text(tmp_path: Path) -> None:
    image = np.full((64, 64, 3), 90, np.uint8)
    amap = np.zeros((64, 64), np.float32)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 1
    path = save_panel(tmp_path / "out" / "p.png", image, amap, 0.0, 1.0, score=0.5, threshold=0.1, mask=mask)
    assert path == tmp_path / "out" / "p.png"
    assert [p.name for p in path.parent.iterdir()] == ["p.png"]  # no temporary file left behind
    panel = read_image(path)
    np.testing.assert_array_equal(panel, render_panel(image, amap, 0.0, 1.0, 0.5, 0.1, mask))
    assert panel.shape[1] == 128 and panel.shape[0] > 64
    np.testing.assert_array_equal(panel[:64, :64], image)  # left: the image untouched
    assert panel[20, 64 + 30].tolist() == [255, 255, 255]  # the mask contour's top edge, drawn in white
    assert panel[30, 64 + 30].tolist() != [255, 255, 255]
    assert panel[64:].max() > 0  # the text line


def test_panel_without_mask_has_no_contour(tmp_path: Path) -> None:
    image = np.full((32, 32, 3), 90, np.uint8)
    panel = render_panel(image, np.zeros((8, 8)), 0.0, 1.0, score=0.01, threshold=0.1)
    np.testing.assert_array_equal(panel[:32, 32:], heatmap_overlay(image, np.zeros((8, 8)), 0.0, 1.0))


def test_verdict_at_the_threshold_matches_runner_labels():
    # runners label scores strictly above the threshold as anomalous; the picture must agree
    assert verdict_text(0.1, 0.1).endswith(" OK")


def test_panel_vmax_is_twice_the_threshold_else_the_finite_map_maximum() -> None:
    amap = np.array([[0.0, 0.25, np.nan, np.inf]])
    assert panel_vmax(amap, 0.2) == pytest.approx(0.4)
    assert panel_vmax(amap, None) == pytest.approx(0.25)  # NaN/Inf are not the top of the scale
    for bad_threshold in (None, 0.0, -1.0, float("nan")):
        assert panel_vmax(np.zeros((4, 4)), bad_threshold) == 1.0  # an all-zero map still gets a scale
    assert panel_vmax(np.full((2, 2), np.nan), None) == 1.0
    assert panel_vmax(np.full((2, 2), -3.0), None) == 1.0


def test_score_heatmaps_draw_an_all_zero_map_without_a_threshold(tmp_path: Path) -> None:
    from edgead.score import save_heatmaps

    images = np.full((1, 16, 16, 3), 90, np.uint8)
    save_heatmaps(tmp_path, ["a/b.png"], images, np.zeros((1, 16, 16), np.float32), np.zeros(1), None)
    (png,) = (tmp_path / "heatmaps").iterdir()
    panel = read_image(png)
    assert panel.shape == (42, 32, 3)  # image and heat map side by side over the verdict bar
    blue = colorize(np.zeros((1, 1)), 0.0, 1.0)[0, 0].astype(int)
    heat = panel[:16, 16:].astype(int)  # the overlay half above the bar: 50 % image, 50 % the lowest JET colour
    np.testing.assert_allclose(heat.reshape(-1, 3).mean(0), 0.5 * 90 + 0.5 * blue, atol=2)
