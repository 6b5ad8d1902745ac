"""Shared pytest setup. Tests marked ``gpu`` run only with ``--run-gpu`` or ``EDGEAD_GPU=1``."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-gpu", action="store_true", default=False,
                     help="run tests marked gpu (they need an NVIDIA GPU with TensorRT 10)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-gpu") or os.environ.get("EDGEAD_GPU") == "1":
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT 10; run with --run-gpu or EDGEAD_GPU=1")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# -- the CPU the tests see --------------------------------------------------------------------------------
# Every CI machine is a different CPU (AMX, AVX-512 VNNI/BF16, AVX2 only). What edgead decides from the CPU's
# flags (tune's candidates, the roofline's peaks, "chosen on another machine") must not make a test pass on one
# and fail on another, so the whole session sees one fixed machine. A test that needs other flags sets them.
TEST_CPU = ("edgead test CPU (AVX2, FMA)", frozenset({"avx2", "fma"}))


@pytest.fixture(scope="session", autouse=True)
def pinned_cpu_flags():
    """``edgead.bench.machine`` reports ``TEST_CPU``, never the flags of the machine the tests run on."""
    from edgead.bench import machine

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(machine, "_cpuinfo", lambda: (TEST_CPU[0], set(TEST_CPU[1])))
        yield TEST_CPU


# -- shared artifacts, made once per session --------------------------------------------------------------
TINY = {"fbft": "vit_tiny_test_patch14", "dinomaly": "vit_tiny_test_patch14_reg4"}


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic MVTec-layout set at 56 px (texture category)."""
    from edgead.synth import make_synthetic

    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, categories=("texture",), size=56, n_train=12, n_test_good=4, n_test_defect=2, seed=1)
    return root / "texture"


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_export(family, norm)`` -> export folder of a randomly initialised 56 px detector (cached)."""
    cache: dict[tuple[str, str], object] = {}

    def make(family: str = "fbft", norm: str = "layernorm"):
        key = (family, norm)
        if key not in cache:
            import torch

            from edgead.export import export_onnx
            from edgead.models import build_detector, detector_spec
            from edgead.models.checkpoint import save_checkpoint

            torch.manual_seed(0)
            det = build_detector(detector_spec(family, TINY[family], norm, input_size=56))
            root = tmp_path_factory.mktemp(f"{family}-{norm}")
            save_checkpoint(det, root / "ckpt")
            export_onnx(det, root / "export", source=root / "ckpt")
            cache[key] = root
        return cache[key]

    return make


@pytest.fixture(scope="session")
def fitted_export(tiny_synthetic, tmp_path_factory):
    """Export folder of a tiny FBFT detector fitted for 5 epochs on ``tiny_synthetic`` (it has a threshold)."""
    from edgead.export import export_onnx
    from edgead.fit import fit
    from edgead.models.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("fitted")
    r = fit(tiny_synthetic, root / "ckpt", "fbft", "vit_tiny_test_patch14", "layernorm", 56, epochs=5)
    export_onnx(load_checkpoint(r.checkpoint), root / "export", source=r.checkpoint)
    return root / "export"


# -- a tiled detector (issue 27): frames bigger than the input ----------------------------------------------
@pytest.fixture(scope="session")
def defect_frame():
    """(frame, (row, col)): a 300x250 grey frame with a little noise and a bright 6 px defect centred there."""
    import numpy as np

    rng = np.random.default_rng(5)
    frame = np.clip(rng.normal(120, 4, (300, 250, 3)), 0, 255).astype(np.uint8)
    frame[168:174, 94:100] = (255, 255, 40)
    return frame, (171, 97)


@pytest.fixture(scope="session")
def tiled_export(tmp_path_factory: pytest.TempPathFactory):
    """(checkpoint, export) of a tiny FBFT fitted (3 epochs, ~2 s) on the 56 px tiles, overlap 14, of five normal
    300x250 frames like ``defect_frame``'s; the plan travels from the checkpoint into the export."""
    import numpy as np

    from edgead.export import export_onnx
    from edgead.fit import fit
    from edgead.imageio import write_image
    from edgead.models.checkpoint import load_checkpoint
    from edgead.spec import TilePlan

    root = tmp_path_factory.mktemp("tiled")
    (root / "train").mkdir()
    for i in range(5):
        rng = np.random.default_rng(100 + i)
        write_image(root / "train" / f"{i}.png", np.clip(rng.normal(120, 4, (300, 250, 3)), 0, 255).astype(np.uint8))
    r = fit(root / "train", root / "ckpt", "fbft", "vit_tiny_test_patch14", "layernorm", 56, epochs=3,
            tiling=TilePlan((56, 56), 14))
    assert r.train_images == 3 and r.holdout_images == 2
    export_onnx(load_checkpoint(r.checkpoint), root / "export")
    return r.checkpoint, root / "export"


def run_in_threads(call, n: int) -> list[BaseException]:
    """``call(i)`` for i in range(n), each on its own thread, all started before any is joined; the exceptions
    they raised (a thread-safety test asserts there are none)."""
    import threading

    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            call(i)
        except Exception as exc:  # pragma: no cover - reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
