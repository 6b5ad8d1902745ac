"""libedgead, the C runtime: built once per session with CMake, checked from C (tests/c/test_edgead.c), through
ctypes (edgead.runtimes.c_api) and under valgrind, on the tiny 56x56 FBFT artifact, against the Python OpenVINO
runner within 1e-5."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgead.errors import EdgeadError

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")),
    reason="building libedgead needs cmake and a C compiler (apt-get install cmake gcc)",
)

TOL = 1e-5
SUPPRESSIONS = Path(__file__).parent / "c" / "valgrind.supp"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgead.export.build_c import build_c

    return build_c(tmp_path_factory.mktemp("libedgead") / "out", with_tests=True)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("openvino")
    from edgead.export import export_onnx
    from edgead.export.openvino import compile_openvino
    from edgead.models import build_detector, detector_spec

    out = tmp_path_factory.mktemp("tiny")
    detector = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", "layernorm", input_size=56))
    export_onnx(detector, out)
    return compile_openvino(out, "fp32")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (3, 56, 56, 3), dtype=np.uint8)
    ramp = np.broadcast_to(np.linspace(0, 255, 56, dtype=np.float32)[None, :, None], (56, 56, 3)).astype(np.uint8)
    gray = np.full((56, 56, 3), 128, np.uint8)
    gray[20:30, 25:35] = (250, 10, 10)  # a red blob
    return np.ascontiguousarray(np.stack([*noise, ramp, gray]))


@pytest.fixture(scope="module")
def reference(artifact: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from edgead.runtimes import load

    with load(artifact, engine="openvino") as runner:
        preds = runner.predict(images)
    return preds.scores, preds.maps


def _variant(artifact: Path, root: Path, name: str, edit=None, manifest=None) -> Path:
    """A copy of the artifact, with ``edit(folder)`` applied and/or its manifest dict changed by ``manifest``."""
    folder = root / name
    shutil.copytree(artifact, folder)
    if manifest is not None:
        path = folder / "manifest.json"
        d = json.loads(path.read_text())
        manifest(d)
        path.write_text(json.dumps(d, indent=1))
    if edit is not None:
        edit(folder)
    return folder


def _flip_byte(folder: Path) -> None:
    data = bytearray((folder / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "model.bin").write_bytes(bytes(data))


def _break_json(folder: Path) -> None:
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text[: len(text) // 2])


@pytest.fixture(scope="module")
def bad(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Artifact folders that must fail to open, with the status they must fail with."""
    root = tmp_path_factory.mktemp("bad")

    def newer(d: dict) -> None:
        d["format"] = 2

    def unknown_engine(d: dict) -> None:
        d["engine"] = "coreml"

    def bad_input_size(d: dict) -> None:
        d["spec"]["input_size"] = [56]

    def fifo(folder: Path) -> None:  # hashing a FIFO blocked forever (issue 10)
        (folder / "model.bin").unlink()
        os.mkfifo(folder / "model.bin")

    def dev_zero(folder: Path) -> None:  # an endless file through a symlink
        (folder / "model.bin").unlink()
        (folder / "model.bin").symlink_to("/dev/zero")

    def outside(folder: Path) -> None:  # the right bytes, but outside the artifact folder
        shutil.copy(folder / "model.bin", folder.parent / f"{folder.name}.bin")
        (folder / "model.bin").unlink()
        (folder / "model.bin").symlink_to(folder.parent / f"{folder.name}.bin")

    def unlisted_bin(d: dict) -> None:  # OpenVINO reads model.bin; it must be covered by a hash
        del d["files"]["model.bin"]

    def nan_threshold(folder: Path) -> None:
        path = folder / "manifest.json"
        d = json.loads(path.read_text())
        d["spec"]["threshold"] = float("nan")
        path.write_text(json.dumps(d))  # Python writes the non-JSON literal NaN

    def infinite_threshold(d: dict) -> None:
        d["spec"]["threshold"] = 1e300 * 1e300

    return {
        "FIFO model.bin": (_variant(artifact, root, "fifo", edit=fifo), "EDGEAD_ERR_CORRUPT_ARTIFACT"),
        "model.bin -> /dev/zero": (_variant(artifact, root, "zero", edit=dev_zero), "EDGEAD_ERR_CORRUPT_ARTIFACT"),
        "model.bin outside": (_variant(artifact, root, "outside", edit=outside), "EDGEAD_ERR_CORRUPT_ARTIFACT"),
        "unlisted model.bin": (_variant(artifact, root, "unlisted", manifest=unlisted_bin),
                               "EDGEAD_ERR_CORRUPT_ARTIFACT"),
        "NaN threshold": (_variant(artifact, root, "nan", edit=nan_threshold), "EDGEAD_ERR_CORRUPT_ARTIFACT"),
        "infinite threshold": (_variant(artifact, root, "inf", manifest=infinite_threshold),
                               "EDGEAD_ERR_CORRUPT_ARTIFACT"),
        "changed model.bin": (_variant(artifact, root, "flipped", edit=_flip_byte), "EDGEAD_ERR_CORRUPT_ARTIFACT"),
        "broken JSON": (_variant(artifact, root, "broken", edit=_break_json), "EDGEAD_ERR_CORRUPT_ARTIFACT"),
        "newer format": (_variant(artifact, root, "newer", manifest=newer), "EDGEAD_ERR_UNSUPPORTED"),
        "unknown engine": (_variant(artifact, root, "coreml", manifest=unknown_engine), "EDGEAD_ERR_UNSUPPORTED"),
        "bad input size": (_variant(artifact, root, "size", manifest=bad_input_size), "EDGEAD_ERR_CORRUPT_ARTIFACT"),
        "missing model.bin": (_variant(artifact, root, "nobin", edit=lambda f: (f / "model.bin").unlink()),
                              "EDGEAD_ERR_NOT_FOUND"),
        "no manifest": (_variant(artifact, root, "nomanifest", edit=lambda f: (f / "manifest.json").unlink()),
                        "EDGEAD_ERR_NOT_FOUND"),
    }


