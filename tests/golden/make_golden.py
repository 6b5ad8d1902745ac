"""Make the importers' golden fixtures by running the ORIGINAL code (not run in CI; needs a side venv).

    python3 -m venv /work/wt/orig-venv
    /work/wt/orig-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31 anomalib==2.7.0
    /work/wt/orig-venv/bin/python tests/golden/make_golden.py --orig ORIG [--case dinomaly:tiny ...]

``ORIG`` holds checkouts named ``guojiajeremy+Dinomaly``, ``alex-costanzino+L2BT`` and
``facebookresearch+dinov2`` (the torch-hub code L2BT loads its teacher from); anomalib comes from the venv.
Each case runs in its own process (Dinomaly vendors a ``dinov2`` package that would shadow the hub's).

For each format and size the original model is built exactly as its repository builds it (constructor calls of
its training/inference scripts; no weights can be downloaded here, so every parameter is then set from
``seeded.py``), saved in the original on-disk format, and run through the original inference function on a few
deterministic images given as network inputs (uint8 at the input size -> ToTensor -> the original's Normalize).
The outputs go to ``<out>/<format>/<size>/golden.npz`` with ``meta.json``. Tiny cases keep their checkpoint; real
cases keep ``keys.json`` (every tensor's name and shape, or value for the few non-parameter buffers) so tests can
regenerate the checkpoint from the seed. Where the original inference is a script function that also computes
metrics or needs CUDA, it is run as is with its loader, metric and timing helpers replaced by recorders; the
recorded arguments are the original's maps and scores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from seeded import seeded_tensor  # noqa: E402

SEED = 12
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CASES = ("dinomaly:tiny", "dinomaly:real", "l2bt:tiny", "l2bt:real", "anomalib-dinomaly:tiny",
         "anomalib-dinomaly:real")


def images(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Smooth structure plus noise and a bright blob, so maps and scores vary across the image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        base = 128 + 60 * np.sin(x / (7 + 3 * i) + y / 11) * np.cos(y / (5 + i))
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        blob = 90 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (0.08 * h) ** 2))
        rgb = np.stack([base + blob, base * 0.8 + 20, 255 - base], -1) + rng.normal(0, 25, (h, w, 3))
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(out)


def network_input(imgs: np.ndarray) -> torch.Tensor:
    from torchvision import transforms

    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return torch.stack([t(im) for im in imgs])


def seed_parameters(module: torch.nn.Module, prefix: str = "") -> None:
    """Every parameter (first name of a shared one) from ``seeded_tensor``; buffers stay as the original made them."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(seeded_tensor(SEED, prefix + name, tuple(p.shape)))


def keys_json(sd: dict[str, torch.Tensor], module: torch.nn.Module, prefix: str = "") -> dict:
    params = {prefix + n: p for n, p in module.named_parameters()}
    first = {id(p): n for n, p in reversed(list(params.items()))}
    out = {}
    for k, v in sd.items():
        if k in params:
            src = first[id(params[k])]
            out[k] = {"shape": list(v.shape)} if src == k else {"alias": src}
        else:
            out[k] = {"value": v.tolist(), "dtype": str(v.dtype).replace("torch.", "")}
    return out


def git_head(path: Path) -> str:
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def save(out: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "golden.npz", **arrays)
    meta.update(seed=SEED, torch=torch.__version__)
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


class Recorder:
    """Stands in for a metric function; keeps the arguments of every call."""

    def __init__(self, result=0.0):
        self.calls, self.result = [], result

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        return self.result


