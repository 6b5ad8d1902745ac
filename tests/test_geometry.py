"""Tests for edgead.geometry: anomaly maps brought back onto their frame invert ``prepare``'s resize and crop."""

from __future__ import annotations

import numpy as np
import pytest

from edgead.errors import InputError
from edgead.geometry import map_to_frame, seen_region
from edgead.imageio import prepare
from edgead.spec import DetectorSpec


def _spec(input_size: tuple[int, int] = (56, 56), resize: tuple[int, int] | None = None) -> DetectorSpec:
    return DetectorSpec(family="fbft", backbone="t", norm="layernorm", layers=(0,), input_size=input_size,
                        resize=resize)


def _ramp(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return 0.5 * x + 0.25 * y  # linear: bilinear resizing reproduces it at pixel centres


def test_plain_resize_round_trip_on_a_linear_map() -> None:
    spec = _spec()
    frame = _ramp(200, 300)
    back = map_to_frame(prepare(frame, spec), (200, 300), spec)
    assert back.shape == (200, 300) and back.dtype == np.float32
    # away from the borders (where bilinear clamps), the ramp comes back to within area-averaging error
    np.testing.assert_allclose(back[10:-10, 10:-10], frame[10:-10, 10:-10], atol=0.3)


def test_resize_and_crop_places_the_map_on_the_crop_and_replicates_its_edges() -> None:
    spec = _spec((56, 56), resize=(80, 80))
    crop = seen_region((200, 300), spec)
    # resized 80x80, crop offset 12: rows 12..68 of 80 -> 30..170 of 200, columns 45..255 of 300
    assert (crop.top, crop.left, crop.bottom, crop.right) == (30.0, 45.0, 170.0, 255.0)
    frame = _ramp(200, 300)
    back = map_to_frame(prepare(frame, spec), (200, 300), spec)
    inside = (slice(40, 160), slice(55, 245))
    np.testing.assert_allclose(back[inside], frame[inside], atol=0.6)
    # outside the crop each pixel takes the nearest seen score: constant across the border, along each axis
    np.testing.assert_allclose(back[:25, 100], back[25, 100], atol=1e-5)
    np.testing.assert_allclose(back[150, :40], back[150, 40], atol=1e-5)
    assert back[0, 100] == pytest.approx(frame[30, 100], abs=0.6)


def test_a_hot_patch_lands_where_it_was_in_the_frame() -> None:
    spec = _spec((56, 56), resize=(64, 96))
    frame = np.zeros((400, 600), np.float32)
    frame[180:196, 290:310] = 1.0
    back = map_to_frame(prepare(frame, spec), (400, 600), spec)
    y, x = np.unravel_index(int(np.argmax(back)), back.shape)
    assert 180 <= y < 196 and 290 <= x < 310


def test_wrong_map_size_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"detector's map size \(56, 56\), found \(28, 28\)"):
        map_to_frame(np.zeros((28, 28)), (100, 100), _spec())
