"""Importers: tiny randomly initialised modules in each original key layout, written here from the originals'
documented structure, are run, saved, imported, and compared with the edgead detector (maps and scores <= 1e-5).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgead.errors import ArtifactError, InputError
from edgead.importers import convert_checkpoint, import_checkpoint, sniff
from edgead.models.checkpoint import load_checkpoint

ATOL = 1e-5
DIM, HEADS, DEPTH, PATCH, REG = 32, 2, 12, 14, 4
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# -- reference: DINOv2 with registers (facebookresearch/dinov2 layout and run-time position interpolation) ------
class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RefLayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        return x * self.gamma


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, heads)
        self.ls1 = RefLayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMlp(dim, 4 * dim)
        self.ls2 = RefLayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class RefPatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class RefDinov2(nn.Module):
    """Position table for a ``pos_grid`` x ``pos_grid`` grid, resized at run time by DINOv2's rule."""

    def __init__(self, pos_grid: int = 6) -> None:
        super().__init__()
        self.patch_size = PATCH
        self.num_register_tokens = REG
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + pos_grid * pos_grid, DIM) * 0.5)
        self.register_tokens = nn.Parameter(torch.randn(1, REG, DIM))
        self.mask_token = nn.Parameter(torch.zeros(1, DIM))
        self.patch_embed = RefPatchEmbed(DIM, PATCH)
        self.blocks = nn.ModuleList(RefBlock(DIM, HEADS) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM, eps=1e-6)

    def interpolate_pos_encoding(self, x, w, h):
        n_patch, n = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if n_patch == n and w == h:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        m = int(math.sqrt(n))
        w0, h0 = w // self.patch_size + 0.1, h // self.patch_size + 0.1
        patch_pos = F.interpolate(patch_pos.reshape(1, m, m, -1).permute(0, 3, 1, 2), scale_factor=(w0 / m, h0 / m),
                                  mode="bicubic", antialias=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, -1, x.shape[-1])], dim=1)

    def prepare_tokens(self, x):
        _, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        return torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)

    def get_intermediate_layers(self, x, blocks):
        x, out = self.prepare_tokens(x), []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in blocks:
                out.append(self.norm(x)[:, 1 + REG:])
        return out


# -- reference: Dinomaly ViTill (original and anomalib conventions) --------------------------------------------
class RefLinearAttention2(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        kv = torch.einsum("...sd,...se->...de", k, v)
        z = 1.0 / torch.einsum("...sd,...d->...s", q, k.sum(dim=-2))
        x = torch.einsum("...de,...sd,...s->...se", kv, q, z)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class RefDecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-8)
        self.attn = RefLinearAttention2(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)
        self.mlp = RefMlp(dim, 4 * dim, bias=mlp_bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefViTill(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.encoder = RefDinov2()
        self.bottleneck = nn.ModuleList([RefMlp(DIM, 4 * DIM, bias=bias)])
        self.decoder = nn.ModuleList(RefDecoderBlock(DIM, HEADS, bias) for _ in range(8))
        self.target_layers = list(range(2, 10))
        self.groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
        with torch.no_grad():
            for p in self.parameters():
                if p.ndim == 1 and p.shape[0] == DIM:  # norms and biases: not trivially 1 / 0
                    p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p is not None else 0.0))

    def forward(self, x):
        side = x.shape[-1] // PATCH
        x = self.encoder.prepare_tokens(x)
        en = []
        for i, blk in enumerate(self.encoder.blocks[: self.target_layers[-1] + 1]):
            x = blk(x)
            if i in self.target_layers:
                en.append(x)
        x = self.bottleneck[0](torch.stack(en, dim=1).mean(dim=1))
        de = []
        for blk in self.decoder:
            x = blk(x)
            de.append(x)
        de = de[::-1]

        def fuse(feats, idxs):
            f = torch.stack([feats[i] for i in idxs], dim=1).mean(dim=1)[:, 1 + REG:]
            return f.permute(0, 2, 1).reshape(f.shape[0], -1, side, side)

        return [fuse(en, g) for g in self.groups], [fuse(de, g) for g in self.groups]


def ref_gaussian(ksize: int = 5, sigma: float = 4.0) -> torch.Tensor:
    coords = torch.arange(ksize).repeat(ksize).view(ksize, ksize)
    grid = torch.stack([coords, coords.t()], dim=-1).float()
    mean, var = (ksize - 1) / 2.0, sigma**2.0
    k = (1.0 / (2.0 * math.pi * var)) * torch.exp(-torch.sum((grid - mean) ** 2.0, dim=-1) / (2 * var))
    return (k / k.sum()).view(1, 1, ksize, ksize)


