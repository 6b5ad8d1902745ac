"""The MAE family: fixed position embedding, block masking in training only, the SSIM map inside the exported
graph, parity across engines, two-phase fit and the bad inputs that must fail before anything is written."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import edgead.runtimes as rt
from edgead.bench.norms import perturb_constant_params
from edgead.errors import EdgeadError
from edgead.models import build_detector, detector_spec
from edgead.models.mae import block_mask, check_geometry, sincos_pos_embed
from edgead.runtimes.compare import check_batch, compare

TINY = "mae_tiny_test_patch16"
ATOL = 1e-4


def tiny(norm="layernorm", size=64, seed=0, **head):
    torch.manual_seed(seed)
    return build_detector(detector_spec("mae", TINY, norm, input_size=size, head=head))


def images(n, size=64, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


# -- masking ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("grid", "ratio", "block"), [((16, 16), 0.75, 4), ((5, 7), 0.4, 2), ((4, 4), 0.75, 2)])
def test_block_mask_covers_the_ratio_exactly(grid, ratio, block):
    masks = block_mask(6, grid, ratio, block, torch.Generator().manual_seed(0))
    assert masks.shape == (6, grid[0] * grid[1]) and masks.dtype == torch.bool
    assert masks.sum(1).tolist() == [round(ratio * grid[0] * grid[1])] * 6
    assert len({tuple(m.tolist()) for m in masks}) > 1  # a fresh draw per image


def test_block_mask_masks_whole_blocks():
    # 16x16 grid, 4x4 blocks, 75 %: exactly 12 of the 16 blocks, each fully masked or fully visible
    m = block_mask(3, (16, 16), 0.75, 4, torch.Generator().manual_seed(1)).reshape(3, 4, 4, 4, 4)
    per_block = m.permute(0, 1, 3, 2, 4).reshape(3, 16, 16).sum(-1)
    assert set(per_block.unique().tolist()) == {0, 16}
    assert (per_block == 16).sum(1).tolist() == [12, 12, 12]


def test_masking_is_off_at_inference():
    det = tiny("dyt")
    x = images(2)
    with torch.no_grad():
        s1, m1 = det(x)
        det.train()  # no dropout and no mask in forward: training mode gives the same map
        s2, m2 = det(x)
        det.eval()
        loss1, loss2 = det.loss(x), det.loss(x)  # the training objective does mask, with fresh blocks each call
    assert torch.equal(m1, m2) and torch.equal(s1, s2)
    assert m1.shape == (2, 64, 64) and s1.shape == (2,)
    assert float(loss1) != float(loss2)


# -- position embedding ----------------------------------------------------------------------------------
def test_sinusoidal_embedding_is_fixed():
    det = tiny()
    names = {n for n, _ in det.named_parameters()}
    assert not any("pos_embed" in n for n in names)
    assert "pos_embed" not in det.state_dict() and "decoder_pos_embed" not in det.state_dict()
    before = det.pos_embed.clone()
    opt = torch.optim.SGD(det.parameters(), lr=1.0)
    det.train()
    det.loss(images(2)).backward()
    opt.step()
    assert torch.equal(det.pos_embed, before)
    # values: row half then column half, sin then cos; patch (r, c) = (1, 2) on a 4x4 grid, width 32
    pe = sincos_pos_embed(32, (4, 4))[0]
    assert pe.shape == (16, 32)
    omega = 1.0 / 10000 ** (np.arange(8) / 8)
    np.testing.assert_allclose(pe[6, :8], np.sin(1 * omega), atol=1e-6)
    np.testing.assert_allclose(pe[6, 8:16], np.cos(1 * omega), atol=1e-6)
    np.testing.assert_allclose(pe[6, 16:24], np.sin(2 * omega), atol=1e-6)
    np.testing.assert_allclose(pe[6, 24:], np.cos(2 * omega), atol=1e-6)


# -- the anomaly map -------------------------------------------------------------------------------------
def test_ssim_map_matches_textbook_ssim_with_opencv_filters():
    """kornia's SSIM map inside the detector equals SSIM written from its definition with OpenCV's Gaussian
    (11 taps, sigma 1.5, reflect-101 borders), so the map is a local SSIM and not a global one."""
    det = tiny(map_mse_weight=0.0, map_ssim_weight=1.0)
    rng = np.random.default_rng(3)
    a = rng.random((1, 3, 64, 64)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    got = det.post.pixel_map(torch.from_numpy(b), torch.from_numpy(a))[0, 0].numpy()

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT_101)

    c1, c2 = 0.01**2, 0.03**2
    ssim = []
    for ch in range(3):
        x, y = a[0, ch].astype(np.float64), b[0, ch].astype(np.float64)
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        ssim.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    np.testing.assert_allclose(got, 1.0 - np.mean(ssim, axis=0), atol=1e-4)
    assert got.std() > 0.01  # local: it varies over the image


# -- engines ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mae_exports(tmp_path_factory):
    from edgead.export import export_onnx
    from edgead.models.checkpoint import save_checkpoint

    out = {}
    for norm in ("layernorm", "dyt"):
        det = perturb_constant_params(tiny(norm, size=32), seed=1)  # as a trained model: no zero biases or unit scales
        root = tmp_path_factory.mktemp(f"mae-{norm}")
        save_checkpoint(det, root / "ckpt")
        export_onnx(det, root / "export", source=root / "ckpt")
        out[norm] = root
    return out


@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_fp32_engines_match_torch(mae_exports, norm):
    import onnx

    from edgead.export.openvino import compile_openvino

    root = mae_exports[norm]
    graph = onnx.load(str(root / "export" / "model.onnx")).graph
    # the SSIM map is in the graph: reflect-padded depthwise convolutions in the postprocessing
    assert sum(n.op_type == "Conv" and n.name.startswith("/post/") for n in graph.node) >= 5
    ref = rt.load(root / "ckpt")
    candidates = {"onnxruntime": rt.load(root / "export"), "openvino": rt.load(compile_openvino(root / "export"))}
    for n in (1, 8):
        batch = check_batch(n, n, (32, 32))
        for d in compare(ref, candidates, batch):
            assert d.max_abs_maps <= ATOL and d.max_abs_scores <= ATOL, d


# -- fit and bad input -----------------------------------------------------------------------------------
def test_two_phase_fit_writes_a_working_checkpoint(tmp_path, tiny_synthetic):
    from edgead.fit import fit
    from edgead.models.checkpoint import load_checkpoint

    seen = []
    r = fit(tiny_synthetic, tmp_path / "ck", "mae", TINY, "dyt", 32, epochs=2, finetune_epochs=1,
            progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert ("pretrain", 2, 2) in seen and ("finetune", 1, 1) in seen
    info = json.loads((tmp_path / "ck" / "fit.json").read_text())
    assert info["pretrain_epochs"] == 2 and info["finetune_epochs"] == 1
    assert np.isfinite(info["pretrain_loss"]) and np.isfinite(info["finetune_loss"])
    # pre-training adds 1 - SSIM (> 0.1 on an untrained reconstruction) to the MSE that fine-tuning keeps alone
    assert info["pretrain_loss"] > info["finetune_loss"] + 0.1
    det = load_checkpoint(tmp_path / "ck")
    assert det.spec.family == "mae" and det.spec.norm == "dyt" and det.spec.threshold == pytest.approx(r.threshold)
    assert r.threshold >= max(r.holdout_scores)
    with torch.no_grad():
        s, _ = det(images(r.holdout_images, size=32))
    assert s.shape == (r.holdout_images,)


def _write_images(folder, n, side):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    return folder


@pytest.mark.parametrize(
    ("kwargs", "n", "side", "message"),
    [
        (dict(size=8), 12, 64, "at least one 16x16 patch, found 8x8"),
        (dict(size=(64, 56)), 12, 64, "multiple of the patch size 16, found 64x56"),
        (dict(size=64, mask_ratio=1.0), 12, 64, "mask ratio must be in (0, 1), found 1.0"),
        (dict(size=64, mask_ratio=0.0), 12, 64, "mask ratio must be in (0, 1), found 0.0"),
        (dict(size=64), 2, 64, "expected more than 2 images to keep 2 for hold-out, found 2"),
        (dict(size=64), 12, 10, "expected training images of at least one 16x16 patch, found 10x10"),
    ],
)
def test_bad_input_fails_before_writing(tmp_path, kwargs, n, side, message):
    from edgead.fit import fit

    data = _write_images(tmp_path / "data", n, side)
    with pytest.raises(EdgeadError) as err:
        fit(data, tmp_path / "ck", "mae", TINY, epochs=1, finetune_epochs=0, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "ck").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_cli_bad_mask_ratio_is_one_line(tmp_path, tiny_synthetic):
    out = subprocess.run([sys.executable, "-m", "edgead.cli.app", "fit", str(tiny_synthetic), "--model", "mae",
                          "--backbone", TINY, "--size", "64", "--mask-ratio", "1.5", "-o", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == "error: mask ratio must be in (0, 1), found 1.5"
    assert not (tmp_path / "o").exists()


def test_grid_needs_a_masked_and_a_visible_patch():
    assert check_geometry((256, 256), 16, 0.75) == (16, 16)
    with pytest.raises(EdgeadError, match="masks 1 of 1 patches"):
        check_geometry((16, 16), 16, 0.75)
