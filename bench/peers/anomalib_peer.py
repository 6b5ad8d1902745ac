"""The anomalib 2.7 peer of issue 28, run by anomalib itself in its own venv (``bench/peers/anomalib-venv.sh``).

    .peer-venv/anomalib/bin/python bench/peers/anomalib_peer.py build --data DATA -o PEER
    .peer-venv/anomalib/bin/python bench/peers/anomalib_peer.py serve      # the timing side, driven over stdin/stdout

``build`` makes anomalib's Dinomaly with anomalib's own classes: ``Dinomaly(encoder_name=
"vit_small_patch14_reg4_dinov2")`` (ViT-S/14 with 4 registers) and anomalib's defaults otherwise (its
pre-processor: resize 448, centre crop 392, ImageNet normalisation; bottleneck, decoder, fusion groups, post-
processor). **No weights can be downloaded here**, so the one change to anomalib is that its timm feature extractor
is asked for ``pretrained=False``: the DINOv2 encoder is timm's random initialisation, not DINOv2's weights. Every
figure below is about speed and about edgead reproducing *these* weights, not about detection quality. anomalib's
``Engine`` then fits one training step on the data folder (so the ``model.ckpt`` is the file anomalib writes, with
its pre/post-processor metadata and thresholds from its validation pass) and exports with anomalib's own
``Engine.export``:

- ``default/``: ``export_type="openvino"`` with anomalib's defaults (no compression, dynamic batch and size);
- ``int8_ptq/``: the same with ``compression_type=INT8_PTQ`` and the datamodule (NNCF post-training
  quantization on the datamodule's validation images, anomalib's fastest OpenVINO option);
- ``parity.npz``: deterministic uint8 images at the crop size and the raw outputs of anomalib's torch model
  (``DinomalyModel.forward``: score and anomaly map before the post-processor) for an outside fidelity check.

``serve`` loads exported models with anomalib's ``OpenVINOInferencer`` (its defaults: ``device="AUTO"``, no
config, so OpenVINO's default precision hint, bf16 on a CPU with AVX512_BF16/AMX) and times its ``predict`` on
request. Protocol: one JSON object per line on stdin, one reply per line on the original stdout (everything else
the libraries print goes to stderr):

    {"cmd": "hello"}                                   -> {"ok": true, "versions": {...}}
    {"cmd": "frames", "path": "frames.npy"}             -> {"ok": true, "shape": [N, H, W, 3]}
    {"cmd": "load", "name": "x", "xml": "model.xml"}   -> {"ok": true, "precision": "bf16", "device": "AUTO"}
    {"cmd": "warmup", "name": "x", "batch": 8, "n": 2} -> {"ok": true, "outputs": {"pred_score": [8], ...}}
    {"cmd": "time", "name": "x", "batch": 8, "n": 3}   -> {"ok": true, "seconds": [..3 per-call times..]}
    {"cmd": "load_torch", "ckpt": "model.ckpt"}         -> {"ok": true}   (anomalib's Lightning model, name "torch")
    {"cmd": "outputs", "name": "x", "batch": 8, "path": "o.npz"} -> {"ok": true}  (scores, maps of one call)
    {"cmd": "quit"}                                    -> {"ok": true}

Failures reply ``{"ok": false, "error": "..."}``. The edgead side (``edgead.bench.peer_anomalib``) alternates these
calls with its own rows, round by round. This file imports nothing from edgead (edgead is not in the peer venv).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path

ENCODER = "vit_small_patch14_reg4_dinov2"
PACKAGES = ("anomalib", "torch", "timm", "openvino", "nncf", "onnx", "numpy")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# -- build: anomalib's model, checkpoint and exports --------------------------------------------------------------
def no_download() -> None:
    """anomalib's timm feature extractor asks for DINOv2 weights; none can be downloaded here: random init."""
    import timm
    from anomalib.models.components.feature_extractors import timm as fe_timm

    real = timm.create_model

    def create_model(name, pretrained=False, **kw):  # noqa: ANN001, ANN202
        return real(name, pretrained=False, **kw)

    fe_timm.timm.create_model = create_model