# -- original Dinomaly (guojiajeremy/Dinomaly): dinomaly_mvtec_uni.py's model, utils.evaluation_batch ----------
def dinomaly(orig: Path, size: str, out: Path) -> None:
    repo = orig / "guojiajeremy+Dinomaly"
    os.environ["XFORMERS_DISABLED"] = "1"
    sys.path.insert(0, str(repo))
    import utils as dutils
    from dinov2.layers import MemEffAttention
    from dinov2.layers import NestedTensorBlock as Block
    from dinov2.models import vision_transformer as vision_transformer_dinov2
    from models.uad import ViTill
    from models.vision_transformer import Block as VitBlock
    from models.vision_transformer import LinearAttention2, bMlp

    # Tiny: the same DinoVisionTransformer at width 32 with 2 heads (the repository's vit_small/base differ only
    # in width and heads).
    vision_transformer_dinov2.vit_tiny = partial(
        vision_transformer_dinov2.DinoVisionTransformer, embed_dim=32, depth=12, num_heads=2, mlp_ratio=4,
        block_fn=partial(Block, attn_class=MemEffAttention))
    arch, crop, n = ("tiny", 112, 2) if size == "tiny" else ("base", 392, 2)
    embed_dim, num_heads = {"tiny": (32, 2), "base": (768, 12)}[arch]
    # models/vit_encoder.load('dinov2reg_vit_<arch>_14') without the download:
    encoder = vision_transformer_dinov2.__dict__[f"vit_{arch}"](
        patch_size=14, img_size=518, block_chunks=0, init_values=1e-8, num_register_tokens=4,
        interpolate_antialias=False, interpolate_offset=0.1)
    # dinomaly_mvtec_uni.py:
    target_layers = [2, 3, 4, 5, 6, 7, 8, 9]
    bottleneck = torch.nn.ModuleList([bMlp(embed_dim, embed_dim * 4, embed_dim, drop=0.2)])
    decoder = torch.nn.ModuleList(
        VitBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=4., qkv_bias=True,
                 norm_layer=partial(torch.nn.LayerNorm, eps=1e-8), attn=LinearAttention2) for _ in range(8))
    model = ViTill(encoder=encoder, bottleneck=bottleneck, decoder=decoder, target_layers=target_layers,
                   mask_neighbor_size=0, fuse_layer_encoder=[[0, 1, 2, 3], [4, 5, 6, 7]],
                   fuse_layer_decoder=[[0, 1, 2, 3], [4, 5, 6, 7]])
    seed_parameters(model)
    sd = model.state_dict()
    imgs = images(n, crop, crop, seed=1)
    x = network_input(imgs)
    loader = [(x, torch.zeros(n, 1, crop, crop), torch.tensor([0] + [1] * (n - 1)), ["a.png"] * n)]
    rec = {name: Recorder(0.5) for name in ("roc_auc_score", "average_precision_score", "f1_score_max",
                                            "compute_pro")}
    for name, r in rec.items():
        setattr(dutils, name, r)
    dutils.evaluation_batch(model, loader, "cpu", max_ratio=0.01, resize_mask=256)
    maps256 = rec["compute_pro"].calls[0][1]  # (N, 256, 256): the blurred 256 px maps
    scores = rec["roc_auc_score"].calls[1][1]  # the second AUROC is the image-level one
    with torch.no_grad():  # the crop-size map (cal_anomaly_maps) before resize and blur, for reference
        en, de = model(x)
        crop_map = dutils.cal_anomaly_maps(en, de, crop)[0][:, 0].numpy()
    ckpt = {}
    if size == "tiny":
        out.mkdir(parents=True, exist_ok=True)
        torch.save(sd, out / "model.pth")  # as dinomaly_*.py saves it
        ckpt["checkpoint"] = "model.pth"
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "keys.json").write_text(json.dumps(keys_json(sd, model)))
    save(out, {"format": "dinomaly", "size": size, "repo": "guojiajeremy/Dinomaly", "commit": git_head(repo),
               "encoder": f"dinov2reg_vit_{arch}_14", "crop": crop, "resize_mask": 256, "max_ratio": 0.01, **ckpt},
         {"images": imgs, "scores": np.asarray(scores, np.float32), "maps256": maps256.astype(np.float32),
          "crop_maps": crop_map.astype(np.float32)})


