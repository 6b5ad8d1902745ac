"""Issue 10: data loss, hostile manifests, NaN verdicts, decompression bombs and the bad-input catalogue.

Each test reproduces one finding of the issue (it failed on the main of that day) and keeps it fixed. CLI cases
run in-process through ``edgead.cli.app.main`` (the real entry point, with its one error mapper) to keep the
suite fast; tests/test_cli.py runs the installed command as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead.errors import ArtifactError, EdgeadError, InputError, OutputError
from edgead.fsutil import OUTPUT_MARK, atomic_dir, atomic_file, check_output_target
from edgead.runtimes.manifest import MANIFEST, find_artifacts, read_manifest, safe_name, write_manifest
from edgead.spec import DetectorSpec

# -- helpers -------------------------------------------------------------------------------------------------


def cli(capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: object) -> tuple[int, str, str]:
    """Run ``edgead ARGS`` in-process; return (exit code, stdout, stderr)."""
    from edgead.cli.app import main

    monkeypatch.setattr(sys, "argv", ["edgead", *map(str, args)])
    monkeypatch.delenv("EDGEAD_DEBUG", raising=False)
    capfd.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_error(result: tuple[int, str, str], *needles: str) -> str:
    code, _out, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def user_folder(path: Path) -> dict[str, bytes]:
    """A folder of someone's photos and notes; returns its contents to compare afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path / "photo.png"), np.full((8, 8, 3), 77, np.uint8))
    (path / "notes.txt").write_text("calibration notes, do not lose\n")
    return snapshot(path)


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def _spec(threshold: float | None = 0.5) -> DetectorSpec:
    return DetectorSpec("fbft", "vit_tiny_test_patch14", "layernorm", (3, 5), (56, 56), threshold=threshold)


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def export(tiny_export) -> Path:
    return tiny_export("fbft") / "export"


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(d / f"{i}.png"), rng.integers(0, 255, (56, 56, 3), dtype=np.uint8))
    return d


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*-*"))  # the export itself, no compiled sub-folders
    return dst


# -- 2: one output-target rule ----------------------------------------------------------------------------------


def test_output_rule_refuses_user_data_and_accepts_edgead_outputs(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = user_folder(tmp_path / "photos")
    with pytest.raises(OutputError, match="found other files"):
        check_output_target(tmp_path / "photos")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match="found a file or a link"):
        check_output_target(tmp_path / "file.txt")
    for cwd_like in (".", tmp_path, tmp_path.parent):
        with pytest.raises(OutputError, match="working folder"):
            check_output_target(cwd_like)
    with pytest.raises(OutputError, match="overlaps the input"):
        check_output_target(tmp_path / "photos", inputs=(tmp_path / "photos" / "sub",))
    assert check_output_target(tmp_path / "photos" / "heat", inputs=(tmp_path / "photos",)).name == "heat"
    with pytest.raises(OutputError, match="overlaps the input"):
        check_output_target(tmp_path / "photos", inputs=(tmp_path / "photos" / "photo.png",))
    # atomic_dir applies the rule, and the refused folder is untouched
    with pytest.raises(OutputError), atomic_dir(tmp_path / "photos") as tmp:
        (tmp / "new").write_text("y")
    assert snapshot(tmp_path / "photos") == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left behind
    # an edgead output (marked) is replaced; an empty folder is fine
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
    assert (tmp_path / "out" / OUTPUT_MARK).is_file()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [OUTPUT_MARK, "b"]


def test_outputs_are_readable_by_other_users(tmp_path: Path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "art") as tmp:
            (tmp / "m").write_text("1")
        with atomic_file(tmp_path / "art" / "f") as tmp:
            tmp.write_text("2")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "art").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "art" / "f").stat().st_mode) == 0o644


