"""bench.textures: an MVTec-layout set of real texture photographs (scikit-image's wheel) with painted defects."""

import numpy as np
import pytest

from edgead import data
from edgead.errors import InputError
from edgead.imageio import list_images, read_image
from edgead.spec import DetectorSpec
from edgead.synth import paint_defect


def test_real_texture_set_layout_and_masks(tmp_path):
    from edgead.bench.textures import make_textures

    make_textures(tmp_path, photos=("grass",), size=64, tile=96, n_train=3, n_test_good=2, n_test_defect=2)
    cat = tmp_path / "grass"
    items = data.test_items(cat)
    assert len(list_images(cat / "train" / "good")) == 3 and len(items) == 2 + 4 * 2
    spec = DetectorSpec(family="fbft", backbone="vit_tiny_test_patch14", norm="layernorm", layers=(7, 11),
                        input_size=64)
    masks = data.load_masks(items, spec)
    labels = np.array([it.label for it in items])
    assert (masks[labels == 1].reshape(8, -1).sum(1) >= 0.001 * 64 * 64).all() and masks[labels == 0].sum() == 0
    train = [read_image(p) for p in list_images(cat / "train" / "good")]
    good = [read_image(it.path) for it in items if it.label == 0]
    assert not any(np.array_equal(a, b) for a in train for b in good)  # disjoint bands of the photograph
    make_textures(tmp_path / "v", photos=("grass",), size=64, tile=96, n_train=1, n_test_good=2, n_test_defect=1,
                  n_val_good=3, n_val_defect=1)
    val = data.test_items(tmp_path / "v" / "grass_val")
    test = data.test_items(tmp_path / "v" / "grass")
    assert len(val) == 3 + 4 and len(test) == 2 + 4 and not (tmp_path / "v" / "grass_val" / "train").exists()
    assert not any(np.array_equal(read_image(a.path), read_image(b.path)) for a in val for b in test)
    with pytest.raises(InputError, match="expected a texture photograph in brick, grass, gravel, found 'sky'"):
        make_textures(tmp_path, photos=("sky",))


def test_paint_defect_changes_exactly_the_mask():
    rgb = np.full((64, 64, 3), 120, np.uint8)
    for i, defect in enumerate(("scratch", "spot", "crack", "missing")):
        out, mask = paint_defect(rgb, defect, np.random.default_rng(i))
        changed = (out != rgb).any(axis=2)
        assert mask.sum() >= 5 and np.array_equal(changed, mask), defect
