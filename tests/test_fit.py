import json

import numpy as np
import pytest
import torch

from edgead.errors import ArtifactError, InputError
from edgead.fidelity import threshold_rule
from edgead.fit import fit
from edgead.fsutil import OUTPUT_MARK
from edgead.imageio import load_batch
from edgead.models.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def fitted(tiny_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "ckpt"
    return fit(tiny_synthetic, out, "fbft", "vit_tiny_test_patch14", "dyt", 56, epochs=3)


def test_fit_writes_checkpoint_with_spec_and_threshold(fitted):
    spec = json.loads((fitted.checkpoint / "spec.json").read_text())
    assert spec["family"] == "fbft" and spec["norm"] == "dyt" and spec["layers"] == [7, 11]
    assert spec["input_size"] == [56, 56] and spec["version"] == "0.1.0"
    assert spec["threshold"] == pytest.approx(fitted.threshold)
    assert fitted.train_images == 10 and fitted.holdout_images == 2
    scores = np.array(fitted.holdout_scores)
    assert fitted.threshold >= scores.max()
    names = sorted(p.name for p in fitted.checkpoint.iterdir() if p.name != OUTPUT_MARK)
    assert names == ["detector.safetensors", "fit.json", "spec.json"]


def test_reload_gives_the_in_memory_detector_outputs(fitted, tiny_synthetic):
    """The reloaded checkpoint scores the hold-out images as the trained in-memory detector did at fit time."""
    from edgead.data import find_train_images, split_holdout

    det = load_checkpoint(fitted.checkpoint)
    _, hold = split_holdout(find_train_images(tiny_synthetic), 0.2, seed=0)  # fit's own split (same seed)
    with torch.no_grad():
        scores = det(torch.from_numpy(load_batch(hold, det.spec)))[0].numpy()
    np.testing.assert_allclose(scores, fitted.holdout_scores, rtol=0, atol=1e-6)
    assert det.spec.threshold == pytest.approx(fitted.threshold, rel=1e-6)


def test_threshold_rule():
    s = np.array([1.0, 2.0, 3.0])
    assert threshold_rule(s) == pytest.approx(2.0 + 3.0 * np.std(s))


def test_fit_bad_folders_leave_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="found none"):
        fit(tmp_path / "empty", tmp_path / "out", backbone="vit_tiny_test_patch14", size=56)
    (tmp_path / "mvtec" / "test" / "good").mkdir(parents=True)
    with pytest.raises(InputError, match="found no train/good"):
        fit(tmp_path / "mvtec", tmp_path / "out", backbone="vit_tiny_test_patch14", size=56)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_corrupt_training_image_fails_cleanly(tmp_path, tiny_synthetic):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_synthetic / "train" / "good", data)
    (data / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="zz_broken.png"):
        fit(data, tmp_path / "out", backbone="vit_tiny_test_patch14", size=56, epochs=1)
    assert not (tmp_path / "out").exists()


def test_checkpoint_from_newer_version_refused(fitted, tmp_path):
    import shutil

    ck = tmp_path / "newer"
    shutil.copytree(fitted.checkpoint, ck)
    spec = json.loads((ck / "spec.json").read_text())
    spec["version"] = "3.0.0"
    (ck / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match=r"written by edgead 3.0.0 .* this is edgead 0.1.0"):
        load_checkpoint(ck)
