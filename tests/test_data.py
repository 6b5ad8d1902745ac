"""Tests for edgead.data: finding training images, pairing test images with masks, hold-out splits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead import data
from edgead.errors import InputError
from edgead.spec import DetectorSpec


def _png(path: Path, value: int = 128, size: tuple[int, int] = (20, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(size, value, np.uint8))
    return path


def _category(root: Path) -> Path:
    for i in range(3):
        _png(root / "train" / "good" / f"{i:03d}.png")
    _png(root / "test" / "good" / "000.png")
    _png(root / "test" / "good" / "001.png")
    _png(root / "test" / "scratch" / "000.png")
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 5:15] = 255
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    cv2.imwrite(str(root / "ground_truth" / "scratch" / "000_mask.png"), mask)
    return root


def test_train_images_from_mvtec_layout(tmp_path: Path) -> None:
    root = _category(tmp_path / "cat")
    found = data.find_train_images(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "train/good/000.png", "train/good/001.png", "train/good/002.png"
    ]


def test_train_images_from_plain_folder(tmp_path: Path) -> None:
    _png(tmp_path / "b.png")
    _png(tmp_path / "a.bmp")
    (tmp_path / "readme.txt").write_text("x")
    assert [p.name for p in data.find_train_images(str(tmp_path))] == ["a.bmp", "b.png"]


def test_mvtec_without_train_good_is_named(tmp_path: Path) -> None:
    _png(tmp_path / "test" / "good" / "000.png")
    with pytest.raises(InputError, match=r"MVTec category with train/good/.*found no train/good in"):
        data.find_train_images(tmp_path)


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="expected image files .* found none"):
        data.find_train_images(tmp_path)
    with pytest.raises(InputError, match="found no folder at .*missing"):
        data.find_train_images(tmp_path / "missing")
    _png(tmp_path / "x" / "train" / "good" / "a.png").unlink()
    with pytest.raises(InputError, match="found none"):
        data.find_train_images(tmp_path / "x")


def test_test_items_labels_and_masks(tmp_path: Path) -> None:
    root = _category(tmp_path)
    items = data.test_items(root)
    assert [(i.path.name, i.label, i.defect) for i in items] == [
        ("000.png", 0, "good"), ("001.png", 0, "good"), ("000.png", 1, "scratch")
    ]
    assert items[0].mask is None
    assert items[2].mask == root / "ground_truth" / "scratch" / "000_mask.png"


def test_defect_without_mask_is_named(tmp_path: Path) -> None:
    root = _category(tmp_path)
    _png(root / "test" / "crack" / "007.png")
    with pytest.raises(InputError, match=r"mask for defect image .*crack.*007\.png at .*007_mask\.png"):
        data.test_items(root)


def test_no_test_folder(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "good" / "0.png")
    with pytest.raises(InputError, match="found no test/ in"):
        data.test_items(tmp_path)


def test_load_masks_follow_prepare(tmp_path: Path) -> None:
    root = _category(tmp_path)
    items = data.test_items(root)
    spec = DetectorSpec(family="fbft", backbone="t", norm="layernorm", layers=(0,), input_size=(10, 10))
    masks = data.load_masks(items, spec)
    assert masks.shape == (3, 10, 10) and masks.dtype == np.uint8
    assert masks[:2].sum() == 0
    expected = np.zeros((10, 10), np.uint8)
    expected[3:5, 3:8] = 1  # nearest samples source pixel 2*i: rows 5:10 -> 3:5, cols 5:15 -> 3:8
    np.testing.assert_array_equal(masks[2], expected)


def test_read_masks_keep_their_own_resolution(tmp_path: Path) -> None:
    root = _category(tmp_path)
    _png(root / "test" / "good" / "002.png", size=(30, 50))  # frames of a set may differ in size
    masks = data.read_masks(data.test_items(root))
    assert [m.shape for m in masks] == [(20, 20), (20, 20), (30, 50), (20, 20)]
    assert [int(m.sum()) for m in masks] == [0, 0, 0, 50] and masks[3].dtype == np.uint8
    assert masks[3][5:10, 5:15].all()
    cv2.imwrite(str(root / "ground_truth" / "scratch" / "000_mask.png"), np.zeros((20, 21), np.uint8))
    with pytest.raises(InputError, match="image's size 20x20, found 20x21"):
        data.read_masks(data.test_items(root))


def test_corrupt_mask_is_an_input_error(tmp_path: Path) -> None:
    root = _category(tmp_path)
    (root / "ground_truth" / "scratch" / "000_mask.png").write_bytes(b"garbage")
    spec = DetectorSpec(family="fbft", backbone="t", norm="layernorm", layers=(0,), input_size=(10, 10))
    with pytest.raises(InputError, match="corrupt file: .*000_mask.png"):
        data.load_masks(data.test_items(root), spec)


def test_split_holdout_is_deterministic_and_disjoint() -> None:
    paths = [Path(f"{i:02d}.png") for i in range(20)]
    train, hold = data.split_holdout(paths, fraction=0.2, seed=3)
    assert len(train) == 16 and len(hold) == 4
    assert sorted(train + hold) == paths and not set(train) & set(hold)
    assert train == sorted(train) and hold == sorted(hold)
    assert data.split_holdout(paths, fraction=0.2, seed=3) == (train, hold)
    assert data.split_holdout(paths, fraction=0.2, seed=4) != (train, hold)


def test_split_holdout_minimum_and_limits() -> None:
    paths = [Path(f"{i}.png") for i in range(5)]
    train, hold = data.split_holdout(paths, fraction=0.1, min_holdout=2)
    assert len(hold) == 2 and len(train) == 3
    with pytest.raises(InputError, match="more than 2 images .* found 2"):
        data.split_holdout(paths[:2])
    with pytest.raises(InputError, match=r"fraction in \[0, 1\)"):
        data.split_holdout(paths, fraction=1.0)