# -- L2BT (alex-costanzino/L2BT): models/, B_infer_VisA.infer with the torch-hub DINOv2 teacher ----------------
def l2bt(orig: Path, size: str, out: Path) -> None:
    repo, hub = orig / "alex-costanzino+L2BT", orig / "facebookresearch+dinov2"
    os.environ["XFORMERS_DISABLED"] = "1"
    sys.path.insert(0, str(hub))
    from dinov2.hub import backbones
    from dinov2.layers import MemEffAttention
    from dinov2.layers import NestedTensorBlock as Block
    from dinov2.models import vision_transformer as vits

    vits.vit_tiny = partial(vits.DinoVisionTransformer, embed_dim=32, depth=12, num_heads=2, mlp_ratio=4,
                            block_fn=partial(Block, attn_class=MemEffAttention))
    if size == "tiny":
        # hub dinov2_vitb14_reg's own construction with the tiny architecture:
        teacher = backbones._make_dinov2_model(arch_name="vit_tiny", pretrained=False, num_register_tokens=4,
                                               interpolate_antialias=True, interpolate_offset=0.0)
        side, frame, n = 112, (84, 112), 2
    else:
        teacher = torch.hub.load(str(hub), "dinov2_vitb14_reg", source="local", pretrained=False)
        side, frame, n = 1036, (1036, 777), 1
    seed_parameters(teacher)
    torch.hub.load = lambda *a, **k: teacher  # models/teacher.py loads the hub model; hand it ours
    sys.path.insert(0, str(repo))
    import B_infer_VisA as infer_mod
    from models.students import FeatureProjectionMLP

    work = Path(tempfile.mkdtemp())
    args = types.SimpleNamespace(checkpoint_folder=str(work / "ckpt"), qualitative_folder=str(work / "q"),
                                 quantitative_folder=str(work / "r"), visualize_plot=False,
                                 produce_qualitatives=False, dataset_path="", class_name="golden", epochs_no=1,
                                 img_size=side, batch_size=1, label="seeded")
    folder = Path(args.checkpoint_folder) / "golden"
    folder.mkdir(parents=True)
    nets = {}
    for which in ("forward_net", "backward_net"):
        net = FeatureProjectionMLP(in_features=teacher.embed_dim, out_features=teacher.embed_dim)
        seed_parameters(net, which + ".")
        nets[which] = f"{which}_seeded_golden_1ep_1bs.pth"
        torch.save(net.state_dict(), folder / nets[which])  # as A_train_VisA.py saves them
    imgs = images(n, side, side, seed=2)
    x = network_input(imgs)
    gt = torch.zeros(1, 1, *frame)
    infer_mod.get_data_loader = lambda *a, **k: ([(x[i:i + 1], gt, torch.tensor([i % 2]), [f"a/b/c/{i}.png"])
                                                  for i in range(n)], max(frame))

    class _Event:
        def __init__(self, *a, **k): ...
        def record(self): ...
        def elapsed_time(self, other): return 0.0

    infer_mod.torch.cuda.Event = _Event
    infer_mod.torch.cuda.synchronize = lambda: None
    pro = Recorder(([0.0] * 4, None, [1.0, 2.0, 3.0, 4.0]))
    auroc = Recorder(0.5)
    infer_mod.calculate_au_pro, infer_mod.roc_auc_score = pro, auroc
    infer_mod.infer(args)
    maps = np.stack(pro.calls[0][1]).astype(np.float32)  # predictions: the cropped, smoothed maps
    scores = np.asarray(auroc.calls[1][1], np.float32).reshape(-1)  # image_preds
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": "l2bt", "size": size, "repo": "alex-costanzino/L2BT", "commit": git_head(repo),
            "hub_repo": "facebookresearch/dinov2", "hub_commit": git_head(hub), "input": side, "frame": list(frame),
            "teacher": "dinov2_vitb14_reg" if size == "real" else "dinov2 hub reg construction, tiny width"}
    tsd = teacher.state_dict()
    if size == "tiny":
        torch.save(tsd, out / "teacher.pth")
        for name in nets.values():
            (out / name).write_bytes((folder / name).read_bytes())
        meta.update(teacher_file="teacher.pth", forward_file=nets["forward_net"], backward_file=nets["backward_net"])
    else:
        keys = {"teacher": keys_json(tsd, teacher)}
        for which, name in nets.items():
            sd = torch.load(folder / name)
            keys[which] = {k: {"shape": list(v.shape)} for k, v in sd.items()}  # seeded as f"{which}.{k}"
        (out / "keys.json").write_text(json.dumps(keys))
    save(out, meta, {"images": imgs, "scores": scores, "maps": maps})


