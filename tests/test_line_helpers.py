"""Shared pieces of the line tests (no tests here): an artifact with a threshold, frame sources and runners with
known behaviour."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np

from edgead.line.frames import Frame, now_ns
from edgead.line.queue import BLOCK
from edgead.line.sources import Source
from edgead.runtimes import Predictions


def make_image(seed: int, size: int = 64) -> np.ndarray:
    """An RGB uint8 test frame: a smooth gradient with seeded noise."""
    rng = np.random.default_rng(seed)
    g = np.linspace(0, 200, size, dtype=np.float32)
    img = (g[None, :, None] + g[:, None, None] * 0.2 + rng.normal(0, 12, (size, size, 3))).clip(0, 255)
    return img.astype(np.uint8)


def write_png(path, rgb: np.ndarray) -> bytes:
    ok, enc = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    data = enc.tobytes()
    path.write_bytes(data)
    return data


def build_line_artifact(root) -> object:
    """A tiny FBFT export whose threshold is the median score of 8 test frames, so both labels occur."""
    import torch

    import edgead.runtimes as rt
    from edgead.export import export_onnx
    from edgead.imageio import prepare
    from edgead.models import build_detector, detector_spec
    from edgead.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", "layernorm", input_size=56))
    save_checkpoint(det, root / "raw")
    with rt.load(root / "raw") as r:
        batch = np.stack([prepare(make_image(i), r.spec) for i in range(8)])
        scores = r.predict(batch).scores
    det.spec = det.spec.with_threshold(float(np.median(scores)))
    save_checkpoint(det, root / "ckpt")
    export_onnx(det, root / "export", source=root / "ckpt")
    return root / "export"


_BUILT: dict[str, object] = {}


def line_artifact(tmp_path_factory) -> object:  # noqa: ANN001
    """``build_line_artifact`` once per test session, shared by the line test modules."""
    if "export" not in _BUILT:
        _BUILT["export"] = build_line_artifact(tmp_path_factory.mktemp("line-artifact"))
    return _BUILT["export"]


class ListSource(Source):
    """A named fake harness: yields the given frames (ids ``f0``, ``f1``, ...) every ``period_s`` seconds; with
    ``hold`` it then waits for the line's stop instead of ending (so the sinks stay up to be read)."""

    def __init__(self, images: list[np.ndarray], period_s: float = 0.0, policy: str = BLOCK,
                 hold: bool = False) -> None:
        self.images = images
        self.hold = hold
        self.period_s = period_s
        self.policy = policy  # type: ignore[misc]
        self.name = "list"
        self.done_ids: list[str] = []

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for i, img in enumerate(self.images):
            if stop.is_set():
                return
            yield Frame(f"f{i}", now_ns(), img, self.name)
            if self.period_s:
                time.sleep(self.period_s)
        if self.hold:
            stop.wait()

    def done(self, frame: Frame) -> None:
        self.done_ids.append(frame.frame_id)


class FixedRunner:
    """A runner with the artifact's spec and folder whose ``predict`` takes ``delay_s`` and returns ``score``."""

    def __init__(self, real, score: float = 0.0, delay_s: float = 0.0) -> None:  # noqa: ANN001
        self.spec, self.folder, self.manifest = real.spec, real.folder, real.manifest
        self.score, self.delay_s = score, delay_s
        self.calls = 0

    def predict(self, images: np.ndarray) -> Predictions:
        self.calls += 1
        t0 = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        n, h, w, _ = images.shape
        scores = np.full(n, self.score, np.float32)
        maps = np.zeros((n, h, w), np.float32)
        thr = self.spec.threshold
        labels = None if thr is None else ~(scores <= thr)
        return Predictions(scores, maps, labels, time.perf_counter() - t0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