def parity_images(n: int, side: int, seed: int = 7):
    """Smooth structure, noise and a bright blob: maps and scores vary across the image."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    out = []
    for i in range(n):
        base = 128 + 60 * np.sin(x / (7 + 3 * i) + y / 11) * np.cos(y / (5 + i))
        cy, cx = rng.uniform(0.2, 0.8, 2) * side
        blob = 90 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (0.08 * side) ** 2))
        rgb = np.stack([base + blob, base * 0.8 + 20, 255 - base], -1) + rng.normal(0, 25, (side, side, 3))
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(out)


def build(data: Path, out: Path, seed: int) -> None:
    import numpy as np
    import torch
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine
    from anomalib.models import Dinomaly

    torch.manual_seed(seed)
    no_download()
    out.mkdir(parents=True, exist_ok=True)
    dm = datamodule(data, seed)
    model = Dinomaly(encoder_name=ENCODER)
    engine = Engine(max_epochs=1, limit_train_batches=1, accelerator="cpu", devices=1,
                    default_root_dir=str(out / "results"), logger=False)
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=dm)
    found = sorted((out / "results").rglob("model.ckpt"))
    if not found:
        raise SystemExit(f"anomalib's Engine wrote no model.ckpt under {out / 'results'}")
    (out / "model.ckpt").write_bytes(found[-1].read_bytes())
    timings = {"fit_s": time.perf_counter() - t0}

    t0 = time.perf_counter()
    default = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=out / "default")
    timings["export_default_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    int8 = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=out / "int8_ptq",
                         compression_type=CompressionType.INT8_PTQ, datamodule=dm)
    timings["export_int8_ptq_s"] = time.perf_counter() - t0

    # the outside fidelity reference: anomalib's torch model on network inputs at the crop size
    imgs = parity_images(4, 392)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    torch_model = model.model.eval()
    with torch.no_grad():
        pred = torch_model(x)
    np.savez(out / "parity.npz", images=imgs, scores=pred.pred_score.numpy().astype(np.float32).reshape(-1),
             maps=pred.anomaly_map[:, 0].numpy().astype(np.float32))
    meta = {"encoder": ENCODER, "weights": "random init (timm, pretrained=False): no download possible",
            "seed": seed, "data": str(data), "checkpoint": "model.ckpt", "default": str(Path(default).relative_to(out)),
            "int8_ptq": str(Path(int8).relative_to(out)), "versions": versions(), "timings": timings,
            "image_threshold": float(model.post_processor.image_threshold)}
    (out / "peer.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta, indent=1))


def datamodule(data: Path, seed: int):  # noqa: ANN201
    """anomalib's Folder datamodule over an MVTec-layout category (train/good; test/good and test/<defect>)."""
    from anomalib.data import Folder

    abnormal = sorted(str(p.relative_to(data)) for p in (data / "test").iterdir() if p.is_dir() and p.name != "good")
    return Folder(name="peer", root=data, normal_dir="train/good", normal_test_dir="test/good", abnormal_dir=abnormal,
                  train_batch_size=2, eval_batch_size=4, num_workers=0, seed=seed)


def export_more(data: Path, out: Path, name: str, compression: str | None, side: int | None, seed: int) -> None:
    """One more anomalib export of ``out/model.ckpt`` (``Engine.export``), e.g. INT8_PTQ with a static image size
    (``input_size``, anomalib's option; the batch stays dynamic), into ``out/<name>/``."""
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine
    from anomalib.models import Dinomaly

    no_download()
    model = Dinomaly.load_from_checkpoint(out / "model.ckpt", map_location="cpu")
    engine = Engine(accelerator="cpu", devices=1, default_root_dir=str(out / "results"), logger=False)
    t0 = time.perf_counter()
    path = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=out / name,
                         input_size=(side, side) if side else None,
                         compression_type=CompressionType(compression) if compression else None,
                         datamodule=datamodule(data, seed) if compression in ("int8_ptq", "int8_acq") else None)
    print(json.dumps({"export": str(path), "seconds": time.perf_counter() - t0}))