@pytest.mark.parametrize("target", ["photos", "file", "dot", "images"])
def test_predict_out_never_replaces_user_data(tmp_path, capfd, monkeypatch, export, images, target):
    monkeypatch.chdir(tmp_path)
    before = user_folder(tmp_path / "photos")
    (tmp_path / "file").write_text("a regular file\n")
    images_before = snapshot(images)
    out = {"photos": tmp_path / "photos", "file": tmp_path / "file", "dot": ".", "images": images}[target]
    assert_one_error(cli(capfd, monkeypatch, "predict", export, images, "--out", out))
    assert snapshot(tmp_path / "photos") == before
    assert (tmp_path / "file").read_text() == "a regular file\n"
    assert snapshot(images) == images_before


def test_fit_export_import_calibrate_refuse_foreign_targets(tmp_path, capfd, monkeypatch, export, tiny_synthetic):
    before = user_folder(tmp_path / "photos")
    train = tiny_synthetic / "train" / "good"
    train_before = snapshot(train)
    assert_one_error(cli(capfd, monkeypatch, "fit", tiny_synthetic, "--backbone", "vit_tiny_test_patch14",
                         "--size", "56", "--epochs", "1", "-o", tmp_path / "photos"), "found other files")
    assert_one_error(cli(capfd, monkeypatch, "fit", train, "--backbone", "vit_tiny_test_patch14",
                         "--size", "56", "--epochs", "1", "-o", tiny_synthetic), "overlaps the input")
    assert_one_error(cli(capfd, monkeypatch, "export", export.parent / "ckpt", "-o", tmp_path / "photos"),
                     "found other files")
    assert_one_error(cli(capfd, monkeypatch, "import", tmp_path / "x.pth", "-f", "timm", "-o",
                         tmp_path / "photos"), "found other files")
    art = copy_artifact(export, tmp_path / "art")
    user_folder(art / "onnx-int8")
    assert_one_error(cli(capfd, monkeypatch, "calibrate", art, "--calib", train), "found other files")
    assert snapshot(tmp_path / "photos") == before and snapshot(train) == train_before
    assert (art / "onnx-int8" / "notes.txt").is_file()


# -- 4: manifest names ----------------------------------------------------------------------------------------


def _artifact(tmp_path: Path) -> Path:
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "model.xml").write_bytes(b"<net/>")
    (folder / "model.bin").write_bytes(b"\0" * 16)
    write_manifest(folder, "openvino", "fp32", "model.xml", _spec())
    return folder


def _edit(folder: Path, **changes) -> None:
    d = json.loads((folder / MANIFEST).read_text())
    d.update(changes)
    (folder / MANIFEST).write_text(json.dumps(d))


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "..", "a/b", ".hidden", "c:x", "a\\b", "", "x\n"])
def test_manifest_refuses_names_that_leave_the_folder(tmp_path, name):
    folder = _artifact(tmp_path)
    (tmp_path / "secret").write_bytes(b"outside")
    files = json.loads((folder / MANIFEST).read_text())["files"]
    _edit(folder, files={**files, name: "0" * 64})
    with pytest.raises(ArtifactError, match="plain file names"):
        read_manifest(folder)
    _edit(folder, files=files, model=name)
    with pytest.raises(ArtifactError, match="plain model file name"):
        read_manifest(folder)
    assert not safe_name(name)


def test_manifest_refuses_symlinks_fifos_and_unlisted_files(tmp_path):
    folder = _artifact(tmp_path)
    read_manifest(folder)
    (tmp_path / "outside.bin").write_bytes((folder / "model.bin").read_bytes())
    (folder / "model.bin").unlink()
    (folder / "model.bin").symlink_to(tmp_path / "outside.bin")  # same bytes, but outside the folder
    with pytest.raises(ArtifactError, match="regular file inside its folder"):
        read_manifest(folder)
    (folder / "model.bin").unlink()
    os.mkfifo(folder / "model.bin")  # hashing a FIFO would block forever
    with pytest.raises(ArtifactError, match="FIFO"):
        read_manifest(folder)
    (folder / "model.bin").unlink()
    (folder / "model.bin").write_bytes(b"\0" * 16)
    d = json.loads((folder / MANIFEST).read_text())
    del d["files"]["model.bin"]  # OpenVINO reads model.bin beside model.xml: it must be covered by a hash
    (folder / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="does not list model.bin"):
        read_manifest(folder)