def ref_dinomaly_eval(model: RefViTill, x: torch.Tensor, anomalib: bool):
    """Original evaluation_batch (resize_mask=256, max_ratio=0.01) or anomalib's inference forward."""
    en, de = model(x)
    maps = [F.interpolate((1 - F.cosine_similarity(a, b))[:, None], size=x.shape[-2:], mode="bilinear",
                          align_corners=True) for a, b in zip(en, de, strict=True)]
    crop_map = torch.cat(maps, dim=1).mean(dim=1, keepdim=True)
    m = F.interpolate(crop_map, size=256, mode="bilinear", align_corners=False)
    if anomalib:
        m = F.conv2d(F.pad(m, (2, 2, 2, 2), mode="reflect"), ref_gaussian())
    else:
        m = F.conv2d(m, ref_gaussian(), padding=2)
    flat = m.flatten(1)
    score = torch.sort(flat, dim=1, descending=True)[0][:, : int(flat.shape[1] * 0.01)].mean(dim=1)
    return (crop_map if anomalib else m)[:, 0], score


def images(n: int = 2, size: tuple[int, int] = (56, 56), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *size, 3), generator=g, dtype=torch.uint8)


def to_input(batch: torch.Tensor) -> torch.Tensor:
    return (batch.permute(0, 3, 1, 2).float() / 255.0 - MEAN) / STD