# -- serve: anomalib's OpenVINOInferencer, timed on request -------------------------------------------------------
class Peer:
    def __init__(self) -> None:
        self.frames = None
        self.models: dict[str, object] = {}

    def handle(self, msg: dict) -> dict:
        cmd = msg.get("cmd")
        if cmd == "hello":
            return {"ok": True, "versions": versions(), "pid": os.getpid()}
        if cmd == "frames":
            import numpy as np

            self.frames = np.load(msg["path"])
            return {"ok": True, "shape": list(self.frames.shape)}
        if cmd == "load":
            from anomalib.deploy import OpenVINOInferencer

            inferencer = OpenVINOInferencer(path=msg["xml"])  # anomalib's defaults: device AUTO, no config
            self.models[msg["name"]] = inferencer
            return {"ok": True, "device": inferencer.device, "precision": _precision(inferencer),
                    "products": _products(inferencer)}
        if cmd in ("warmup", "time"):
            inferencer = self.models[msg["name"]]
            batch = self.frames[: int(msg["batch"])]
            if len(batch) != int(msg["batch"]):
                return {"ok": False, "error": f"expected at least {msg['batch']} frames, found {len(self.frames)}"}
            seconds, result = [], None
            for _ in range(int(msg["n"])):
                t0 = time.perf_counter()
                result = inferencer.predict(batch)
                seconds.append(time.perf_counter() - t0)
            if cmd == "time":
                return {"ok": True, "seconds": seconds}
            shapes = {k: list(getattr(result, k).shape) for k in ("pred_score", "anomaly_map")
                      if getattr(result, k, None) is not None}
            return {"ok": True, "outputs": shapes}
        if cmd == "load_torch":  # anomalib's own Lightning model from the checkpoint: pre-, model, post-processor
            import torch
            from anomalib.models import Dinomaly

            no_download()
            self.models["torch"] = Dinomaly.load_from_checkpoint(msg["ckpt"], map_location="cpu").eval()
            return {"ok": True}
        if cmd == "outputs":  # one call on the first ``batch`` frames; score and map saved to ``path``
            import numpy as np

            batch = self.frames[: int(msg["batch"])]
            if msg["name"] == "torch":
                import torch

                x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 255.0
                with torch.no_grad():
                    result = self.models["torch"](x)
                score, amap = result.pred_score.numpy(), result.anomaly_map.numpy()
            else:
                result = self.models[msg["name"]].predict(batch)
                score, amap = np.asarray(result.pred_score), np.asarray(result.anomaly_map)
            np.savez(msg["path"], scores=score.astype(np.float32).reshape(len(batch)),
                     maps=amap.astype(np.float32).reshape(len(batch), *amap.shape[-2:]))
            return {"ok": True}
        if cmd == "quit":
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}


def _precision(inferencer) -> str | None:  # noqa: ANN001
    """The precision OpenVINO executes: the compiled model's hint (AUTO forwards it from the CPU plugin)."""
    def name(value) -> str:  # noqa: ANN001
        return value.to_string() if hasattr(value, "to_string") else str(value)  # ov.Type.bf16 -> "bf16"

    try:
        return name(inferencer.model.get_property("INFERENCE_PRECISION_HINT"))
    except Exception:  # noqa: BLE001
        pass
    try:
        import openvino as ov

        return name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    except Exception:  # noqa: BLE001
        return None


def _products(inferencer) -> dict[str, int]:  # noqa: ANN001
    """How many matrix-product nodes of the compiled (runtime) model run at each precision, e.g. {"int8": 90,
    "bf16": 12}: what OpenVINO executes, not what was asked ({} where the runtime model does not say)."""
    def text(value) -> str:  # noqa: ANN001
        t = (value.astype(str) if hasattr(value, "astype") else str(value)).lower()
        return t.split("'")[1] if "'" in t else t.strip()

    short = {"u8": "int8", "i8": "int8", "bf16": "bf16", "f32": "f32", "f16": "f16", "float32": "f32"}
    counts: dict[str, int] = {}
    try:
        for op in inferencer.model.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "layerType" in info and "runtimePrecision" in info and text(info["layerType"]) in (
                    "fullyconnected", "matmul", "convolution"):
                p = text(info["runtimePrecision"])
                counts[short.get(p, p)] = counts.get(short.get(p, p), 0) + 1
    except Exception:  # noqa: BLE001
        return {}
    return counts


def serve() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever anomalib/OpenVINO print goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    peer = Peer()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
            answer = peer.handle(msg)
        except Exception as exc:  # noqa: BLE001
            msg, answer = {}, {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply.write(json.dumps(answer) + "\n")
        if msg.get("cmd") == "quit":
            break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="anomalib's Dinomaly: checkpoint, default and INT8_PTQ exports, parity data")
    b.add_argument("--data", type=Path, required=True, help="MVTec-layout category (train/good, test/<type>)")
    b.add_argument("-o", "--out", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("export", help="one more anomalib export of OUT/model.ckpt into OUT/NAME")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("-o", "--out", type=Path, required=True)
    e.add_argument("--name", required=True)
    e.add_argument("--compression", default=None, help="fp16 | int8 | int8_ptq | int8_acq (anomalib's)")
    e.add_argument("--input-size", type=int, default=None, help="static image side (anomalib's input_size)")
    e.add_argument("--seed", type=int, default=0)
    sub.add_parser("serve", help="time anomalib's OpenVINOInferencer on request (JSON lines)")
    args = ap.parse_args()
    if args.cmd == "build":
        build(args.data.resolve(), args.out.resolve(), args.seed)
    elif args.cmd == "export":
        export_more(args.data.resolve(), args.out.resolve(), args.name, args.compression, args.input_size, args.seed)
    else:
        serve()


if __name__ == "__main__":
    main()