def test_verify_lists_no_hidden_temp_folders(tmp_path):
    folder = _artifact(tmp_path)
    crashed = folder / ".openvino-fp32.abc.tmp"
    shutil.copytree(folder, folder / "openvino-fp32")
    shutil.copytree(folder / "openvino-fp32", crashed)
    assert find_artifacts(folder) == [folder, folder / "openvino-fp32"]


# -- 5: NaN is never normal -----------------------------------------------------------------------------------


def test_nan_score_is_anomalous_and_nan_threshold_refused(tmp_path, export):
    from edgead.runtimes import load
    from edgead.viz import is_anomalous

    runner = load(export, "onnxruntime")
    p = runner._wrap(np.array([np.nan, 0.0, 1e9], np.float32), np.zeros((3, 56, 56), np.float32), 0.0)
    thr = runner.spec.threshold
    if thr is not None:
        assert p.labels.tolist() == [True, 0.0 > thr, True]
    assert is_anomalous(float("nan"), 0.5) and not is_anomalous(0.1, 0.5)
    with pytest.raises(EdgeadError, match="threshold must be a finite number"):
        _spec(threshold=float("nan"))
    folder = _artifact(tmp_path)
    text = (folder / MANIFEST).read_text().replace('"threshold": 0.5', '"threshold": NaN')
    (folder / MANIFEST).write_text(text)
    with pytest.raises(ArtifactError, match="corrupt"):
        read_manifest(folder)


# -- 6, 7, 8: one error line for the bad-input catalogue --------------------------------------------------------


def test_pixel_cap_refuses_a_decompression_bomb_before_decoding(tmp_path, capfd, monkeypatch, export):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(30000, 30000))
    assert_one_error(cli(capfd, monkeypatch, "predict", export, bomb), "30000x30000", "EDGEAD_MAX_PIXELS")
    import edgead.imageio as imageio

    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((200, 100, 3), np.uint8))
    monkeypatch.setattr(imageio, "MAX_PIXELS", 10_000)
    with pytest.raises(InputError, match="100x200"):
        imageio.read_image(small)
    monkeypatch.setattr(imageio, "MAX_PIXELS", 20_000)
    assert imageio.read_image(small).shape == (200, 100, 3)


def test_corrupt_and_truncated_jpeg_are_refused(tmp_path):
    from edgead.imageio import read_image

    rng = np.random.default_rng(3)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = buf.tobytes()
    (tmp_path / "good.jpg").write_bytes(data)
    assert read_image(tmp_path / "good.jpg").shape == (64, 64, 3)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="truncated"):
        read_image(tmp_path / "cut.jpg")
    bad = bytearray(data)
    mid = len(bad) // 2
    bad[mid : mid + 4] = b"\xff\x13\xff\x77"  # markers that cannot occur inside scan data
    (tmp_path / "bad.jpg").write_bytes(bytes(bad))
    with pytest.raises(InputError, match="corrupt marker 0xFF13"):
        read_image(tmp_path / "bad.jpg")


def test_mismatched_mask_is_refused(tmp_path, tiny_synthetic, export):
    from edgead.data import load_masks, test_items

    cat = tmp_path / "cat"
    shutil.copytree(tiny_synthetic, cat)
    items = test_items(cat)
    item = next(i for i in items if i.mask is not None)
    cv2.imwrite(str(item.mask), np.full((10, 30), 255, np.uint8))
    with pytest.raises(InputError, match="to have its image's size 56x56, found 10x30"):
        load_masks(items, read_manifest(export).spec)