@pytest.fixture(scope="module")
def dinomaly_files(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dinomaly")
    orig, anom = RefViTill(bias=True).eval(), RefViTill(bias=False).eval()
    torch.save(orig.state_dict(), root / "model.pth")
    torch.save({"state_dict": {f"model.{k}": v for k, v in anom.state_dict().items()}, "epoch": 3},
               root / "anomalib.ckpt")
    return root, orig, anom


@pytest.mark.parametrize("anomalib", [False, True])
def test_dinomaly_parity(dinomaly_files, tmp_path, anomalib):
    root, orig, anom = dinomaly_files
    ref = anom if anomalib else orig
    fmt, name = ("anomalib-dinomaly", "anomalib.ckpt") if anomalib else ("dinomaly", "model.pth")
    out = import_checkpoint(root / name, fmt, tmp_path / "ckpt", input_size=56, resize=64)
    det = load_checkpoint(out)
    spec = det.spec
    assert spec.backbone == "vit_tiny_test_patch14_reg4" and spec.resize == (64, 64) and spec.top_k == 655
    assert spec.post.pad == ("reflect" if anomalib else "zeros") and spec.post.resize == (256, 256)
    assert spec.head["bottleneck_bias"] is not anomalib and spec.head["decoder_mlp_bias"] is not anomalib
    batch = images()
    with torch.no_grad():
        ref_map, ref_score = ref_dinomaly_eval(ref, to_input(batch), anomalib)
        scores, maps = det(batch)
        _, blurred = det.post.scored_map(det.head.anomaly_map(det.taps(batch)))
    torch.testing.assert_close(scores, ref_score, atol=ATOL, rtol=0)
    if anomalib:  # anomalib returns the crop-size map before resize and blur: the same map
        torch.testing.assert_close(maps, ref_map, atol=ATOL, rtol=0)
    else:  # the original's 256 px map, exactly, and returned resized to the crop
        torch.testing.assert_close(blurred[:, 0], ref_map, atol=ATOL, rtol=0)
        back = F.interpolate(ref_map[:, None], size=(56, 56), mode="bilinear", align_corners=False)[:, 0]
        torch.testing.assert_close(maps, back, atol=ATOL, rtol=0)
    assert float((scores - ref_score).abs().max()) <= ATOL


def test_dinov2_position_rule_is_not_timms(dinomaly_files):
    """The (grid + 0.1) / M scale factor differs from resampling to a size; the importer must use it."""
    from timm.layers import resample_abs_pos_embed

    from edgead.importers.common import dinov2_pos_embed

    pos = dinomaly_files[1].encoder.pos_embed.detach()
    ours = dinov2_pos_embed(pos, (4, 4))
    timm_way = resample_abs_pos_embed(pos[:, 1:], new_size=[4, 4], old_size=[6, 6], num_prefix_tokens=0)
    assert float((ours - timm_way).abs().max()) > 1e-3


def test_wrong_format_refused_naming_what_was_found(dinomaly_files, tmp_path):
    root, _, _ = dinomaly_files
    with pytest.raises(ArtifactError, match=r"expected an original Dinomaly checkpoint .*, found an anomalib "
                                            r"Dinomaly checkpoint \(bias-free MLPs\); import it with --format "
                                            r"anomalib-dinomaly"):
        import_checkpoint(root / "anomalib.ckpt", "dinomaly", tmp_path / "x", input_size=56, resize=64)
    with pytest.raises(ArtifactError, match=r"expected an anomalib Dinomaly checkpoint .*, found an original"):
        import_checkpoint(root / "model.pth", "anomalib-dinomaly", tmp_path / "x", input_size=56, resize=64)
    with pytest.raises(ArtifactError, match=r"expected an L2BT .* found an original Dinomaly"):
        import_checkpoint(root / "model.pth", "l2bt", tmp_path / "x")
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ArtifactError, match="found a state dict of no known layout"):
        import_checkpoint(tmp_path / "other.pth", "timm", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_missing_and_mismatched_tensors_refused(dinomaly_files, tmp_path):
    root, orig, _ = dinomaly_files
    sd = dict(orig.state_dict())
    del sd["decoder.3.attn.qkv.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ArtifactError, match=r"missing 1 tensors .*head\.decoder\.3\.attn\.qkv\.weight"):
        convert_checkpoint(tmp_path / "missing.pth", "dinomaly", input_size=56, resize=64)
    sd = dict(orig.state_dict())
    sd["decoder.0.mlp.fc1.weight"] = torch.zeros(64, DIM)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ArtifactError, match=r"'head\.decoder\.0\.mlp\.0\.weight' has shape \(64, 32\), the "
                                            r"detector expects \(128, 32\)"):
        convert_checkpoint(tmp_path / "shape.pth", "dinomaly", input_size=56, resize=64)
    with pytest.raises(ArtifactError, match=r"does not fit backbone 'vit_tiny_test_patch14'"):
        convert_checkpoint(root / "model.pth", "dinomaly", input_size=56, resize=64,
                           backbone="vit_tiny_test_patch14")
    sd = dict(orig.state_dict())
    sd["decoder.0.ls1.gamma"] = torch.ones(DIM)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(ArtifactError, match=r"1 tensors edgead does not know how to use \(first: decoder\.0\.ls1"):
        convert_checkpoint(tmp_path / "extra.pth", "dinomaly", input_size=56, resize=64)


# -- reference: L2BT (FeatureProjectionMLP students, DINOv2 teacher, B_infer_VisA.py post-processing) ----------
class RefProjectionMLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.act_fcn = nn.GELU()
        self.input = nn.Linear(dim, dim)
        self.projection = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)

    def forward(self, x):
        return self.output(self.act_fcn(self.projection(self.act_fcn(self.input(x)))))