# -- anomalib 2.x Dinomaly: its Lightning model, Engine-written model.ckpt (tiny), its torch model's forward ---
def anomalib_dinomaly(orig: Path, size: str, out: Path) -> None:
    import anomalib
    import timm
    from anomalib.models.components.feature_extractors import timm as fe_timm
    from anomalib.models.image.dinomaly import Dinomaly, torch_model

    # No weights can be downloaded here: the encoder is created without them and seeded below.
    real_create = timm.create_model
    fe_timm.timm.create_model = lambda name, pretrained=False, **kw: real_create(name, pretrained=False, **kw)
    if size == "tiny":
        # anomalib picks width and heads from the encoder name; add a tiny DINOv2-reg4 entry and timm model.
        torch_model.DINO_ARCHITECTURES["tiny"] = {"embed_dim": 32, "num_heads": 2,
                                                  "target_layers": [2, 3, 4, 5, 6, 7, 8, 9]}
        from timm.models import register_model
        from timm.models.vision_transformer import _create_vision_transformer

        @register_model
        def vit_tiny_patch14_reg4_dinov2(pretrained: bool = False, **kwargs):
            args = dict(patch_size=14, embed_dim=32, depth=12, num_heads=2, init_values=1e-5, reg_tokens=4,
                        no_embed_class=True, img_size=518)
            return _create_vision_transformer("vit_small_patch14_reg4_dinov2", pretrained=False,
                                              **dict(args, **kwargs))

        name, resize, crop, n = "vit_tiny_patch14_reg4_dinov2", 128, 112, 2
    else:
        name, resize, crop, n = "vit_base_patch14_reg4_dinov2", 448, 392, 2
    imgs = images(n, crop, crop, seed=3)
    x = network_input(imgs)
    meta = {"format": "anomalib-dinomaly", "size": size, "anomalib": anomalib.__version__, "timm": timm.__version__,
            "encoder": name, "resize": resize, "crop": crop}
    out.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        model = Dinomaly(encoder_name=name,
                         pre_processor=Dinomaly.configure_pre_processor(image_size=(resize, resize), crop_size=crop))
        seed_parameters(model.model, "model.")
        ckpt = engine_checkpoint(model, out)
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict(state)
        torch_module = model.model
        meta["checkpoint"] = "model.ckpt"
    else:
        torch_module = torch_model.DinomalyModel(encoder_name=name)
        seed_parameters(torch_module, "model.")
        state = {"model." + k: v for k, v in torch_module.state_dict().items()}
        (out / "keys.json").write_text(json.dumps(keys_json(state, torch_module, "model.")))
    torch_module.eval()
    with torch.no_grad():
        pred = torch_module(x)
    arrays = {"images": imgs, "scores": pred.pred_score.numpy().astype(np.float32),
              "maps": pred.anomaly_map[:, 0].numpy().astype(np.float32)}
    if size == "tiny":  # what anomalib reports after its post-processor (normalised score, label)
        post = model.post_processor
        from anomalib.data import InferenceBatch

        normed = post(InferenceBatch(pred_score=pred.pred_score, anomaly_map=pred.anomaly_map))
        arrays["post_scores"] = normed.pred_score.numpy().astype(np.float32)
        arrays["post_labels"] = normed.pred_label.numpy().astype(bool)
        meta["image_threshold"] = float(post.image_threshold)
    save(out, meta, arrays)


def engine_checkpoint(model, out: Path) -> Path:
    """Fit one step with anomalib's Engine on a tiny folder data set; copy the model.ckpt it writes."""
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from PIL import Image

    root = Path(tempfile.mkdtemp())
    for sub, seed, count in (("good", 10, 10), ("bad", 20, 3)):
        (root / sub).mkdir()
        for i, im in enumerate(images(count, 128, 128, seed)):
            Image.fromarray(im).save(root / sub / f"{i}.png")
    dm = Folder(name="golden", root=root, normal_dir="good", abnormal_dir="bad", train_batch_size=2,
                eval_batch_size=2, num_workers=0, seed=0)
    engine = Engine(max_epochs=1, limit_train_batches=1, accelerator="cpu", devices=1,
                    default_root_dir=str(root / "results"), logger=False)
    engine.fit(model=model, datamodule=dm)
    found = sorted((root / "results").rglob("model.ckpt"))
    if not found:
        raise SystemExit(f"anomalib's Engine wrote no model.ckpt under {root / 'results'}")
    target = out / "model.ckpt"
    target.write_bytes(found[-1].read_bytes())
    return target


RUNNERS = {"dinomaly": dinomaly, "l2bt": l2bt, "anomalib-dinomaly": anomalib_dinomaly}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orig", type=Path, required=True, help="folder with the original checkouts")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--case", action="append", choices=CASES, help="default: every case, each in its own process")
    ns = ap.parse_args()
    torch.manual_seed(SEED)
    cases = ns.case or list(CASES)
    if len(cases) == 1:
        fmt, size = cases[0].split(":")
        RUNNERS[fmt](ns.orig.resolve(), size, ns.out / fmt / size)
        return
    for case in cases:
        print(f"== {case}", flush=True)
        subprocess.run([sys.executable, __file__, "--orig", str(ns.orig), "--out", str(ns.out), "--case", case],
                       check=True)


if __name__ == "__main__":
    main()