@pytest.mark.parametrize("args_and_needle", [
    (("predict", "{export}", "{images}", "--batch", "0"), "--batch must be a positive number"),
    (("predict", "{export}", "{images}", "--batch", "-1"), "--batch must be a positive number"),
    (("verify", "{export}", "--batch", "0"), "--batch must be a positive number"),
    (("bench", "{export}", "--batch", "0,1"), "--batch must be a positive number"),
    (("fit", "{synth}", "--backbone", "vit_tiny_test_patch14", "--size", "0", "-o", "{tmp}/o"),
     "input size must be a positive"),
    (("fit", "{synth}", "--backbone", "vit_tiny_test_patch14", "--size", "56", "--epochs", "0", "-o", "{tmp}/o"),
     "epochs must be at least 1"),
    (("fit", "{synth}", "--backbone", "vit_tiny_test_patch14", "--size", "57", "-o", "{tmp}/o"),
     "multiple of the patch size"),
    (("fit", "{synth}", "--norm", "batchnorm", "--backbone", "vit_tiny_test_patch14", "--size", "56",
      "-o", "{tmp}/o"), "norm must be 'layernorm' or 'dyt'"),
])
def test_bad_flags_are_one_error_line(tmp_path, capfd, monkeypatch, export, images, tiny_synthetic, args_and_needle):
    args, needle = args_and_needle
    args = [a.format(export=export, images=images, synth=tiny_synthetic, tmp=tmp_path) for a in args]
    assert_one_error(cli(capfd, monkeypatch, *args), needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mutation", ["batch_str", "files_list", "input_size", "nested", "spec_field", "model_int"])
def test_bad_manifests_are_one_error_line(tmp_path, capfd, monkeypatch, export, images, mutation):
    art = copy_artifact(export, tmp_path / "art")
    d = json.loads((art / MANIFEST).read_text())
    if mutation == "batch_str":
        d["batch"] = "1:8"
    elif mutation == "files_list":
        d["files"] = list(d["files"])
    elif mutation == "input_size":  # a manifest that disagrees with its model (hashes still match)
        d["spec"]["input_size"] = [112, 112]
    elif mutation == "spec_field":
        d["spec"]["layers"] = "3,5"
    else:
        d["model"] = 7
    text = json.dumps(d) if mutation != "nested" else json.dumps({**d, "extra": 0}).replace(
        '"extra": 0', '"extra": ' + "[" * 5000 + "]" * 5000)
    (art / MANIFEST).write_text(text)
    assert_one_error(cli(capfd, monkeypatch, "predict", art, images))


def test_checkpoint_spec_missing_a_field_is_one_error_line(tmp_path, capfd, monkeypatch, export):
    ck = tmp_path / "ck"
    shutil.copytree(export.parent / "ckpt", ck)
    d = json.loads((ck / "spec.json").read_text())
    del d["layers"]
    (ck / "spec.json").write_text(json.dumps(d))
    assert_one_error(cli(capfd, monkeypatch, "export", ck, "-o", tmp_path / "o"), "layers")
    assert not (tmp_path / "o").exists()


def test_verify_without_onnxruntime_uses_openvino_as_reference(monkeypatch, export):
    pytest.importorskip("openvino")
    import importlib.util

    import edgead.runtimes.loader as loader
    from edgead.fidelity import reference_for

    monkeypatch.setattr(loader, "missing_engine", lambda name: "not installed" if name == "onnxruntime" else None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # a line PC: no torch either
                        lambda name, *a: None if name == "torch" else real(name, *a))
    ref = reference_for(export)  # the one rule verify, the gate, the precision graphs and tune use
    assert ref.kind == "openvino fp32" and ref.runner.engine == "openvino"
    assert ref.label == "FP32 ONNX export in OpenVINO (PyTorch not installed)"


def test_models_raise_edgead_errors_not_bare_value_errors():
    from edgead.models import build_detector, detector_spec

    with pytest.raises(EdgeadError, match="multiple of the patch size"):
        build_detector(detector_spec("fbft", "vit_tiny_test_patch14", "layernorm", input_size=57))
