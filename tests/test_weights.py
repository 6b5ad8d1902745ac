import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from edgead.errors import ArtifactError, InputError
from edgead.models.backbone import create_vit
from edgead.models.weights import load_backbone_weights


def _dinov2_layout(vit) -> dict[str, torch.Tensor]:
    """The original DINOv2 key layout, written from its documented structure: class position inside
    pos_embed (1 + 37*37 tokens at 518 px), registers as register_tokens, an unused mask_token."""
    sd = {k: v.clone() for k, v in vit.state_dict().items()}
    grid = vit.patch_embed.grid_size
    patch_pos = sd.pop("pos_embed")  # (1, N, C): patches only (no_embed_class)
    cls_pos = torch.randn(1, 1, patch_pos.shape[-1]) * 0.02
    sd["pos_embed"] = torch.cat([cls_pos, patch_pos], 1)
    sd["cls_token"] = sd["cls_token"] - cls_pos  # so that folding it back gives the same model
    sd["register_tokens"] = sd.pop("reg_token")
    sd["mask_token"] = torch.zeros(1, patch_pos.shape[-1])
    assert grid == (2, 2)
    return sd


def test_timm_layout_round_trip(tmp_path):
    torch.manual_seed(0)
    src = create_vit("vit_tiny_test_patch14", "layernorm", (28, 28))
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = create_vit("vit_tiny_test_patch14", "layernorm", (28, 28))
    load_backbone_weights(dst, tmp_path / "w.safetensors")
    x = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(dst(x), src(x))


def test_original_dinov2_layout_with_registers(tmp_path):
    torch.manual_seed(0)
    src = create_vit("vit_tiny_test_patch14_reg4", "layernorm", (28, 28))
    torch.save({"model": _dinov2_layout(src)}, tmp_path / "dinov2.pth")
    dst = create_vit("vit_tiny_test_patch14_reg4", "layernorm", (28, 28))
    load_backbone_weights(dst, tmp_path / "dinov2.pth")
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(dst(x), src(x), atol=1e-5, rtol=1e-5)


def _pil_bicubic(grid: np.ndarray, side: int) -> np.ndarray:
    """Resample an (h, w, C) grid to (side, side, C) channel by channel with Pillow's bicubic filter: an
    independent implementation of the antialiased bicubic resampling the weight loader relies on."""
    return np.stack([np.asarray(Image.fromarray(grid[..., c], mode="F").resize((side, side), Image.BICUBIC))
                     for c in range(grid.shape[-1])], -1)


@pytest.mark.parametrize("size", [28, 98])  # 4x4 grid down to 2x2, and up to 7x7
def test_layernorm_weights_load_into_dyt_and_pos_embed_resampled(tmp_path, size):
    torch.manual_seed(0)
    src = create_vit("vit_tiny_test_patch14", "layernorm", (56, 56))
    with torch.no_grad():
        src.pos_embed.normal_()  # a position table with structure at every scale
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = create_vit("vit_tiny_test_patch14", "dyt", (size, size))
    load_backbone_weights(dst, tmp_path / "w.safetensors")
    torch.testing.assert_close(dst.blocks[0].norm1.weight, src.blocks[0].norm1.weight)
    side = size // 14
    pos, got = src.pos_embed[0].detach().numpy(), dst.pos_embed[0].detach().numpy()
    assert got.shape == (1 + side * side, 32)
    np.testing.assert_array_equal(got[0], pos[0])  # the class token's position is kept as it is
    expected = _pil_bicubic(pos[1:].reshape(4, 4, 32), side)
    np.testing.assert_allclose(got[1:].reshape(side, side, 32), expected, rtol=0, atol=1e-5)


def test_other_architecture_names_the_tensor(tmp_path):
    other = create_vit("vit_tiny_test_patch16", "layernorm", (32, 32))
    save_file(other.state_dict(), str(tmp_path / "w.safetensors"))
    dst = create_vit("vit_tiny_test_patch14", "layernorm", (28, 28))
    with pytest.raises(ArtifactError, match=r"tensor 'patch_embed.proj.weight' has shape \(32, 3, 16, 16\), "
                                            r"the tiny backbone expects \(32, 3, 14, 14\)"):
        load_backbone_weights(dst, tmp_path / "w.safetensors", "tiny")


def test_missing_and_corrupt_files(tmp_path):
    dst = create_vit("vit_tiny_test_patch14", "layernorm", (28, 28))
    with pytest.raises(InputError, match="expected a weights file, found nothing"):
        load_backbone_weights(dst, tmp_path / "none.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ArtifactError, match="could not read"):
        load_backbone_weights(dst, tmp_path / "bad.safetensors")
    save_file({"blocks.0.norm1.weight": torch.ones(32)}, str(tmp_path / "part.safetensors"))
    with pytest.raises(ArtifactError, match=r"does not fit the backbone backbone: missing \d+ tensors"):
        load_backbone_weights(dst, tmp_path / "part.safetensors")


def test_backbone_weights_bomb_refused_before_anything_is_inflated(tmp_path, monkeypatch):
    """``fit --weights`` and the hierarchical backbones read through ``read_state_dict``: a 64 MB tensor deflated
    into a small .pth is refused from the zip directory alone, before torch inflates it (issue 25 item 9)."""
    import zipfile

    torch.save({"w": torch.zeros(16 << 20)}, tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "plain.pth") as zin, \
            zipfile.ZipFile(tmp_path / "bomb.pth", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    size = (tmp_path / "bomb.pth").stat().st_size
    assert size < 200_000

    def never(*args, **kwargs):
        raise AssertionError("the weights file was inflated")

    monkeypatch.setattr(torch, "load", never)
    vit = create_vit("vit_tiny_test_patch14", "layernorm", (28, 28))
    with pytest.raises(ArtifactError, match=rf"^bomb\.pth: expected a checkpoint stored as torch\.save writes it "
                                            rf"\(uncompressed\), found {size} bytes that inflate to \d+; nothing"):
        load_backbone_weights(vit, tmp_path / "bomb.pth")


def test_backbone_weights_over_the_size_cap_are_refused(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = create_vit("vit_tiny_test_patch14", "layernorm", (28, 28))
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    size = (tmp_path / "w.safetensors").stat().st_size
    monkeypatch.setenv("EDGEAD_IMPORT_MAX_BYTES", str(size - 1))
    vit = create_vit("vit_tiny_test_patch14", "layernorm", (28, 28))
    with pytest.raises(ArtifactError, match=rf"^w\.safetensors: expected at most {size - 1} bytes once decompressed, "
                                            rf"found {size} bytes; nothing was loaded"):
        load_backbone_weights(vit, tmp_path / "w.safetensors")
    monkeypatch.setenv("EDGEAD_IMPORT_MAX_BYTES", str(size))
    load_backbone_weights(vit, tmp_path / "w.safetensors")
    for k, v in src.state_dict().items():
        assert torch.equal(vit.state_dict()[k], v), k
