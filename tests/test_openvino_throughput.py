"""OpenVINO's throughput mode runs one call's chunks concurrently on several infer requests (issue 28)."""

import threading

import numpy as np
import pytest
from conftest import run_in_threads

import edgead.runtimes as rt
from edgead.runtimes.base import Runner
from edgead.runtimes.compare import check_batch
from edgead.spec import TilePlan


@pytest.fixture(scope="module")
def export_dir(tiny_export):
    return tiny_export("fbft", "layernorm") / "export"


class Spy:
    """An infer request that logs ``("start", id)`` / ``("wait", id)`` into a shared list."""

    def __init__(self, request, log: list, lock: threading.Lock) -> None:
        self.request, self.log, self.lock = request, log, lock
        self.id = id(self)

    def start_async(self, inputs):
        with self.lock:
            self.log.append(("start", self.id, len(inputs[0])))
        self.request.start_async(inputs)

    def wait(self):
        self.request.wait()
        with self.lock:
            self.log.append(("wait", self.id, 0))

    def get_tensor(self, output):
        return self.request.get_tensor(output)


def spy_on(runner, monkeypatch) -> list:
    log, lock = [], threading.Lock()
    new = runner._new_request
    monkeypatch.setattr(runner, "_new_request", lambda: Spy(new(), log, lock))
    return log


def test_throughput_chunks_overlap_and_match_latency_in_order(export_dir, monkeypatch):
    x = check_batch(5, 5, (56, 56))
    latency = rt.load(export_dir, engine="openvino", static_batch=2).predict(x)
    r = rt.load(export_dir, engine="openvino", static_batch=2, mode="throughput")
    r.infer_requests = 2  # whatever this machine's optimal number is: two requests for three chunks
    log = spy_on(r, monkeypatch)
    p = r.predict(x)
    assert p.scores.shape == (5,) and p.maps.shape == (5, 56, 56)
    np.testing.assert_allclose(p.scores, latency.scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(p.maps, latency.maps, rtol=0, atol=1e-6)
    # bit-identical to the same compiled model's chunks run one by one (the base class's sequential path)
    one_by_one = Runner._run_chunks(r, x)
    assert np.array_equal(p.scores, one_by_one[0]) and np.array_equal(p.maps, one_by_one[1])
    # the requests overlapped: both were started before the first result was collected; chunks 2, 2, 1 (padded)
    starts = [e for e in log if e[0] == "start"]
    first_wait = next(i for i, e in enumerate(log) if e[0] == "wait")
    assert [n for _, _, n in starts] == [2, 2, 2]
    assert first_wait >= 2 and len({rid for _, rid, _ in log[:first_wait]}) == 2
    assert sum(e[0] == "wait" for e in log) == 3
    # a later call reuses this thread's two requests
    log.clear()
    r.predict(x)
    assert len({rid for _, rid, _ in log}) == 2


def test_throughput_batch_smaller_than_a_chunk(export_dir, monkeypatch):
    x = check_batch(6, 3, (56, 56))
    latency = rt.load(export_dir, engine="openvino", static_batch=4).predict(x)
    r = rt.load(export_dir, engine="openvino", static_batch=4, mode="throughput")
    log = spy_on(r, monkeypatch)
    for n in (1, 3):
        p = r.predict(x[:n])
        assert p.scores.shape == (n,) and p.maps.shape == (n, 56, 56)
        np.testing.assert_allclose(p.scores, latency.scores[:n], rtol=0, atol=1e-6)
        np.testing.assert_allclose(p.maps, latency.maps[:n], rtol=0, atol=1e-6)
    assert log == []  # one chunk: run on the synchronous request, no pool


def test_dynamic_batch_splits_into_near_equal_chunks(export_dir, monkeypatch):
    x = check_batch(7, 5, (56, 56))
    r = rt.load(export_dir, engine="openvino", mode="throughput")
    assert r.static_batch is None and r.infer_requests >= 1
    r.infer_requests = 2
    assert [r._chunk_sizes(n) for n in (1, 2, 5, 8)] == [[1], [1, 1], [3, 2], [4, 4]]
    log = spy_on(r, monkeypatch)
    p = r.predict(x)
    assert [n for kind, _, n in log if kind == "start"] == [3, 2]
    one_by_one = [Runner._run_chunks(r, x[:3]), Runner._run_chunks(r, x[3:])]
    assert np.array_equal(p.scores, np.concatenate([s for s, _ in one_by_one]))
    assert np.array_equal(p.maps, np.concatenate([m for _, m in one_by_one]))


def test_throughput_predict_frames_overlaps_tile_chunks(export_dir, monkeypatch):
    frames = np.random.default_rng(8).integers(0, 256, (2, 90, 100, 3), dtype=np.uint8)  # 2 x 3 tiles each
    plan = TilePlan((56, 56), 14)
    latency = rt.load(export_dir, engine="openvino", static_batch=1)
    latency.tiling = plan
    r = rt.load(export_dir, engine="openvino", static_batch=1, mode="throughput")
    r.tiling, r.infer_requests = plan, 2
    log = spy_on(r, monkeypatch)
    want, got = latency.predict_frames(frames), r.predict_frames(frames)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.maps, want.maps, rtol=0, atol=1e-6)
    first_wait = next(i for i, e in enumerate(log) if e[0] == "wait")
    assert first_wait == 2 and sum(e[0] == "start" for e in log) == 12  # 12 tiles, two in flight at a time


def test_throughput_is_thread_safe(export_dir):
    x = check_batch(9, 6, (56, 56))
    r = rt.load(export_dir, engine="openvino", static_batch=2, mode="throughput")
    r.infer_requests = 2
    single = Runner._run_chunks(r, x)
    results = []

    def work(i):
        for _ in range(3):
            p = r.predict(x[i % 2 : i % 2 + 5])
            results.append((i % 2, p.scores, p.maps))

    errors = run_in_threads(work, 4)
    assert not errors and len(results) == 12
    for start, scores, maps in results:
        np.testing.assert_allclose(scores, single[0][start : start + 5], rtol=0, atol=1e-5)  # other batch mates
        np.testing.assert_allclose(maps, single[1][start : start + 5], rtol=0, atol=1e-5)