def ref_l2bt_infer(teacher, fwd, bwd, x, frame):
    """As B_infer_VisA.py: note ``last, middle = fe(x)`` names block 7 'last' and block 11 'middle'."""
    last_patch, middle_patch = teacher.get_intermediate_layers(x, [7, 11])
    pred_middle, pred_last = bwd(last_patch), fwd(middle_patch)
    middle_map = (F.normalize(pred_middle, dim=-1) - F.normalize(middle_patch, dim=-1)).pow(2).sum(-1).sqrt()
    last_map = (F.normalize(pred_last, dim=-1) - F.normalize(last_patch, dim=-1)).pow(2).sum(-1).sqrt()
    g = x.shape[-1] // PATCH
    side = max(frame)
    m = (middle_map * last_map).reshape(-1, 1, g, g)
    m = F.interpolate(m, size=[side, side], mode="bilinear")
    for k, reps in ((5, 5), (7, 3)):
        for _ in range(reps):
            m = F.conv2d(m, torch.ones(1, 1, k, k) / k**2, padding=k // 2)
    top, left = int(round((side - frame[0]) / 2.0)), int(round((side - frame[1]) / 2.0))
    m = m[:, 0, top : top + frame[0], left : left + frame[1]]
    k = int(frame[0] * frame[1] * 0.001)
    return m, torch.topk(m.flatten(1), k=k, dim=1)[0].mean(dim=1)


@pytest.fixture(scope="module")
def l2bt_files(tmp_path_factory):
    torch.manual_seed(1)
    root = tmp_path_factory.mktemp("l2bt")
    teacher, fwd, bwd = RefDinov2().eval(), RefProjectionMLP(DIM).eval(), RefProjectionMLP(DIM).eval()
    torch.save(teacher.state_dict(), root / "dinov2_teacher.pth")
    torch.save(fwd.state_dict(), root / "forward_net_x.pth")
    torch.save(bwd.state_dict(), root / "backward_net_x.pth")
    return root, teacher, fwd, bwd


@pytest.mark.parametrize("frame", [(56, 56), (60, 70)])
def test_l2bt_parity(l2bt_files, tmp_path, frame):
    root, teacher, fwd, bwd = l2bt_files
    out = import_checkpoint(root / "forward_net_x.pth", "l2bt", tmp_path / "ckpt", weights=root / "dinov2_teacher.pth",
                            backward=root / "backward_net_x.pth", input_size=56, frame=frame)
    det = load_checkpoint(out)
    assert det.spec.family == "fbft" and det.spec.layers == (7, 11) and det.spec.head["tap_norm"] is True
    assert det.spec.top_k == max(1, int(frame[0] * frame[1] * 0.001))
    batch = images(seed=3)
    with torch.no_grad():
        ref_map, ref_score = ref_l2bt_infer(teacher, fwd, bwd, to_input(batch), frame)
        scores, maps = det(batch)
        _, smoothed = det.post.scored_map(det.head.anomaly_map(det.taps(batch)))
    torch.testing.assert_close(scores, ref_score, atol=ATOL, rtol=0)
    side = max(frame)
    top, left = (side - frame[0]) // 2, (side - frame[1]) // 2
    torch.testing.assert_close(smoothed[:, 0, top : top + frame[0], left : left + frame[1]], ref_map,
                               atol=ATOL, rtol=0)
    if frame == (56, 56):  # a square frame at the input size: the returned map is the original's map
        torch.testing.assert_close(maps, ref_map, atol=ATOL, rtol=0)


def test_l2bt_needs_teacher_and_both_students(l2bt_files, tmp_path):
    root = l2bt_files[0]
    with pytest.raises(InputError, match="pass the DINOv2 teacher weights with --weights"):
        convert_checkpoint(root / "forward_net_x.pth", "l2bt", input_size=56)
    with pytest.raises(InputError, match="pass the other with --backward"):
        convert_checkpoint(root / "forward_net_x.pth", "l2bt", weights=root / "dinov2_teacher.pth", input_size=56)
    sd = torch.load(root / "backward_net_x.pth")
    sd["projection.weight"] = torch.zeros(DIM, 8)
    torch.save(sd, tmp_path / "bad_backward.pth")
    with pytest.raises(ArtifactError, match=r"'head\.forward_student\.2\.weight' has shape \(32, 8\)"):
        convert_checkpoint(root / "forward_net_x.pth", "l2bt", weights=root / "dinov2_teacher.pth",
                           backward=tmp_path / "bad_backward.pth", input_size=56)


def test_timm_backbone_import_for_vitad(tmp_path):
    from edgead.models.backbone import create_vit

    torch.manual_seed(2)
    vit = create_vit("vit_tiny_test_patch16", "layernorm", (64, 64))
    torch.save({"model": vit.state_dict()}, tmp_path / "vit.pth")
    assert sniff(torch.load(tmp_path / "vit.pth")["model"]) == "timm"
    det = load_checkpoint(import_checkpoint(tmp_path / "vit.pth", "timm", tmp_path / "ckpt", family="vitad",
                                            input_size=64))
    assert det.spec.family == "vitad" and det.spec.backbone == "vit_tiny_test_patch16"
    torch.testing.assert_close(det.backbone.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)
    assert len(det.backbone.blocks) == 12


def test_cli_import_and_refusal(dinomaly_files, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from edgead.cli.app import app, main

    root = dinomaly_files[0]
    r = CliRunner().invoke(app, ["import", str(root / "model.pth"), "--format", "dinomaly", "-o",
                                 str(tmp_path / "ckpt"), "--size", "56", "--resize", "64", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["family"] == "dinomaly" and result["input_size"] == [56, 56] and result["resize"] == [64, 64]
    monkeypatch.setattr("sys.argv", ["edgead", "import", str(root / "anomalib.ckpt"), "--format", "dinomaly",
                                     "-o", str(tmp_path / "y")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1 and not (tmp_path / "y").exists()