@pytest.fixture(scope="module")
def data_dir(images: np.ndarray, reference: tuple[np.ndarray, np.ndarray], tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cdata")
    images.tofile(folder / "images.u8")
    reference[0].astype(np.float32).tofile(folder / "ref_scores.f32")
    reference[1].astype(np.float32).tofile(folder / "ref_maps.f32")
    return folder


@pytest.fixture(scope="module")
def lib(built: Path):
    from edgead.runtimes.c_api import CLibrary

    return CLibrary(built / "libedgead.so")


def test_build_outputs(built: Path) -> None:
    names = {p.name for p in built.iterdir()}
    assert {"libedgead.so", "libedgead.so.1", "edgead.h", "edgead_example", "test_edgead"} <= names
    exported = subprocess.run(["nm", "-D", "--defined-only", str(built / "libedgead.so")], capture_output=True,
                              text=True).stdout if shutil.which("nm") else ""
    if exported:  # only the API is exported, nothing internal
        symbols = {line.split()[-1] for line in exported.splitlines() if " T " in line}
        assert symbols and all(s.startswith("edgead_") for s in symbols), symbols
        assert "edgead_openvino_backend" not in exported


def test_c_program(built: Path, artifact: Path, data_dir: Path, bad: dict[str, tuple[Path, str]]) -> None:
    cmd = [str(built / "test_edgead"), "--artifact", str(artifact), "--data", str(data_dir), "--tol", str(TOL)]
    for folder, status in bad.values():
        cmd += ["--bad", f"{folder}={status}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"# 0 of (\d+) checks failed", proc.stdout)
    assert int(re.search(r"^1\.\.(\d+)$", proc.stdout, re.M).group(1)) >= 30
    assert "not ok" not in proc.stdout


def test_ctypes_matches_python_runner(lib, artifact: Path, images: np.ndarray, reference) -> None:
    ref_scores, ref_maps = reference
    with lib.open(artifact) as h:
        assert h.input_size == (56, 56) and h.max_batch is None and h.threshold is None
        assert "openvino fp32 on CPU (inference f32)" in h.describe()
        scores, maps = h.predict(images)
        assert scores.shape == (5,) and maps.shape == (5, 56, 56)
        assert np.abs(scores - ref_scores).max() <= TOL
        assert np.abs(maps - ref_maps).max() <= TOL
        # a crop of wider frames: rows are strided, passed to C without a copy
        wide = np.zeros((5, 56, 70, 3), np.uint8)
        wide[:, :, 5:61] = images
        s2, m2 = h.predict(wide[:, :, 5:61])
        assert np.abs(s2 - ref_scores).max() <= TOL and np.abs(m2 - ref_maps).max() <= TOL
        s3, m3 = h.predict(images[3:4], maps=False)
        assert m3 is None and abs(float(s3[0]) - float(ref_scores[3])) <= TOL
    assert lib.version == __import__("edgead").__version__


def test_manifest_batch_range_and_threshold(lib, artifact: Path, images: np.ndarray, reference, tmp_path) -> None:
    """batch [1, 2] splits 5 images into 2+2+1; [4, 4] pads 1 or 3 images up to 4; the threshold and a manifest
    with \\u escapes (and a surrogate pair) are read by the C JSON reader."""
    ref_scores, ref_maps = reference

    def chunked(d: dict) -> None:
        d["batch"] = [1, 2]
        d["spec"]["threshold"] = 2.4375
        d["extra"]["note"] = "na\u00efve \u2603 \U0001f600 \"quoted\" \\ /"

    def padded(d: dict) -> None:
        d["batch"] = [4, 4]

    for name, edit, max_batch in (("chunked", chunked, 2), ("padded", padded, 4)):
        folder = _variant(artifact, tmp_path, name, manifest=edit)
        with lib.open(folder) as h:
            assert h.max_batch == max_batch
            scores, maps = h.predict(images)
            assert np.abs(scores - ref_scores).max() <= TOL and np.abs(maps - ref_maps).max() <= TOL
            one, _ = h.predict(images[4:5])
            assert abs(float(one[0]) - float(ref_scores[4])) <= TOL
            if name == "chunked":
                assert h.threshold == pytest.approx(2.4375)


def test_ctypes_errors(lib, artifact: Path, bad: dict[str, tuple[Path, str]], tmp_path) -> None:
    from edgead.runtimes.c_api import CAPIError

    for what, (folder, status) in bad.items():
        with pytest.raises(CAPIError) as info:
            lib.open(folder)
        assert info.value.status == status, what
        assert len(str(info.value)) > len(status) + 10, what
    with pytest.raises(CAPIError, match="EDGEAD_ERR_NOT_FOUND: expected an artifact folder"):
        lib.open(tmp_path / "missing")
    with pytest.raises(CAPIError, match="EDGEAD_ERR_INVALID_ARGUMENT"):
        lib.open(artifact, threads=-1)

    raw = lib.raw
    handle = ctypes.c_void_p()
    assert raw.edgead_open(None, None, ctypes.byref(handle)) == 1 and handle.value is None
    assert raw.edgead_open(str(artifact).encode(), None, None) == 1
    assert b"out" in raw.edgead_last_error(None)
    assert raw.edgead_predict(None, None, 1, 56, 56, 0, None, None, 0) == 1
    assert raw.edgead_input_info(None, None, None, None, None, None) == 1

    with lib.open(artifact) as h:
        img = np.zeros((2, 56, 56, 3), np.uint8)
        with pytest.raises(CAPIError, match="SHAPE_MISMATCH.*expected images of 56x56.*found 55x56"):
            h.predict(np.zeros((1, 55, 56, 3), np.uint8))
        with pytest.raises(EdgeadError, match="expected a uint8 array"):
            h.predict(img.astype(np.float32))
        scores = np.empty(2, np.float32)
        maps = np.empty((2, 56, 56), np.float32)
        u8p = ctypes.POINTER(ctypes.c_uint8)
        f32p = ctypes.POINTER(ctypes.c_float)
        args = (img.ctypes.data_as(u8p), 2, 56, 56, 0, scores.ctypes.data_as(f32p), maps.ctypes.data_as(f32p))
        assert raw.edgead_predict(h.handle, *args, maps.size - 1) == 3  # maps buffer one float short
        assert "maps buffer of at least 6272 floats" in lib.last_error(h.handle)
        assert raw.edgead_predict(h.handle, None, *args[1:], maps.size) == 1
        assert raw.edgead_predict(h.handle, args[0], 0, *args[2:], maps.size) == 1
        assert raw.edgead_predict(h.handle, *args[:4], 56 * 3 - 1, *args[5:], maps.size) == 1
        assert raw.edgead_predict(h.handle, *args[:5], None, args[6], maps.size) == 1
        assert raw.edgead_predict(h.handle, *args, maps.size) == 0  # the handle still works
    assert raw.edgead_status_string(42) == b"EDGEAD_ERR_UNKNOWN"


def _write_ppm(path: Path, image: np.ndarray) -> None:
    h, w, _ = image.shape
    path.write_bytes(f"P6\n# edgead test\n{w} {h}\n255\n".encode() + image.tobytes())


def test_example_program(built: Path, artifact: Path, images: np.ndarray, reference, tmp_path) -> None:
    _write_ppm(tmp_path / "a.ppm", images[0])
    images[4].tofile(tmp_path / "b.rgb")
    proc = subprocess.run([str(built / "edgead_example"), str(artifact), str(tmp_path / "a.ppm"),
                           str(tmp_path / "b.rgb"), "--repeat", "3"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    scores = [float(v) for v in re.findall(r"score=([-0-9.e]+)", proc.stdout)]
    assert scores == pytest.approx([reference[0][0], reference[0][4]], abs=TOL)
    assert re.search(r"latency batch 1 over 6 runs: mean [0-9.]+ ms", proc.stdout)
    wrong = tmp_path / "small.ppm"
    _write_ppm(wrong, images[0][:50])
    proc = subprocess.run([str(built / "edgead_example"), str(artifact), str(wrong)], capture_output=True, text=True)
    assert proc.returncode == 1 and "expected a 56x56 image" in proc.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_open_predict_close_loop_under_valgrind(built: Path, artifact: Path, data_dir: Path) -> None:
    """Two open/predict/close rounds (plus failing calls): no error and no leak; OpenVINO's process-wide worker
    threads' TLS and a known glibc loader over-read are suppressed by name (tests/c/valgrind.supp)."""
    # --undef-value-errors=no: about 20% faster; uninitialised reads inside OpenVINO's JIT kernels are noise, and
    # libedgead's own outputs are compared value by value in test_c_program
    cmd = ["valgrind", "--leak-check=full", "--error-exitcode=3", f"--suppressions={SUPPRESSIONS}",
           "--undef-value-errors=no", "--num-callers=30", str(built / "test_edgead"), "--artifact", str(artifact),
           "--data", str(data_dir), "--leak-loop", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "ok - leak loop of 2" in proc.stdout
    assert re.search(r"definitely lost: 0 bytes", log) or "All heap blocks were freed" in log
    assert re.search(r"ERROR SUMMARY: 0 errors", log)


def test_build_c_reports_missing_tools(monkeypatch, tmp_path) -> None:
    from edgead.export import build_c as mod

    monkeypatch.setattr(mod.shutil, "which", lambda name: None)
    with pytest.raises(EdgeadError, match="expected cmake to build libedgead"):
        mod.build_c(tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    monkeypatch.setattr(mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(EdgeadError, match="absent, empty or an earlier edgead output"):
        mod.build_c(tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


# -- time of check to time of use (issue 25, item 8) ------------------------------------------------------------------
SWAP_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>
/* TEST SHIM, preloaded: OpenVINO's model-reading calls first run $EDGEAD_TEST_SWAP (which replaces the artifact's
 * model files with another model's), then the real call, so the swap lands between libedgead's hash check and
 * the engine's read of the model. */
static void swap(void) { if (system(getenv("EDGEAD_TEST_SWAP")) != 0) abort(); }
typedef int (*by_path)(const void*, const char*, const char*, void**);
typedef int (*by_memory)(const void*, const char*, size_t, const void*, void**);
int ov_core_read_model(const void* core, const char* xml, const char* bin, void** model) {
    swap();
    return ((by_path)dlsym(RTLD_NEXT, "ov_core_read_model"))(core, xml, bin, model);
}
int ov_core_read_model_from_memory_buffer(const void* core, const char* text, size_t len, const void* w, void** m) {
    swap();
    return ((by_memory)dlsym(RTLD_NEXT, "ov_core_read_model_from_memory_buffer"))(core, text, len, w, m);
}
"""


@pytest.fixture(scope="module")
def other_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another 56 px OpenVINO IR (DyT instead of LayerNorm, other weights): the model swapped in."""
    from edgead.export import export_onnx
    from edgead.export.openvino import compile_openvino
    from edgead.models import build_detector, detector_spec

    out = tmp_path_factory.mktemp("other")
    export_onnx(build_detector(detector_spec("fbft", "vit_tiny_test_patch14", "dyt", input_size=56)), out)
    return compile_openvino(out, "fp32")


def test_model_swapped_between_hash_check_and_engine_read_never_runs(
        built: Path, artifact: Path, other_artifact: Path, images: np.ndarray, reference, tmp_path) -> None:
    """libedgead hashes model.xml and model.bin, then OpenVINO reads the model: a shim preloaded into the example
    program replaces both files with another model's inside OpenVINO's read call. The scores are the hashed
    model's; before the fix OpenVINO read the files again by path and scored with the swapped-in model."""
    from edgead.runtimes import load

    cc = next(shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c))
    (tmp_path / "shim.c").write_text(SWAP_SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "shim.so"), str(tmp_path / "shim.c"), "-ldl"],
                   check=True)
    with load(other_artifact, engine="openvino") as r:
        other = float(r.predict(images[:1]).scores[0])
    assert abs(other - float(reference[0][0])) > 1e-3  # the two models are told apart by the score
    folder = _variant(artifact, tmp_path, "victim")
    swap = " && ".join(f"cp {other_artifact / n} {folder / ('.' + n)} && mv {folder / ('.' + n)} {folder / n}"
                       for n in ("model.xml", "model.bin")) + f" && touch {tmp_path / 'swapped'}"
    _write_ppm(tmp_path / "a.ppm", images[0])
    env = {**os.environ, "LD_PRELOAD": str(tmp_path / "shim.so"), "EDGEAD_TEST_SWAP": swap}
    proc = subprocess.run([str(built / "edgead_example"), str(folder), str(tmp_path / "a.ppm")], capture_output=True,
                          text=True, timeout=60, env=env)
    assert (tmp_path / "swapped").is_file(), proc.stderr  # the swap did happen, inside OpenVINO's read
    assert proc.returncode == 0, proc.stderr
    scores = [float(v) for v in re.findall(r"score=([-0-9.e]+)", proc.stdout)]
    assert scores == pytest.approx([reference[0][0]], abs=TOL)


def test_onnx_with_external_data_refused(lib, artifact: Path, images: np.ndarray, reference, tmp_path) -> None:
    """From memory, OpenVINO would look an ONNX model's external data up relative to the working folder, outside
    the hash check: such a model is refused; the plain ONNX export (weights inside) runs as its IR does."""
    import onnx

    from edgead.runtimes.c_api import CAPIError
    from edgead.runtimes.manifest import read_manifest, write_manifest

    export = artifact.parent
    with lib.open(export) as h:
        assert np.abs(h.predict(images)[0] - reference[0]).max() <= 1e-4
    m = read_manifest(export)
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save(onnx.load(export / "model.onnx"), folder / "model.onnx", save_as_external_data=True,
              location="weights.data")
    write_manifest(folder, m.engine, m.precision, m.model, m.spec, m.versions, m.batch, m.extra)
    with pytest.raises(CAPIError) as info:
        lib.open(folder)
    assert info.value.status == "EDGEAD_ERR_UNSUPPORTED"
    assert (f"expected an ONNX model with its weights inside (as edgead exports are), found one that keeps them in "
            f"other files ({folder}/model.onnx)") in str(info.value)


# -- tiling (issue 27): edgead_predict_frame against edgead.runtimes.tiling ---------------------------------------
def test_predict_frame_matches_python_tiling_on_an_odd_frame(lib, artifact: Path, tmp_path) -> None:
    """The same stitched map (1e-5) and score from C as from the Python OpenVINO runner on a 301x227 frame, with the
    engine taking all tiles at once, two at a time, or padded to four."""
    from edgead.runtimes import load
    from edgead.spec import TilePlan

    rng = np.random.default_rng(11)
    frame = rng.integers(0, 256, (301, 227, 3), dtype=np.uint8)
    with load(artifact, engine="openvino") as runner:
        assert runner.tiling is None
        runner.tiling = TilePlan((56, 56), 14)
        ref = runner.predict_frames(frame)
    assert ref.maps.shape == (1, 301, 227)

    def tiled(batch):
        def edit(d: dict) -> None:
            d["spec"]["tiling"] = {"tile": [56, 56], "overlap": 14, "blend": "linear", "score": "topk_mean"}
            d["spec"]["format"] = 2
            if batch is not None:
                d["batch"] = batch
        return edit

    for name, batch in (("tiled", None), ("tiled-chunked", [1, 2]), ("tiled-padded", [4, 4])):
        folder = _variant(artifact, tmp_path, name, manifest=tiled(batch))
        with lib.open(folder) as h:
            assert h.tiling == ((56, 56), 14)
            score, amap = h.predict_frame(frame)
            assert amap.shape == (301, 227)
            assert np.abs(amap - ref.maps[0]).max() <= TOL, name
            assert abs(score - float(ref.scores[0])) <= TOL, name
            # a crop of a wider frame is passed row-strided; the score alone needs no map buffer
            wide = np.zeros((301, 240, 3), np.uint8)
            wide[:, 7:234] = frame
            s2, m2 = h.predict_frame(wide[:, 7:234])
            assert np.abs(m2 - ref.maps[0]).max() <= TOL and abs(s2 - score) <= TOL
            s3, m3 = h.predict_frame(frame, maps=False)
            assert m3 is None and abs(s3 - score) <= TOL
            with pytest.raises(EdgeadError, match=r"SHAPE_MISMATCH: .*at least one tile \(56x56\), found 55x227"):
                h.predict_frame(np.ascontiguousarray(frame[:55]))
    with lib.open(artifact) as h:
        assert h.tiling is None
        with pytest.raises(EdgeadError, match="EDGEAD_ERR_UNSUPPORTED: .*no tiling plan"):
            h.predict_frame(frame)
    bad = _variant(artifact, tmp_path, "tiled-bad", manifest=lambda d: d["spec"].update(
        tiling={"tile": [64, 64], "overlap": 8}, format=2))
    with pytest.raises(EdgeadError, match="EDGEAD_ERR_CORRUPT_ARTIFACT: .*tiles of the input size 56x56"):
        lib.open(bad)
    odd = _variant(artifact, tmp_path, "tiled-odd", manifest=lambda d: d["spec"].update(
        tiling={"tile": [56, 56], "overlap": 8, "scale": 2}, format=2))
    with pytest.raises(EdgeadError, match="EDGEAD_ERR_CORRUPT_ARTIFACT: .*unknown field 'scale'"):
        lib.open(odd)


def test_predict_frame_finds_the_defect_like_every_engine(lib, tiled_export, defect_frame, tmp_path) -> None:
    """Issue 27's acceptance on the tiny fitted, tiled detector: the C library's 300x250 map peaks on the defect
    and matches PyTorch (the reference) within the 1e-4 parity target."""
    from edgead.export.openvino import compile_openvino
    from edgead.runtimes import load

    ckpt, export = tiled_export
    frame, (cy, cx) = defect_frame
    ref = load(ckpt).predict_frames(frame)
    with lib.open(compile_openvino(export, "fp32")) as h:
        assert h.tiling == ((56, 56), 14) and h.threshold is not None
        score, amap = h.predict_frame(frame)
    assert np.abs(amap - ref.maps[0]).max() <= 1e-4
    assert abs(score - float(ref.scores[0])) <= 1e-4
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    assert abs(peak[0] - cy) <= 6 and abs(peak[1] - cx) <= 6, peak
    assert not score <= h.threshold  # labelled anomalous, NaN-safe


# -- an export root's tune decision: the C library opens the setting Python's load(OUT) runs ----------------------
def _decide(out: Path, chosen: dict) -> None:
    """Record ``chosen`` as the export's tune decision (extra.tune, as edgead.tune.record writes it), made here."""
    from edgead.bench.machine import machine_info

    m = machine_info()
    path = out / "manifest.json"
    d = json.loads(path.read_text())
    d.setdefault("extra", {})["tune"] = {
        "chosen": chosen, "candidates": [],
        "machine": {"cpu_model": m["cpu_model"], "cores": m["cores"], "flags": m["flags"]}}
    path.write_text(json.dumps(d, indent=1))


@pytest.fixture()
def export_copy(artifact: Path, tmp_path) -> Path:
    """A copy of the tiny export: its FP32 ONNX root and the OpenVINO FP32 artifact folder (``artifact.name``)."""
    out = tmp_path / "export"
    shutil.copytree(artifact.parent, out)
    return out


def test_export_root_follows_its_tune_decision_like_python_load(lib, artifact: Path, export_copy: Path,
                                                                 images: np.ndarray, reference) -> None:
    """Opened on OUT, libedgead runs the chosen folder with the chosen float-rest hint (bf16), fixed batch and
    recomputed threshold: the scores, maps and threshold of Python's load(OUT); the folder opened directly keeps its
    own setting (no threshold; f32, whose scores differ from bf16's where the CPU runs bf16)."""
    from edgead.precisions import executed
    from edgead.runtimes import load
    from edgead.runtimes.openvino_runner import _type_name

    out = export_copy
    _decide(out, {"engine": "openvino", "precision": "fp32", "mode": "latency", "static_batch": 2,
                  "folder": artifact.name, "ms_per_image": 1.0, "rest": "bf16", "precision_hint": "bf16",
                  "threshold": 0.1294})
    with load(out) as runner:
        assert (runner.folder.name, runner.static_batch, runner.spec.threshold) == (artifact.name, 2, 0.1294)
        py = runner.predict(images)
        hint = executed(_type_name(runner.inference_precision))
    with lib.open(out) as h:
        assert h.threshold == pytest.approx(0.1294) and h.max_batch == 2
        text = h.describe()
        scores, maps = h.predict(images)
    used = re.search(r"\(inference (\w+)\)", text).group(1)
    assert executed(_type_name(used)) == hint, text
    assert text == (f"openvino fp32 on CPU (inference {used}) from {out / artifact.name} "
                    f"(tuned: float rest in bf16, batch fixed at 2, threshold 0.1294)")
    assert np.abs(scores - py.scores).max() <= TOL and np.abs(maps - py.maps).max() <= TOL
    with lib.open(out / artifact.name) as direct:  # the artifact folder itself: its own setting
        assert direct.threshold is None and direct.max_batch is None and "tuned" not in direct.describe()
    if hint == "bf16":  # bf16 runs natively here: the hint moves the scores off the plain f32 artifact's
        assert np.abs(scores - reference[0]).max() > TOL

    # throughput mode is not applied (one infer request, LATENCY) and says so; no rest: f32, the artifact's scores
    _decide(out, {"engine": "openvino", "mode": "throughput", "folder": artifact.name, "rest": None,
                  "precision_hint": None, "threshold": 0.25})
    with lib.open(out) as h:
        assert h.threshold == 0.25 and h.max_batch is None
        assert h.describe() == (f"openvino fp32 on CPU (inference f32) from {out / artifact.name} (tuned: threshold "
                                f"0.25, its throughput mode runs in latency mode here (one infer request))")
        assert np.abs(h.predict(images)[0] - reference[0]).max() <= TOL


def test_malformed_tune_decisions_fail_with_one_line(lib, artifact: Path, export_copy: Path) -> None:
    """Each malformed decision: the status and one line saying what was expected; Python's load(OUT) refuses it
    too. A decision with nothing to change opens OUT as the FP32 ONNX export it holds."""
    from edgead.runtimes import load
    from edgead.runtimes.c_api import CAPIError

    out = export_copy
    mf, again = f"{out}/manifest.json", f"run edgead tune {out} again"
    good = {"engine": "openvino", "folder": artifact.name, "mode": "latency", "rest": "bf16", "precision_hint": "bf16",
            "threshold": 0.5}
    bad, missing = "EDGEAD_ERR_CORRUPT_ARTIFACT", "EDGEAD_ERR_NOT_FOUND"
    cases = [
        ({"rest": "bf17"}, bad, f"{mf} names a tuned float-rest precision 'bf17' that is not one of fp32, fp16, bf16, "
                                f"int8; {again}"),
        ({"rest": 16}, bad, f"{mf} names a tuned float-rest precision that is a number, not one of fp32, fp16, bf16, "
                            f"int8; {again}"),
        ({"precision_hint": "bf99"}, bad, f"{mf} names the tuned precision hint 'bf99', but its float rest 'bf16' on "
                                          f"engine 'openvino' means 'bf16'; {again}"),
        ({"rest": None}, bad, f"{mf} names the tuned precision hint 'bf16', but its float rest none on engine "
                              f"'openvino' means no hint; {again}"),
        ({"folder": "../x"}, bad, f"{mf} names a tuned artifact '../x' that is not a folder of {out}; {again}"),
        ({"folder": ".."}, bad, f"{mf} names a tuned artifact '..' that is not a folder of {out}; {again}"),
        ({"folder": "a\\b"}, bad, f"{mf} names a tuned artifact 'a\\b' that is not a folder of {out}; {again}"),
        ({"folder": "openvino-int8"}, missing, f"{mf} names a tuned artifact 'openvino-int8' that is not a folder of "
                                               f"{out}; {again}"),
        ({"folder": 7}, bad, f"{mf} names a tuned artifact that is a number, not the name of a folder of {out}; "
                             f"{again}"),
        ({"engine": "coreml", "rest": None, "precision_hint": None}, bad,
         f"{mf} names a tuned engine 'coreml' that is not one of onnxruntime, openvino, trt, torch; {again}"),
        ({"engine": "trt", "rest": None, "precision_hint": None}, bad,
         f"{mf} names engine 'trt' for {out / artifact.name}, but that engine does not run its openvino artifact; "
         f"{again}"),
    ]
    for edit, status, message in cases:
        _decide(out, {**good, **edit})
        with pytest.raises(CAPIError) as info:
            lib.open(out)
        assert str(info.value) == f"{status}: {message}", edit
        with pytest.raises(EdgeadError):  # the Python side refuses the same decision
            load(out)
    _decide(out, {"engine": "onnxruntime", "folder": ".", "rest": None, "precision_hint": None})  # nothing to change
    with lib.open(out) as h:
        assert h.describe() == f"openvino fp32 on CPU (inference f32) from {out}" and h.threshold is None


def test_c_float_rest_table_matches_the_precision_table(lib, export_copy: Path) -> None:
    """Every spelling edgead.precisions.find reads (trimmed, any case) is a float rest libedgead reads, with the
    OpenVINO hint Python's registry gives it (a folder that is not there stops the open once the rest passed)."""
    from edgead import precisions, registry
    from edgead.runtimes.c_api import CAPIError

    out = export_copy
    for p in precisions.PRECISIONS.values():
        for spelling in {p.name, *p.aliases, p.executed, *p.spellings}:
            for written in (spelling, f" {spelling.upper()} "):
                hint = registry.OPENVINO.rest_precision_hint(written)
                _decide(out, {"engine": "openvino", "folder": "nowhere", "rest": written,
                              "precision_hint": hint or None})
                with pytest.raises(CAPIError, match="names a tuned artifact 'nowhere' that is not a folder"):
                    lib.open(out)
                _decide(out, {"engine": "openvino", "folder": "nowhere", "rest": written, "precision_hint": "zz"})
                expected = f"'{hint}'" if hint else "no hint"
                with pytest.raises(CAPIError, match=f"float rest '{p.name}' on engine 'openvino' means {expected};"):
                    lib.open(out)
