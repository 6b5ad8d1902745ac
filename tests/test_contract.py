"""Contracts every detector family keeps on every engine that runs here (issue 26 item 7; timm's
``tests/test_models.py`` style): parametrized from the family list (``FAMILY_DEFAULTS``) and the engine registry,
not hand-picked pairs.

For each (family, engine), on the engine's FP32 artifact of a tiny randomly initialised detector:

- parity: scores and maps within the FP32 target (``Budget().atol``, 1e-4, relative above magnitude 1) of the
  PyTorch module's own forward on the same uint8 batch (for the torch engine: the checkpoint round trip);
- finite: no NaN/Inf in scores or maps on random images and on constant ones (all 0, all 255: an image without
  variance is where a normalisation divides by zero);
- batch independence: each image run alone gives its row of a batch of 3, within the FP32 target.

Each family is built, saved and exported once per module (FBFT and Dinomaly reuse the session's ``tiny_export``)
and every engine reads the same export. TensorRT runs on an NVIDIA GPU and builds FP16/INT8 only: it is skipped
here with that reason (its FP16 graph is verified on the CPU by ``tests/test_precision.py``). The C library is
checked against the OpenVINO runner in ``tests/test_c_api.py`` (it needs a CMake build, ~minutes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgead import registry
from edgead.fidelity import Budget, measure
from edgead.models.build import FAMILY_DEFAULTS
from edgead.precisions import full
from edgead.runtimes.compare import check_batch

#: one tiny case per family: (backbone, norm, input size); the smallest sizes the families' geometry allows
TINY = {
    "fbft": ("vit_tiny_test_patch14", "layernorm", 56),  # conftest's tiny_export
    "dinomaly": ("vit_tiny_test_patch14_reg4", "layernorm", 56),  # conftest's tiny_export
    "vitad": ("vit_tiny_test_patch16", "dyt", 32),
    "nf": ("vit_tiny_test_patch14", "layernorm", 28),
    "gmm": ("resnet_tiny_test", "layernorm", 32),  # density heads: the flow on a ViT, the mixture on a CNN
    "mae": ("mae_tiny_test_patch16", "layernorm", 32),
}
CASES = {f: (f, *TINY[f]) for f in TINY}
ATOL = Budget().atol
N = 3  # the batch: 3 random images; then one all-0 and one all-255 image (5 in all)


def test_every_family_has_a_contract_case():
    assert set(TINY) == set(FAMILY_DEFAULTS)


def _engines() -> list[object]:
    """One parameter per registered engine; those that cannot run an FP32 artifact here are skipped, saying why."""
    out = []
    for e in (registry.get(n) for n in registry.names()):
        why = None
        if e.device != "CPU":
            why = f"{e.label} needs {e.needs or e.device} (none here) and builds {'/'.join(e.compiles)} only"
        elif full().name not in (*e.compiles, *e.root_precisions) and not e.checkpoint:
            why = f"{e.label} has no FP32 artifact"
        elif e.missing():
            why = e.missing()
        out.append(pytest.param(e.name, marks=pytest.mark.skip(reason=why)) if why else e.name)
    return out


@pytest.fixture(scope="module")
def images() -> dict[int, np.ndarray]:
    """Per input size: N - 1 random-structure images (``check_batch``), one of uniform uint8 noise, then an all-0
    and an all-255 image."""
    out = {}
    for *_, size in CASES.values():
        if size not in out:
            const = np.stack([np.zeros((size, size, 3), np.uint8), np.full((size, size, 3), 255, np.uint8)])
            noise = np.random.default_rng(size).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
            out[size] = np.concatenate([check_batch(0, N - 1, (size, size)), noise, const])
    return out


@pytest.fixture(scope="module")
def exported(tiny_export, tmp_path_factory, images):
    """``exported(case)`` -> (root with ckpt/ and export/, reference scores, reference maps), made once per case;
    the reference is the PyTorch module's forward on ``images[size]``."""
    cache: dict[str, tuple[Path, np.ndarray, np.ndarray]] = {}

    def make(case: str):
        if case not in cache:
            import torch

            from edgead.export import export_onnx
            from edgead.models import build_detector, detector_spec
            from edgead.models.checkpoint import load_checkpoint, save_checkpoint

            family, backbone, norm, size = CASES[case]
            if family == "nf":
                pytest.importorskip("FrEIA")
            if case in ("fbft", "dinomaly"):
                root = tiny_export(family, norm)
                det = load_checkpoint(root / "ckpt")
            else:
                torch.manual_seed(0)
                det = build_detector(detector_spec(family, backbone, norm, input_size=size))
                root = tmp_path_factory.mktemp(case)
                save_checkpoint(det, root / "ckpt")
                export_onnx(det, root / "export", source=root / "ckpt")
            with torch.no_grad():
                s, m = det.eval()(torch.from_numpy(images[size]))
            cache[case] = root, s.numpy(), m.numpy()
        return cache[case]

    return make


