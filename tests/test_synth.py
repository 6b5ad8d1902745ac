"""Tests for edgead.synth: MVTec layout, masks that match the painted defects exactly, determinism."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead import data, synth
from edgead.errors import InputError
from edgead.fsutil import OUTPUT_MARK
from edgead.imageio import read_image

SIZE = 96


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return synth.make_synthetic(out, size=SIZE, n_train=4, n_test_good=2, n_test_defect=3, seed=5)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != OUTPUT_MARK)  # edgead's mark on its outputs


def test_layout_is_mvtec(synthetic: Path) -> None:
    assert _names(synthetic) == ["object", "texture"]
    for category in synth.CATEGORIES:
        root = synthetic / category
        assert _names(root) == ["ground_truth", "test", "train"]
        assert _names(root / "train" / "good") == ["000.png", "001.png", "002.png", "003.png"]
        assert _names(root / "test") == sorted(("good",) + synth.DEFECTS)
        assert _names(root / "test" / "good") == ["000.png", "001.png"]
        assert _names(root / "ground_truth") == sorted(synth.DEFECTS)
        for defect in synth.DEFECTS:
            assert _names(root / "ground_truth" / defect) == ["000_mask.png", "001_mask.png", "002_mask.png"]
        items = data.test_items(root)
        assert len(items) == 2 + 3 * len(synth.DEFECTS) and sum(i.label for i in items) == 12
        assert len(data.find_train_images(root)) == 4


def test_images_and_masks_shapes_and_values(synthetic: Path) -> None:
    for item in data.test_items(synthetic / "object") + data.test_items(synthetic / "texture"):
        image = read_image(item.path)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        if item.mask is None:
            continue
        mask = cv2.imread(str(item.mask), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (SIZE, SIZE)
        assert set(np.unique(mask).tolist()) == {0, 255}
        assert (mask > 0).sum() >= synth.MIN_AREA * SIZE * SIZE


@pytest.mark.parametrize("category", synth.CATEGORIES)
@pytest.mark.parametrize("defect", synth.DEFECTS)
def test_mask_is_exactly_the_changed_pixels(category: str, defect: str) -> None:
    for index in range(4):
        clean = synth.render_normal(category, 128, np.random.default_rng([index, 1]))
        gray, mask = synth.add_defect(clean, defect, np.random.default_rng([index, 2]))
        change = np.abs(gray - clean.gray)
        assert mask.dtype == bool and mask.sum() >= synth.MIN_AREA * 128 * 128
        assert np.all(change[~mask] == 0)
        assert change[mask].min() >= synth.MIN_CONTRAST - 1e-3
        assert np.all(mask <= clean.footprint)  # object defects stay on the object


def test_written_defects_match_a_clean_render(synthetic: Path) -> None:
    """Re-render the clean image behind each written defect image: differences lie exactly under the mask."""
    for category in synth.CATEGORIES:
        for defect in synth.DEFECTS:
            for i in range(3):
                clean = synth.render_normal(category, SIZE, synth._rng(5, category, defect, i), seed=5)
                clean_rgb = synth.to_rgb(clean.gray, category).astype(int)
                image = read_image(synthetic / category / "test" / defect / f"{i:03d}.png").astype(int)
                mask_file = synthetic / category / "ground_truth" / defect / f"{i:03d}_mask.png"
                mask = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE) > 0
                change = np.abs(image - clean_rgb).max(axis=2)
                assert np.all(change[~mask] == 0)
                assert change[mask].min() >= 0.75 * synth.MIN_CONTRAST


def test_normal_images_vary_but_share_statistics(synthetic: Path) -> None:
    for category in synth.CATEGORIES:
        train = [read_image(p).astype(float) for p in data.find_train_images(synthetic / category)]
        means = [img.mean() for img in train]
        assert max(means) - min(means) < 8.0
        assert np.abs(train[0] - train[1]).mean() > 2.0
        goods = [item for item in data.test_items(synthetic / category) if item.label == 0]
        assert len(goods) == 2
        for test_good in goods:
            assert min(np.abs(read_image(test_good.path) - t).mean() for t in train) > 0.5


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = dict(categories=("object",), size=64, n_train=2, n_test_good=1, n_test_defect=1)
    a = synth.make_synthetic(tmp_path / "a", seed=1, **kwargs)
    b = synth.make_synthetic(tmp_path / "b", seed=1, **kwargs)
    c = synth.make_synthetic(tmp_path / "c", seed=2, **kwargs)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 + 1 + 2 * len(synth.DEFECTS)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_rewrite_replaces_category_atomically(tmp_path: Path) -> None:
    kwargs = dict(categories=("texture",), size=48, n_test_good=1, n_test_defect=1)
    synth.make_synthetic(tmp_path, n_train=3, **kwargs)
    synth.make_synthetic(tmp_path, n_train=1, **kwargs)
    assert _names(tmp_path) == ["texture"]  # no temporary folders left beside it
    assert _names(tmp_path / "texture" / "train" / "good") == ["000.png"]


def test_unknown_names_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="categories from texture, object, found wood"):
        synth.make_synthetic(tmp_path, categories=("wood",))
    with pytest.raises(InputError, match="defect type in scratch, spot, crack, missing, found 'dent'"):
        clean = synth.render_normal("object", 64, np.random.default_rng(0))
        synth.add_defect(clean, "dent", np.random.default_rng(0))
    with pytest.raises(InputError, match="at least 32 pixels"):
        synth.make_synthetic(tmp_path, size=16)


# -- camera-shaped frames with tiny to large defects (issue 27 item 3) -------------------------------------------


@pytest.fixture(scope="module")
def tiny_defects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    return synth.make_synthetic(out, frame=(400, 600), defect_px=(3, 300), n_train=1, n_test_good=1,
                                n_test_defect=3, seed=2)


def _regions(mask_file: Path) -> list:
    from skimage.measure import label, regionprops

    return regionprops(label(cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE) > 0, connectivity=2))


def test_defects_span_the_requested_diameters(tiny_defects: Path) -> None:
    from edgead.metrics import defect_areas

    for category in synth.CATEGORIES:
        items = [it for it in data.test_items(tiny_defects / category) if it.mask is not None]
        assert len(items) == 3 * len(synth.DEFECTS)
        regions = [_regions(it.mask) for it in items]
        assert all(len(r) == 1 for r in regions)  # one defect, one connected region (8-connectivity)
        diameters = sorted(r[0].feret_diameter_max for r in regions)  # scikit-image's largest extent
        areas = np.sort(defect_areas([cv2.imread(str(it.mask), cv2.IMREAD_GRAYSCALE) for it in items]))
        assert 3.0 <= diameters[0] <= 3.7 and areas[0] == 3  # the smallest: a 3 px scratch (3.6 if diagonal)
        if category == "texture":  # room everywhere: the largest is the full 300 px
            assert diameters[-1] == pytest.approx(300.0, abs=6.0) and areas[-1] > 20_000
        else:  # a 300 px chunk does not fit the plate's rim in a 600 px render: clipped to the plate
            assert 200.0 < diameters[-1] <= 306.0
        # log-spaced targets 3 * 100 ** (k / 11): every factor-of-~10 band of sizes holds defects
        assert sum(d < 10 for d in diameters) >= 3 and sum(d > 100 for d in diameters) >= 3
        assert np.quantile(areas, 0.25) < 60 and np.quantile(areas, 0.75) > 500  # Q1: specks; above Q3: gashes


def test_camera_frames_keep_their_shape_and_exact_masks(tiny_defects: Path) -> None:
    for category in synth.CATEGORIES:
        root = tiny_defects / category
        assert read_image(root / "train" / "good" / "000.png").shape == (400, 600, 3)
        for defect in synth.DEFECTS:
            for i in range(3):
                # the clean render behind each defect image: a 600 px square, cut to its centre 400 rows
                clean = synth.render_normal(category, 600, synth._rng(2, category, defect, i), seed=2)
                clean_rgb = synth.to_rgb(clean.gray[100:500], category).astype(int)
                image = read_image(root / "test" / defect / f"{i:03d}.png").astype(int)
                mask = cv2.imread(str(root / "ground_truth" / defect / f"{i:03d}_mask.png"), cv2.IMREAD_GRAYSCALE)
                assert image.shape == (400, 600, 3) and mask.shape == (400, 600)
                change = np.abs(image - clean_rgb).max(axis=2)
                assert np.all(change[mask == 0] == 0)
                assert change[mask > 0].min() >= 0.75 * synth.MIN_CONTRAST


def test_default_set_is_unchanged_by_the_frame_options(tmp_path: Path) -> None:
    kwargs = dict(categories=("object",), n_train=1, n_test_good=1, n_test_defect=1, seed=3)
    a = synth.make_synthetic(tmp_path / "a", size=64, **kwargs)
    b = synth.make_synthetic(tmp_path / "b", frame=(64, 64), **kwargs)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_defect_diameters_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"3/4 of the shorter image side \(48 px\), found 3-60"):
        synth.make_synthetic(tmp_path, frame=(64, 96), defect_px=(3, 60))
    with pytest.raises(InputError, match="found 0-5"):
        synth.make_synthetic(tmp_path, size=64, defect_px=(0, 5))
    with pytest.raises(InputError, match="at least 32 pixels, found 20x64"):
        synth.make_synthetic(tmp_path, frame=(20, 64))


@pytest.mark.parametrize("defect", synth.DEFECTS)
def test_paint_defect_of_a_given_diameter_on_any_frame(defect: str) -> None:
    from skimage.measure import label, regionprops

    rng = np.random.default_rng(3)
    rgb = rng.integers(60, 200, (120, 200, 3)).astype(np.uint8)  # not square: fine with a diameter
    for diameter in (3, 9, 40):
        out, mask = synth.paint_defect(rgb, defect, np.random.default_rng(diameter), diameter=diameter)
        changed = np.abs(out.astype(int) - rgb).max(axis=2) > 0
        np.testing.assert_array_equal(changed, mask)  # the mask is exactly the changed pixels
        regions = regionprops(label(mask, connectivity=2))
        assert len(regions) == 1 and diameter - 1 <= regions[0].feret_diameter_max <= diameter * 1.25 + 1
    with pytest.raises(InputError, match=r"square RGB image \(S, S, 3\), or any \(H, W, 3\) with a diameter"):
        synth.paint_defect(rgb, defect, rng)
