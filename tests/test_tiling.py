"""edgead.runtimes.tiling: cutting, blend weights, stitching and the stitched score, with hand-checked numbers;
and ``Runner.predict_frames`` on a tiny 56 px export: a 300x250 frame in, a 300x250 map out, the same across
torch, ONNX Runtime and OpenVINO (libedgead's twin is checked in tests/test_c_api.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgead.errors import InputError
from edgead.imageio import prepare
from edgead.runtimes.tiling import (
    axis_weights,
    cut,
    frame_top_k,
    stitch,
    stitch_frames,
    tile_grid,
    tile_origins,
    top_k_mean,
)
from edgead.spec import TilePlan

PLAN = TilePlan((56, 56), 14)  # the plan of conftest.tiled_export
ODD_SIZES = [(56, 56), (57, 101), (300, 250), (61, 199), (113, 57)]


def test_origins_step_by_tile_minus_overlap_and_end_on_the_edge() -> None:
    assert tile_origins(300, 56, 14) == (0, 42, 84, 126, 168, 210, 244)
    assert tile_origins(250, 56, 14) == (0, 42, 84, 126, 168, 194)
    assert tile_origins(56, 56, 14) == (0,)
    assert tile_origins(57, 56, 0) == (0, 1)
    assert tile_origins(112, 56, 0) == (0, 56)


@pytest.mark.parametrize("size", ODD_SIZES)
def test_tiles_cover_every_pixel_and_weights_sum_to_one(size: tuple[int, int]) -> None:
    grid = tile_grid(size, PLAN)
    covered = np.zeros(size, np.int32)
    total = np.zeros(size, np.float64)
    for i, y in enumerate(grid.ys):
        for j, x in enumerate(grid.xs):
            covered[y : y + 56, x : x + 56] += 1
            total[y : y + 56, x : x + 56] += grid.wy[i][:, None] * grid.wx[j][None, :]
    assert covered.min() >= 1
    assert grid.ys[-1] + 56 == size[0] and grid.xs[-1] + 56 == size[1]
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)
    assert (grid.wy > 0).all() and (grid.wx > 0).all()


def test_linear_cross_fade_by_hand() -> None:
    # 100 px, tiles of 56 at 0 and 44: 12 shared pixels (44..55); the later tile weighs (i + 0.5) / 12 there.
    w = axis_weights((0, 44), 56, 100)
    np.testing.assert_allclose(w[1][:12], (np.arange(12) + 0.5) / 12, atol=1e-15)
    np.testing.assert_allclose(w[0][44:], 1 - (np.arange(12) + 0.5) / 12, atol=1e-15)
    assert (w[0][:44] == 1).all() and (w[1][12:] == 1).all()
    # tile maps 0 and 1 stitch to a ramp: 0 before the shared span, 1/24 at its first pixel, 23/24 at its last
    grid = tile_grid((56, 100), TilePlan((56, 56), 12))
    out = stitch(np.stack([np.zeros((56, 56)), np.ones((56, 56))]).astype(np.float32), grid)
    assert out.shape == (56, 100) and out.dtype == np.float32
    assert out[10, 43] == 0.0 and out[10, 56] == 1.0
    assert out[10, 44] == pytest.approx(1 / 24, abs=1e-7)
    assert out[10, 55] == pytest.approx(23 / 24, abs=1e-7)


@pytest.mark.parametrize("size", ODD_SIZES)
def test_constant_tiles_stitch_to_the_constant(size: tuple[int, int]) -> None:
    grid = tile_grid(size, PLAN)
    out = stitch(np.full((len(grid), 56, 56), 0.37, np.float32), grid)
    np.testing.assert_allclose(out, np.float32(0.37), rtol=0, atol=1e-7)


def test_cut_takes_the_frame_pixels() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 300, 250, 3), dtype=np.uint8)
    grid = tile_grid((300, 250), PLAN)
    tiles = cut(frames, grid)
    assert len(grid) == 7 * 6 and tiles.shape == (2 * 42, 56, 56, 3)
    y, x = grid.origins()[13]
    np.testing.assert_array_equal(tiles[42 + 13], frames[1, y : y + 56, x : x + 56])
    # stitching the frame's own pixels back (as maps) gives the frame: the blend is convex
    red = tiles[:42, :, :, 0].astype(np.float32)
    np.testing.assert_allclose(stitch(red, grid), frames[0, :, :, 0], atol=1e-4)


def test_score_is_the_top_k_mean_of_the_stitched_map() -> None:
    assert frame_top_k((300, 250), 0.001) == 75
    assert frame_top_k((56, 56), 0.001) == 3  # the graph's own k at 56 px
    assert frame_top_k((2048, 2448), 0.001) == 3840  # 5013 clipped to TensorRT's TopK limit
    assert frame_top_k((10, 10), 0.001) == 1
    rng = np.random.default_rng(3)
    grid = tile_grid((300, 250), PLAN)
    tile_maps = rng.random((2 * len(grid), 56, 56), dtype=np.float32)
    scores, maps = stitch_frames(tile_maps, grid, 0.001)
    assert maps.shape == (2, 300, 250)
    for s, m in zip(scores, maps, strict=True):
        assert s == pytest.approx(float(np.sort(m.ravel())[-75:].astype(np.float64).mean()), abs=1e-7)
    assert top_k_mean(np.array([1.0, 5.0, 3.0, 4.0]), 2) == 4.5
    assert np.isnan(top_k_mean(np.array([1.0, np.nan, 3.0]), 1))


def test_frames_smaller_than_a_tile_are_refused() -> None:
    with pytest.raises(InputError, match="at least one tile"):
        tile_grid((55, 300), PLAN)


# -- through the runners --------------------------------------------------------------------------------------
def test_predict_frames_same_map_on_every_engine(tiled_export, defect_frame) -> None:
    from edgead.runtimes import load
    from edgead.runtimes.loader import available_engines

    ckpt, export = tiled_export
    frame, (cy, cx) = defect_frame
    torch_runner = load(ckpt)
    assert torch_runner.tiling == PLAN  # fit wrote the plan into the checkpoint's spec
    ref = torch_runner.predict_frames(frame)
    assert ref.maps.shape == (1, 300, 250)
    peak = np.unravel_index(int(np.argmax(ref.maps[0])), ref.maps[0].shape)
    assert abs(peak[0] - cy) <= 6 and abs(peak[1] - cx) <= 6, peak
    assert ref.labels is not None and ref.labels[0]  # above the threshold fit set from stitched hold-out scores
    torch_runner.tiling = None  # the full-frame path on the same runner: prepare, graph score, map_to_frame
    full = torch_runner.predict_frames(frame)
    assert full.maps.shape == (1, 300, 250)
    assert full.scores[0] == pytest.approx(float(torch_runner.predict(prepare(frame, torch_runner.spec)).scores[0]))
    k = frame_top_k((300, 250), torch_runner.spec.post.score_fraction)
    assert ref.scores[0] == pytest.approx(np.sort(ref.maps[0].ravel())[-k:].mean(), rel=1e-6)
    engines = [e for e in ("onnxruntime", "openvino") if e in available_engines()]
    assert engines
    for engine in engines:
        with load(export, engine) as runner:
            assert runner.tiling == PLAN  # the plan travels with the artifact
            p = runner.predict_frames([frame, frame])
        assert p.maps.shape == (2, 300, 250)
        np.testing.assert_allclose(p.maps[0], ref.maps[0], atol=1e-4, err_msg=engine)
        np.testing.assert_allclose(p.maps[1], ref.maps[0], atol=1e-4, err_msg=engine)
        np.testing.assert_allclose(p.scores, ref.scores[0], atol=1e-4, err_msg=engine)


def test_predict_frames_labels_and_one_size_per_call(tiled_export, defect_frame) -> None:
    from edgead.runtimes import load

    _, export = tiled_export
    with load(export, "onnxruntime") as runner:
        runner.spec = replace(runner.spec, threshold=1e9)
        frame, _ = defect_frame
        p = runner.predict_frames(frame)
        assert p.labels is not None and not p.labels[0]
        with pytest.raises(InputError, match="one size"):
            runner.predict_frames([frame, frame[:100]])