@pytest.fixture(scope="module")
def artifact(exported):
    """``artifact(case, engine)`` -> the engine's FP32 artifact folder of the case (built once, on first use)."""
    cache: dict[tuple[str, str], Path] = {}

    def make(case: str, name: str) -> Path:
        if (case, name) not in cache:
            root = exported(case)[0]
            e = registry.get(name)
            if e.checkpoint:
                cache[case, name] = root / "ckpt"
            elif full().name in e.root_precisions:
                cache[case, name] = root / "export"
            else:  # built by an earlier test of the session (tests/test_export.py) or here
                folder = registry.artifact_folder(root / "export", name, full().name)
                cache[case, name] = folder if (folder / registry.MANIFEST).is_file() else \
                    e.compiler_function()(root / "export", full().name, None)
        return cache[case, name]

    return make


@pytest.fixture(scope="module")
def outputs(artifact, images):
    """``outputs(case, engine)`` -> (predictions of the whole batch, predictions of each random image alone)."""
    cache: dict[tuple[str, str], tuple] = {}

    def run(case: str, engine: str):
        if (case, engine) not in cache:
            import edgead.runtimes as rt

            batch = images[CASES[case][-1]]
            with rt.load(artifact(case, engine), engine=engine) as runner:
                cache[case, engine] = runner.predict(batch), [runner.predict(batch[i : i + 1]) for i in range(N)]
        return cache[case, engine]

    return run


ENGINES = _engines()
FAMILIES = list(CASES)
IMAGES = {**{i: f"random image {i}" for i in range(N)}, N: "all-0 image", N + 1: "all-255 image"}


def _fp32(ref_scores, ref_maps, scores, maps, what: str):
    return measure(ref_scores, ref_maps, scores, maps, reference="torch module", candidate=what,
                   precision=full().name)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_finite_on_random_and_constant_images(family, engine, exported, outputs):
    _, ref_scores, ref_maps = exported(family)
    got, _ = outputs(family, engine)
    size = CASES[family][-1]
    assert got.scores.shape == (N + 2,) and got.maps.shape == (N + 2, size, size)
    for side, scores, maps in (("torch module", ref_scores, ref_maps), (engine, got.scores, got.maps)):
        bad = [IMAGES[i] for i in range(N + 2) if not (np.isfinite(scores[i]) and np.isfinite(maps[i]).all())]
        assert not bad, f"{family}: {side} gives NaN/Inf on the {', '.join(bad)}"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_export_parity_with_the_torch_module(family, engine, exported, outputs):
    """The FP32 target on the random images (``Fidelity.within``: NaN/Inf or flat maps fail too), and on each
    constant image alone (its map may be legitimately flat: only the differences are judged)."""
    _, ref_scores, ref_maps = exported(family)
    got, _ = outputs(family, engine)
    f = _fp32(ref_scores[:N], ref_maps[:N], got.scores[:N], got.maps[:N], engine)
    assert f.within(ATOL), f"{family} on {engine}: {f.describe()}"
    for i in (N, N + 1):
        c = _fp32(ref_scores[i : i + 1], ref_maps[i : i + 1], got.scores[i : i + 1], got.maps[i : i + 1], engine)
        assert c.max_scaled_scores <= ATOL and c.max_scaled_maps <= ATOL, f"{family} on {engine}, {IMAGES[i]}: " \
            f"{c.describe()}"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_1_equals_batch_n(family, engine, outputs):
    got, alone = outputs(family, engine)
    for i, one in enumerate(alone):
        b = _fp32(got.scores[i : i + 1], got.maps[i : i + 1], one.scores, one.maps, f"{engine}, {IMAGES[i]} alone")
        assert b.max_scaled_scores <= ATOL and b.max_scaled_maps <= ATOL, \
            f"{family} on {engine}: {IMAGES[i]} alone vs row {i} of a batch of {N + 2}: {b.describe()}"
