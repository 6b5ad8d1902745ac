"""Importers against golden fixtures produced by the ORIGINAL code (tests/golden, made by make_golden.py).

Each fixture is a checkpoint in the original's on-disk format (seeded random weights) plus the original
inference's outputs on a few images. The checkpoint is imported with ``edgead import``, exported, compiled, and
every FP32 engine (torch, ONNX Runtime, OpenVINO f32) must give the original's scores and maps within 1e-5.
Real-size fixtures (ViT-B; checkpoints regenerated from the seed) run with ``EDGEAD_GOLDEN_REAL=1``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import edgead.runtimes as rt
from edgead.cli.app import app, main
from edgead.errors import ArtifactError, InputError
from edgead.importers import convert_checkpoint, import_checkpoint, sniff
from edgead.importers.ckpt import load_restricted
from edgead.importers.common import resize_pos_table
from edgead.models.checkpoint import load_checkpoint

ATOL = 1e-5
GOLDEN = Path(__file__).parent / "golden"
REAL = os.environ.get("EDGEAD_GOLDEN_REAL") == "1"


def golden(fmt: str, size: str) -> tuple[Path, dict, dict[str, np.ndarray]]:
    folder = GOLDEN / fmt / size
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return folder, meta, arrays


def seeded_module():
    spec = importlib.util.spec_from_file_location("golden_seeded", GOLDEN / "seeded.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def regenerate(keys: dict, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """A real-size checkpoint rebuilt from ``keys.json``: seeded parameters, aliases, stored buffers.

    ``prefix``: the name the parameters were seeded under (L2BT's students: ``forward_net.`` / ``backward_net.``).
    """
    seeded = seeded_module()
    out: dict[str, torch.Tensor] = {}
    for k, e in keys.items():
        if "shape" in e:
            out[k] = seeded.seeded_tensor(seed, prefix + k, tuple(e["shape"]))
        elif "value" in e:
            out[k] = torch.tensor(e["value"], dtype=getattr(torch, e["dtype"]))
    for k, e in keys.items():
        if "alias" in e:
            out[k] = out[e["alias"]]
    return out


def run_main(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """The real entry point (with its error mapping): exit code and stderr."""
    monkeypatch.setattr("sys.argv", ["edgead", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return int(exc.value.code), capsys.readouterr().err


def import_cli(args: list[str], out: Path) -> Path:
    r = CliRunner().invoke(app, ["import", *args, "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["checkpoint"] == str(out)
    return out


def import_fixture(fmt: str, size: str, work: Path) -> tuple[Path, dict, dict[str, np.ndarray]]:
    """Import the fixture's checkpoint with ``edgead import`` (real size: written from the seed first)."""
    folder, meta, arrays = golden(fmt, size)
    if size == "real":
        keys = json.loads((folder / "keys.json").read_text())
        src = work / "orig"
        src.mkdir()
        if fmt == "l2bt":
            torch.save(regenerate(keys["teacher"], meta["seed"]), src / "teacher.pth")
            for which in ("forward_net", "backward_net"):
                torch.save(regenerate(keys[which], meta["seed"], which + "."), src / f"{which}_golden.pth")
            meta = dict(meta, teacher_file="teacher.pth", forward_file="forward_net_golden.pth",
                        backward_file="backward_net_golden.pth")
        elif fmt == "dinomaly":
            torch.save(regenerate(keys, meta["seed"]), src / "model.pth")
            meta = dict(meta, checkpoint="model.pth")
        else:  # a Lightning-style dict; the Engine-written model.ckpt itself is covered by the tiny case
            torch.save({"state_dict": regenerate(keys, meta["seed"])}, src / "model.ckpt")
            meta = dict(meta, checkpoint="model.ckpt")
        folder = src
    ckpt = work / "ckpt"
    if fmt == "l2bt":
        h, w = meta["frame"]
        import_cli([str(folder / meta["forward_file"]), "--format", "l2bt", "--weights",
                    str(folder / meta["teacher_file"]), "--backward", str(folder / meta["backward_file"]),
                    "--size", str(meta["input"]), "--frame", f"{h}x{w}"], ckpt)
    elif fmt == "dinomaly":
        import_cli([str(folder / meta["checkpoint"]), "--format", "dinomaly", "--size", str(meta["crop"]),
                    "--resize", str(meta["crop"] + 16 if size == "tiny" else 448)], ckpt)
    else:
        extra = ["--size", str(meta["crop"])] if size == "real" else []  # tiny: sizes read from model.ckpt
        import_cli([str(folder / meta["checkpoint"]), "--format", "anomalib-dinomaly", *extra], ckpt)
    return ckpt, meta, arrays


def expected_maps(fmt: str, det_spec, meta: dict, arrays: dict[str, np.ndarray]) -> np.ndarray:
    if fmt == "dinomaly":  # the original's 256 px map, returned at the crop size (see docs/import.md)
        m = torch.from_numpy(arrays["maps256"])[:, None]
        return F.interpolate(m, size=det_spec.input_size, mode="bilinear", align_corners=False)[:, 0].numpy()
    return arrays["maps"]


def engine_maps(fmt: str, det_spec, maps: np.ndarray, meta: dict) -> np.ndarray:
    if fmt == "l2bt":  # the original's map is the frame's crop of the square map (the input here)
        h, w = meta["frame"]
        side = max(h, w)
        top, left = int(round((side - h) / 2.0)), int(round((side - w) / 2.0))
        return maps[:, top : top + h, left : left + w]
    return maps


def check_all_engines(fmt: str, size: str, work: Path) -> dict[str, tuple[float, float]]:
    from edgead.export import export_onnx
    from edgead.export.openvino import compile_openvino

    ckpt, meta, arrays = import_fixture(fmt, size, work)
    det = load_checkpoint(ckpt)
    images = arrays["images"]
    export_onnx(det, work / "export", simplifier="none", fold_norms=False, check_batch_size=1)
    runners = {"torch": rt.load(ckpt), "onnxruntime": rt.load(work / "export"),
               "openvino": rt.load(compile_openvino(work / "export", "fp32"))}
    want_maps = expected_maps(fmt, det.spec, meta, arrays)
    diffs = {}
    for name, runner in runners.items():
        p = runner.predict(images)
        got = engine_maps(fmt, det.spec, p.maps, meta)
        assert got.shape == want_maps.shape
        diffs[name] = (float(np.abs(p.scores - arrays["scores"]).max()), float(np.abs(got - want_maps).max()))
    print(f"\n{fmt} {size}: max |dscore|, max |dmap| per engine: {diffs}")
    for name, (ds, dm) in diffs.items():
        assert ds <= ATOL and dm <= ATOL, (name, ds, dm)
    return diffs


@pytest.mark.parametrize("fmt", ["dinomaly", "l2bt", "anomalib-dinomaly"])
def test_golden_tiny_every_fp32_engine(fmt, tmp_path):
    check_all_engines(fmt, "tiny", tmp_path)


@pytest.mark.skipif(not REAL, reason="real-size golden fixtures (ViT-B): set EDGEAD_GOLDEN_REAL=1")
@pytest.mark.parametrize("fmt", ["dinomaly", "l2bt", "anomalib-dinomaly"])
def test_golden_real_every_fp32_engine(fmt, tmp_path):
    check_all_engines(fmt, "real", tmp_path)


def test_dinomaly_256px_map_is_exact_inside_the_graph():
    folder, meta, arrays = golden("dinomaly", "tiny")
    det = convert_checkpoint(folder / "model.pth", "dinomaly", input_size=meta["crop"], resize=meta["crop"] + 16)
    assert det.spec.pos_interp == "dinov2-offset" and det.spec.post.pad == "zeros" and det.spec.top_k == 655
    x = torch.from_numpy(arrays["images"])
    with torch.no_grad():
        up, blurred = det.post.scored_map(det.head.anomaly_map(det.taps(x)))
    assert float((blurred[:, 0] - torch.from_numpy(arrays["maps256"])).abs().max()) <= ATOL
    assert float((up[:, 0] - torch.from_numpy(arrays["crop_maps"])).abs().max()) <= ATOL


def test_l2bt_pairing_and_teacher_rule_are_the_originals(tmp_path):
    """The old (reversed) pairing and Dinomaly's +0.1 position rule each miss the original by far more than 1e-5."""
    folder, meta, arrays = golden("l2bt", "tiny")
    kw = dict(weights=folder / meta["teacher_file"], backward=folder / meta["backward_file"],
              input_size=meta["input"], frame=tuple(meta["frame"]))
    x = torch.from_numpy(arrays["images"])
    errs = {}
    for name, opts in {"default": {}, "reversed": {"pairing": "reversed"},
                       "offset-rule": {"pos_interp": "dinov2-offset"}}.items():
        det = convert_checkpoint(folder / meta["forward_file"], "l2bt", **kw, **opts)
        with torch.no_grad():
            scores, _ = det(x)
        errs[name] = float((scores - torch.from_numpy(arrays["scores"])).abs().max())
        if name == "default":
            assert det.spec.pos_interp == "dinov2-size-aa" and det.spec.post.crop == tuple(meta["frame"])
    assert errs["default"] <= ATOL
    assert errs["reversed"] > 1e-3 and errs["offset-rule"] > 1e-4, errs
    with pytest.raises(InputError, match="pairing must be one of trained, reversed, found 'swap'"):
        convert_checkpoint(folder / meta["forward_file"], "l2bt", **kw, pairing="swap")


def test_position_rules_differ():
    table = torch.randn(1, 37 * 37, 8, generator=torch.Generator().manual_seed(0))
    out = {r: resize_pos_table(table, (8, 8), r) for r in ("dinov2-offset", "dinov2-size-aa", "timm-size")}
    assert all(t.shape == (1, 64, 8) for t in out.values())
    assert float((out["dinov2-offset"] - out["timm-size"]).abs().max()) > 1e-2
    assert float((out["dinov2-size-aa"] - out["timm-size"]).abs().max()) > 1e-2
    assert torch.equal(resize_pos_table(table, (37, 37), "dinov2-size-aa"), table)
    with pytest.raises(ArtifactError, match="position interpolation must be one of"):
        resize_pos_table(table, (8, 8), "nearest")


def test_anomalib_engine_checkpoint_thresholds_and_sizes():
    """model.ckpt from anomalib's Engine: sizes from its pre-processor, its image threshold as the raw threshold."""
    folder, meta, arrays = golden("anomalib-dinomaly", "tiny")
    det = convert_checkpoint(folder / "model.ckpt", "anomalib-dinomaly")
    assert det.spec.input_size == (meta["crop"],) * 2 and det.spec.resize == (meta["resize"],) * 2
    assert det.spec.pos_interp == "timm-size" and det.spec.post.pad == "reflect"
    assert det.spec.threshold is not None and np.isfinite(det.spec.threshold)
    with torch.no_grad():
        scores, _ = det(torch.from_numpy(arrays["images"]))
    np.testing.assert_array_equal(scores.numpy() > det.spec.threshold, arrays["post_labels"])


def _evil_checkpoint(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    state = load_restricted(GOLDEN / "anomalib-dinomaly" / "tiny" / "model.ckpt")["state_dict"]
    torch.save({"state_dict": state, "hyper_parameters": {"encoder_name": "x", "payload": Evil()}}, path)


def test_malicious_ckpt_refused_without_running(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    _evil_checkpoint(tmp_path / "model.ckpt", marker)
    with pytest.raises(ArtifactError, match=r"model\.ckpt: refusing to unpickle posix\.system: .*nothing was "
                                            r"executed"):
        convert_checkpoint(tmp_path / "model.ckpt", "anomalib-dinomaly")
    code, err = run_main(["import", str(tmp_path / "model.ckpt"), "--format", "anomalib-dinomaly", "-o",
                          str(tmp_path / "out")], monkeypatch, capsys)
    assert code == 1 and err.startswith("error: ") and "refusing to unpickle posix.system" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_wrong_format_refused_naming_what_was_found(tmp_path):
    dino = GOLDEN / "dinomaly" / "tiny" / "model.pth"
    anom = GOLDEN / "anomalib-dinomaly" / "tiny" / "model.ckpt"
    with pytest.raises(ArtifactError, match=r"expected an original Dinomaly checkpoint .*, found an anomalib "
                                            r"Dinomaly checkpoint \(bias-free MLPs\); import it with --format "
                                            r"anomalib-dinomaly"):
        import_checkpoint(anom, "dinomaly", tmp_path / "x")
    with pytest.raises(ArtifactError, match=r"expected an anomalib Dinomaly checkpoint .*, found an original"):
        import_checkpoint(dino, "anomalib-dinomaly", tmp_path / "x")
    with pytest.raises(ArtifactError, match=r"expected an L2BT .* found an original Dinomaly"):
        import_checkpoint(dino, "l2bt", tmp_path / "x")
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ArtifactError, match="found a state dict of no known layout"):
        import_checkpoint(tmp_path / "other.pth", "timm", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_missing_and_mismatched_tensors_refused(tmp_path):
    orig = torch.load(GOLDEN / "dinomaly" / "tiny" / "model.pth")
    sd = dict(orig)
    del sd["decoder.3.attn.qkv.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ArtifactError, match=r"missing 1 tensors .*head\.decoder\.3\.attn\.qkv\.weight"):
        convert_checkpoint(tmp_path / "missing.pth", "dinomaly", input_size=56, resize=64)
    sd = dict(orig)
    sd["decoder.0.mlp.fc1.weight"] = torch.zeros(64, 32)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ArtifactError, match=r"'head\.decoder\.0\.mlp\.0\.weight' has shape \(64, 32\), the "
                                            r"detector expects \(128, 32\)"):
        convert_checkpoint(tmp_path / "shape.pth", "dinomaly", input_size=56, resize=64)
    with pytest.raises(ArtifactError, match=r"does not fit backbone 'vit_tiny_test_patch14'"):
        convert_checkpoint(GOLDEN / "dinomaly" / "tiny" / "model.pth", "dinomaly", input_size=56, resize=64,
                           backbone="vit_tiny_test_patch14")
    sd = dict(orig)
    sd["decoder.0.ls1.gamma"] = torch.ones(32)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(ArtifactError, match=r"1 tensors edgead does not know how to use \(first: decoder\.0\.ls1"):
        convert_checkpoint(tmp_path / "extra.pth", "dinomaly", input_size=56, resize=64)


def test_anomalib_blur_kernel_is_checked(tmp_path):
    ck = load_restricted(GOLDEN / "anomalib-dinomaly" / "tiny" / "model.ckpt")
    ck["state_dict"]["model.gaussian_blur.kernel"] = ck["state_dict"]["model.gaussian_blur.kernel"] * 1.1
    torch.save({"state_dict": ck["state_dict"]}, tmp_path / "blur.ckpt")
    with pytest.raises(ArtifactError, match="Gaussian blur kernel .* is not the 5x5 sigma-4 kernel"):
        convert_checkpoint(tmp_path / "blur.ckpt", "anomalib-dinomaly")


def test_l2bt_needs_teacher_and_both_students(tmp_path):
    folder, meta, _ = golden("l2bt", "tiny")
    fwd, teacher = folder / meta["forward_file"], folder / meta["teacher_file"]
    with pytest.raises(InputError, match="pass the DINOv2 teacher weights with --weights"):
        convert_checkpoint(fwd, "l2bt", input_size=112)
    with pytest.raises(InputError, match="pass the other with --backward"):
        convert_checkpoint(fwd, "l2bt", weights=teacher, input_size=112)
    sd = torch.load(folder / meta["backward_file"])
    sd["projection.weight"] = torch.zeros(32, 8)
    torch.save(sd, tmp_path / "bad_backward.pth")
    with pytest.raises(ArtifactError, match=r"'head\.backward_student\.2\.weight' has shape \(32, 8\)"):
        convert_checkpoint(fwd, "l2bt", weights=teacher, backward=tmp_path / "bad_backward.pth", input_size=112)


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


def test_cli_refusal_is_one_line(tmp_path, monkeypatch, capsys):
    code, err = run_main(["import", str(GOLDEN / "anomalib-dinomaly" / "tiny" / "model.ckpt"), "--format",
                          "dinomaly", "-o", str(tmp_path / "y")], monkeypatch, capsys)
    assert code == 1 and not (tmp_path / "y").exists()
    assert err.startswith("error: model.ckpt: expected an original Dinomaly") and len(err.strip().splitlines()) == 1


# -- hardening (issue 25, item 9) -------------------------------------------------------------------------------------
def _anomalib_variant(tmp_path: Path, name: str, edit) -> Path:
    """The golden anomalib model.ckpt with ``edit(checkpoint dict)`` applied, saved as ``name``."""
    ck = load_restricted(GOLDEN / "anomalib-dinomaly" / "tiny" / "model.ckpt")
    ck = {k: v for k, v in ck.items() if k in ("state_dict", "hyper_parameters", "anomalib_pre_processor_config",
                                                 "anomalib_post_processor_config")}
    ck["hyper_parameters"] = {k: v for k, v in ck["hyper_parameters"].items() if k != "precision"}  # an Inert record
    edit(ck)
    torch.save(ck, tmp_path / name)
    return tmp_path / name


def _set(path: str, value):
    """An edit that sets the checkpoint entry at the dotted ``path`` (list items by index) to ``value``."""
    def edit(ck: dict) -> None:
        *parents, last = path.split(".")
        node = ck
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


TRANSFORMS = "anomalib_pre_processor_config.transform.init_args.transforms"


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("hyper_parameters", ["encoder_name", "x"], "expected hyper_parameters to be a dict, found list"),
    ("hyper_parameters.target_layers", "2,3", "expected hyper_parameters.target_layers to be a list of block "
                                              "indices, found str"),
    ("hyper_parameters.target_layers", [2, "3"], "expected hyper_parameters.target_layers to be a list of block "
                                                 "indices, found list"),
    ("hyper_parameters.fuse_layer_encoder", [0, 1], "expected hyper_parameters.fuse_layer_encoder to be a list of "
                                                    "lists of indices, found list"),
    ("hyper_parameters.remove_class_token", "no", "expected hyper_parameters.remove_class_token to be a bool, "
                                                  "found str"),
    ("anomalib_pre_processor_config", "Resize(128)", "expected anomalib_pre_processor_config to be a dict, found "
                                                     "str"),
    ("anomalib_pre_processor_config.transform", 7, "expected anomalib_pre_processor_config.transform to be a dict, "
                                                   "found int"),
    (TRANSFORMS, {"size": 1}, f"expected {TRANSFORMS} to be a list of dicts, found dict"),
    (TRANSFORMS + ".0", "Resize", f"expected {TRANSFORMS} to be a list of dicts, found list"),
    (TRANSFORMS + ".0.init_args.size", "128", f"expected {TRANSFORMS}[0].init_args.size to be a side or a list of "
                                              f"sides, found str"),
    (TRANSFORMS + ".1.init_args.size", [], f"expected {TRANSFORMS}[1].init_args.size to be a side or a list of "
                                           f"sides, found list"),
    (TRANSFORMS + ".0.init_args.size", [128.5, 128.5], f"expected {TRANSFORMS}[0].init_args.size to be a side or a "
                                                       f"list of sides, found list"),
    ("anomalib_post_processor_config", None, None),  # absent: anomalib's defaults, imported as before
    ("anomalib_post_processor_config", [0.5], "expected anomalib_post_processor_config to be a dict, found list"),
    ("anomalib_post_processor_config.image_sensitivity", "high", "expected "
     "anomalib_post_processor_config.image_sensitivity to be a number in [0, 1], found str"),
    ("anomalib_post_processor_config.image_sensitivity", 1.5, "expected "
     "anomalib_post_processor_config.image_sensitivity to be a number in [0, 1], found float"),
    ("anomalib_post_processor_config.enable_normalization", "yes", "expected "
     "anomalib_post_processor_config.enable_normalization to be a bool, found str"),
])
def test_malformed_lightning_metadata_is_one_line(tmp_path, monkeypatch, capsys, path, value, expected):
    """Lightning metadata of the wrong type or shape in an anomalib checkpoint: one ArtifactError line naming the
    file, the entry and what was expected (before: AttributeError, TypeError or ValueError tracebacks)."""
    ckpt = _anomalib_variant(tmp_path, "model.ckpt", _set(path, value))
    if expected is None:
        golden_threshold = convert_checkpoint(GOLDEN / "anomalib-dinomaly" / "tiny" / "model.ckpt",
                                              "anomalib-dinomaly").spec.threshold
        assert convert_checkpoint(ckpt, "anomalib-dinomaly").spec.threshold == pytest.approx(golden_threshold)
        return
    message = f"model.ckpt: malformed Lightning metadata: {expected}"
    with pytest.raises(ArtifactError) as info:
        convert_checkpoint(ckpt, "anomalib-dinomaly")
    assert str(info.value) == message
    code, err = run_main(["import", str(ckpt), "--format", "anomalib-dinomaly", "-o", str(tmp_path / "out")],
                         monkeypatch, capsys)
    assert code == 1 and err == f"error: {message}\n" and not (tmp_path / "out").exists()


def _deflated(src: Path, dst: Path) -> None:
    """``src`` (a torch zip checkpoint) rewritten with every entry deflated: what a decompression bomb looks like."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            with zin.open(info) as fin, zout.open(info.filename, "w", force_zip64=True) as fout:
                while block := fin.read(1 << 24):
                    fout.write(block)


def test_decompression_bomb_refused_before_anything_is_inflated(tmp_path, monkeypatch, capsys):
    """A 256 MB tensor of zeros deflated into a ~260 KB .pth: refused from the zip directory alone, before torch
    reads (inflates) a byte of it; before the fix torch.load inflated all 256 MB, and only then was the layout
    refused."""
    torch.save({"w": torch.zeros(64 << 20)}, tmp_path / "plain.pth")
    _deflated(tmp_path / "plain.pth", tmp_path / "bomb.pth")
    (tmp_path / "plain.pth").unlink()
    size = (tmp_path / "bomb.pth").stat().st_size
    assert size < 300_000

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was unpickled or inflated")

    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr(torch.serialization, "get_unsafe_globals_in_checkpoint", never)
    with pytest.raises(ArtifactError) as info:
        convert_checkpoint(tmp_path / "bomb.pth", "dinomaly")
    found = re.fullmatch(rf"bomb\.pth: expected a checkpoint stored as torch\.save writes it \(uncompressed\), found "
                         rf"{size} bytes that inflate to (\d+); nothing was loaded \(re-save it with torch\.save\)",
                         str(info.value))
    assert found, str(info.value)
    assert (64 << 20) * 4 < int(found[1]) < (64 << 20) * 4 + 4096  # the tensor's 256 MB and the small pickle
    code, err = run_main(["import", str(tmp_path / "bomb.pth"), "--format", "dinomaly", "-o", str(tmp_path / "o")],
                         monkeypatch, capsys)
    assert code == 1 and err == f"error: {info.value}\n"


def test_size_cap_and_its_override(tmp_path, monkeypatch):
    """The 4 GiB cap (EDGEAD_IMPORT_MAX_BYTES overrides it) holds for zip checkpoints (their entries' sizes),
    safetensors files and the extra files an importer reads; legacy pickles, whose sizes cannot be bounded before
    PyTorch allocates them, are refused."""
    from safetensors.torch import save_file

    from edgead.importers.ckpt import MAX_BYTES, max_bytes

    assert MAX_BYTES == 4 << 30 and max_bytes() == MAX_BYTES
    model = GOLDEN / "dinomaly" / "tiny" / "model.pth"
    with zipfile.ZipFile(model) as z:
        total = sum(i.file_size for i in z.infolist())
    monkeypatch.setenv("EDGEAD_IMPORT_MAX_BYTES", str(total - 1))
    with pytest.raises(ArtifactError) as info:
        convert_checkpoint(model, "dinomaly")
    assert str(info.value) == (f"model.pth: expected at most {total - 1} bytes once decompressed, found {total} bytes; "
                               f"nothing was loaded (a larger trusted file: set EDGEAD_IMPORT_MAX_BYTES)")
    monkeypatch.setenv("EDGEAD_IMPORT_MAX_BYTES", str(total))
    assert convert_checkpoint(model, "dinomaly").spec.family == "dinomaly"
    save_file({"w": torch.zeros(1000)}, str(tmp_path / "w.safetensors"))
    size = (tmp_path / "w.safetensors").stat().st_size
    monkeypatch.setenv("EDGEAD_IMPORT_MAX_BYTES", "4000")
    with pytest.raises(ArtifactError, match=rf"^w\.safetensors: expected at most 4000 bytes once decompressed, "
                                            rf"found {size} bytes"):
        convert_checkpoint(tmp_path / "w.safetensors", "timm")
    folder, meta, _ = golden("l2bt", "tiny")  # the teacher, read beside the students, is capped too
    teacher = (folder / meta["teacher_file"]).stat().st_size
    monkeypatch.setenv("EDGEAD_IMPORT_MAX_BYTES", str(teacher // 2))
    with pytest.raises(ArtifactError, match=rf"^{meta['teacher_file']}: expected at most {teacher // 2} bytes"):
        convert_checkpoint(folder / meta["forward_file"], "l2bt", weights=folder / meta["teacher_file"],
                           backward=folder / meta["backward_file"], input_size=112)
    monkeypatch.setenv("EDGEAD_IMPORT_MAX_BYTES", "4GB")
    with pytest.raises(InputError, match="^expected EDGEAD_IMPORT_MAX_BYTES to be a positive number of bytes, "
                                         "found '4GB'$"):
        convert_checkpoint(model, "dinomaly")
    monkeypatch.delenv("EDGEAD_IMPORT_MAX_BYTES")
    torch.save(torch.load(model), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(ArtifactError, match=r"^legacy\.pth: expected a torch zip checkpoint \(torch\.save since "
                                            r"PyTorch 1\.6\) or a \.safetensors file, found neither"):
        convert_checkpoint(tmp_path / "legacy.pth", "dinomaly")


def test_checkpoint_swapped_after_the_size_check_is_not_what_loads(tmp_path, monkeypatch):
    """The size check and the load read one open file: a checkpoint replaced on disk right after its zip directory
    was sized (here by another state dict) is not what gets loaded; before, the load opened the path again."""
    model = tmp_path / "model.pth"
    shutil.copy(GOLDEN / "dinomaly" / "tiny" / "model.pth", model)
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    real_infolist = zipfile.ZipFile.infolist

    def infolist_then_swap(self):
        entries = real_infolist(self)
        if (tmp_path / "other.pth").exists():
            (tmp_path / "other.pth").replace(model)
        return entries

    monkeypatch.setattr(zipfile.ZipFile, "infolist", infolist_then_swap)
    assert convert_checkpoint(model, "dinomaly").spec.family == "dinomaly"
    assert not (tmp_path / "other.pth").exists() and sniff(torch.load(model)) == "unknown"  # the swap happened
