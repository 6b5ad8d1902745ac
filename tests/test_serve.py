"""``edgead serve``: the KServe v2 protocol against NVIDIA's own client, bad input over the network, /predict,
/metrics and the dynamic batcher. The inspection page's browser test is in test_serve_page.py."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from edgead.runtimes.base import Predictions  # noqa: E402
from edgead.serve import DynamicBatcher, QueueFullError, ServeConfig, app_for_runner, create_app  # noqa: E402
from edgead.serve.server import background_server  # noqa: E402
from edgead.spec import DetectorSpec  # noqa: E402

H = W = 56


@pytest.fixture(scope="module")
def runner(tiny_export):
    import edgead.runtimes as rt

    return rt.load(tiny_export("fbft") / "export")


@pytest.fixture(scope="module")
def threshold(runner) -> float:
    """A threshold inside the score range of the test images, so both labels occur."""
    s = runner.predict(_images(6, seed=3)).scores
    return float(np.median(s))


@pytest.fixture(scope="module")
def server(runner, threshold):
    app = app_for_runner(runner, ServeConfig(name="tiny", max_body_mb=1.0, max_delay_ms=2.0), threshold=threshold)
    with background_server(app) as url:
        yield url


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def _request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _infer_json(url: str, payload: dict, model: str = "tiny"):
    status, body, _ = _request(f"{url}/v2/models/{model}/infer", "POST", json.dumps(payload).encode(),
                               {"content-type": "application/json"})
    return status, json.loads(body)


# -- the protocol, driven by tritonclient -------------------------------------------------------------------
def test_tritonclient_gets_the_runners_scores_exactly(server, runner, threshold):
    th = pytest.importorskip("tritonclient.http")
    client = th.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, H, W, 3]}]
    assert [o["name"] for o in meta["outputs"]] == ["scores", "maps", "labels"]
    assert meta["parameters"]["threshold"] == pytest.approx(threshold)

    x = _images(3, seed=1)
    ref = runner.predict(x)
    for binary in (True, False):  # the binary tensor extension and the JSON encoding
        inp = th.InferInput("images", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "maps", "labels")]
        res = client.infer("tiny", [inp], outputs=outs, request_id="r1")
        assert res.get_response()["id"] == "r1"
        np.testing.assert_array_equal(res.as_numpy("scores"), ref.scores)
        np.testing.assert_array_equal(res.as_numpy("maps"), ref.maps)
        np.testing.assert_array_equal(res.as_numpy("labels"), ref.scores > threshold)
    assert res.as_numpy("maps").shape == (3, H, W)


def test_concurrent_tritonclient_requests_are_batched_and_each_gets_its_own_answer(runner, threshold):
    th = pytest.importorskip("tritonclient.http")
    app = app_for_runner(runner, ServeConfig(name="tiny", max_batch=8, max_delay_ms=200.0), threshold=threshold)
    xs = [_images(1, seed=10 + i) for i in range(6)]
    ref = runner.predict(np.concatenate(xs)).scores
    got: dict[int, np.ndarray] = {}
    with background_server(app) as url:
        client = th.InferenceServerClient(url.removeprefix("http://"), concurrency=6)
        pending = []
        for i, x in enumerate(xs):
            inp = th.InferInput("images", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x)
            pending.append((i, client.async_infer("tiny", [inp])))
        for i, p in pending:
            got[i] = p.get_result().as_numpy("scores")
        batches = app.state.service.metrics.batch_size.collect()[0].samples
    np.testing.assert_allclose(np.concatenate([got[i] for i in range(6)]), ref, atol=1e-5)
    count = next(s.value for s in batches if s.name.endswith("_count"))
    assert count < 6, f"6 concurrent requests within 200 ms should share engine calls, found {count} calls"


# -- bad input over the network ----------------------------------------------------------------------------
def _v2(name="images", shape=(1, H, W, 3), datatype="UINT8", data=None):
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype,
                        "data": data if data is not None else [0] * int(np.prod(shape))}]}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_v2(datatype="FP32"), "expected input 'images' of datatype UINT8, found 'FP32'"),
        (_v2(shape=(1, H, W + 1, 3)), f"expected input 'images' of shape [N, {H}, {W}, 3] with N >= 1, found [1, {H}, "
                                      f"{W + 1}, 3]"),
        (_v2(shape=(1, H, W, 3), data=[1, 2, 3]), "expected 9408 values for input 'images' of shape"),
        (_v2(name="pixels"), "expected exactly one input named 'images', found ['pixels']"),
        (_v2(shape=(1, 2, 2, 3), data=[300] * 12), "expected input 'images' data of integers in 0..255"),
        ({"inputs": []}, "expected 'inputs' to be a non-empty list"),
        ({**_v2(), "outputs": [{"name": "heat"}]},
         "expected outputs among ['scores', 'maps', 'labels'], found ['heat']"),
    ],
)
def test_bad_v2_requests_get_400_with_the_v2_error_body(server, payload, message):
    status, body = _infer_json(server, payload)
    assert status == 400
    assert set(body) == {"error"} and body["error"].startswith(message), body


def test_unknown_model_is_404_and_bad_json_is_400(server):
    status, body = _infer_json(server, _v2(), model="nope")
    assert (status, body) == (404, {"error": "expected model 'tiny', found unknown model 'nope'"})
    status, body, _ = _request(f"{server}/v2/models/tiny/infer", "POST", b'{"inputs": [', {})
    assert status == 400 and json.loads(body)["error"].startswith("expected a JSON inference request, found invalid")
    status, body, _ = _request(f"{server}/v2/models/nope")
    assert status == 404 and "unknown model 'nope'" in json.loads(body)["error"]


def test_binary_request_shorter_than_declared_is_refused(server):
    header = json.dumps({"inputs": [{"name": "images", "shape": [1, H, W, 3], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": H * W * 3}}]}).encode()
    body = header + bytes(100)  # the tensor is cut short
    status, out, _ = _request(f"{server}/v2/models/tiny/infer", "POST", body,
                              {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400
    assert json.loads(out)["error"] == f"expected {H * W * 3} bytes of binary data for input 'images', found 100 " \
                                       f"(truncated body)"
    status, out, _ = _request(f"{server}/v2/models/tiny/infer", "POST", body,
                              {"Inference-Header-Content-Length": str(len(body) + 5)})
    assert status == 400 and "within the" in json.loads(out)["error"]


def test_connection_closed_mid_body_and_huge_uploads_leave_the_server_serving(server, runner, threshold):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:  # declares 5000 bytes, sends 10, hangs up
        s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n0123456789")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)  # refused from its headers, before any body
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(2 * 1024 * 1024))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413
    assert json.loads(r.read())["error"] == ("expected a request body of at most 1048576 bytes (--max-body-mb), found "
                                             "Content-Length 2097152")
    conn.close()
    conn = http.client.HTTPConnection(host, int(port), timeout=10)  # chunked: no Content-Length to check up front
    conn.putrequest("POST", "/v2/models/tiny/infer")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = bytes(256 * 1024)
    for _ in range(5):
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    r = conn.getresponse()
    assert r.status == 413 and "streamed body" in json.loads(r.read())["error"]
    conn.close()
    x = _images(1, seed=5)
    status, body = _infer_json(server, {"inputs": [{"name": "images", "shape": [1, H, W, 3], "datatype": "UINT8",
                                                    "data": x.reshape(-1).tolist()}]})
    assert status == 200
    assert body["outputs"][0]["data"] == pytest.approx(runner.predict(x).scores.tolist(), abs=0)


def test_queue_limit_answers_503_and_an_engine_error_500_without_traceback():
    release = threading.Event()

    def slow_predict(images: np.ndarray) -> Predictions:  # test harness: an engine that waits to be released
        release.wait(10)
        if images[0, 0, 0, 0] == 7:
            raise RuntimeError("boom in the engine")
        n = images.shape[0]
        return Predictions(np.full(n, 0.5, np.float32), np.zeros((n, H, W), np.float32), None)

    spec = DetectorSpec("fbft", "vit_tiny_test_patch14", "layernorm", (8,), (H, W))
    app = create_app(slow_predict, spec, ServeConfig(name="m", max_queue=2, max_delay_ms=0.0))
    with background_server(app) as url:
        results: list[tuple[int, dict]] = []

        def call(n: int, fill: int = 0) -> None:
            x = np.full((n, H, W, 3), fill, np.uint8)
            results.append(_infer_json(url, {"inputs": [{"name": "images", "shape": list(x.shape),
                                                        "datatype": "UINT8", "data": x.reshape(-1).tolist()}]},
                                       model="m"))

        first = threading.Thread(target=call, args=(1,))
        first.start()  # taken by the worker, which blocks in the engine
        time.sleep(0.5)
        waiting = threading.Thread(target=call, args=(2,))
        waiting.start()  # fills the queue (2 images)
        time.sleep(0.5)
        call(1)  # one image too many
        assert results[-1] == (503, {"error": "expected at most 2 queued images, found 2 waiting and 1 more "
                                              "arriving; retry later"})
        release.set()
        first.join()
        waiting.join()
        assert sorted(r[0] for r in results) == [200, 200, 503]
        call(1, fill=7)
        assert results[-1] == (500, {"error": "internal error: RuntimeError: boom in the engine"})
        call(1)
        assert results[-1][0] == 200 and results[-1][1]["outputs"][0]["data"] == [0.5]
        _, metrics, _ = _request(f"{url}/metrics")
    text = metrics.decode()
    assert 'edgead_request_errors_total{code="503",route="/v2/models/{name}/infer"} 1.0' in text
    assert 'edgead_request_errors_total{code="500",route="/v2/models/{name}/infer"} 1.0' in text


# -- /predict and /metrics --------------------------------------------------------------------------------
def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "edgeadtestboundary"
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_predict_takes_image_files_of_any_size_and_returns_panels(server, runner, threshold, tmp_path):
    from edgead.imageio import prepare, read_image

    big = np.random.default_rng(2).integers(0, 256, (120, 90, 3), dtype=np.uint8)  # not the input size
    gray = np.random.default_rng(3).integers(0, 256, (40, 70), dtype=np.uint8)
    files = []
    for name, img in (("big.png", big), ("gray.jpg", gray)):
        ok, buf = cv2.imencode(Path(name).suffix, img)
        assert ok
        files.append((name, buf.tobytes()))
        (tmp_path / name).write_bytes(buf.tobytes())
    body, ctype = _multipart(files)
    status, out, _ = _request(f"{server}/predict?heatmap=true", "POST", body, {"content-type": ctype})
    assert status == 200, out
    res = json.loads(out)
    expected = runner.predict(np.stack([prepare(read_image(tmp_path / n), runner.spec) for n, _ in files])).scores
    assert [r["name"] for r in res["results"]] == ["big.png", "gray.jpg"]
    assert [r["score"] for r in res["results"]] == pytest.approx(expected.tolist(), abs=1e-6)
    assert [r["label"] for r in res["results"]] == ["anomalous" if s > threshold else "normal" for s in expected]
    import base64

    png = base64.b64decode(res["results"][0]["heatmap"].split(",", 1)[1])
    panel = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert panel.shape[1] == 2 * W and panel.shape[0] > H  # [image | overlay] above the verdict line

    body, ctype = _multipart([("notes.txt", b"this is not an image at all")])
    status, out, _ = _request(f"{server}/predict", "POST", body, {"content-type": ctype})
    assert status == 400 and json.loads(out)["error"] == (
        "expected a readable image (png, jpg, bmp, tif, webp), found a corrupt or unknown file: notes.txt")
    status, out, _ = _request(f"{server}/predict", "POST", b"", {"content-type": ctype})
    assert status == 400 and "found none" in json.loads(out)["error"]


def test_metrics_are_prometheus_text(server):
    th = pytest.importorskip("tritonclient.http")
    client = th.InferenceServerClient(server.removeprefix("http://"))
    x = _images(2)
    inp = th.InferInput("images", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x)
    before = _metric(server, "edgead_images_total")
    client.infer("tiny", [inp])
    _infer_json(server, _v2(datatype="FP32"))
    status, body, headers = _request(f"{server}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert _metric(server, "edgead_images_total") == before + 2
    text = body.decode()
    assert "# TYPE edgead_request_duration_seconds histogram" in text
    assert 'edgead_request_errors_total{code="400",route="/v2/models/{name}/infer"}' in text
    assert "edgead_batch_size_bucket{le=" in text


def _metric(url: str, name: str) -> float:
    _, body, _ = _request(f"{url}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# -- the batcher on its own --------------------------------------------------------------------------------
def _recording_predict(calls: list[int], delay: float = 0.0):
    def predict(images: np.ndarray) -> Predictions:  # test harness: score = first pixel, records batch sizes
        calls.append(images.shape[0])
        time.sleep(delay)
        s = images[:, 0, 0, 0].astype(np.float32)
        return Predictions(s, np.repeat(s[:, None, None], 2, 1).repeat(2, 2), s > 100)

    return predict


def test_batcher_merges_concurrent_requests_up_to_max_batch():
    calls: list[int] = []
    b = DynamicBatcher(_recording_predict(calls, delay=0.05), max_batch=4, max_delay_s=0.2, max_queue=32)
    blocks = [np.full((n, 2, 2, 3), v, np.uint8) for n, v in ((1, 10), (2, 200), (2, 30), (3, 40), (1, 250))]
    futs = [b.submit(x) for x in blocks]
    res = [f.result(5) for f in futs]
    b.close()
    assert calls == [3, 2, 4]  # [1+2], [2], [3+1]: a block is never split, a batch never exceeds 4
    for x, r in zip(blocks, res, strict=True):
        np.testing.assert_array_equal(r.scores, x[:, 0, 0, 0].astype(np.float32))
        np.testing.assert_array_equal(r.labels, x[:, 0, 0, 0] > 100)
        assert r.maps.shape == (x.shape[0], 2, 2)


def test_batcher_off_runs_each_request_alone_and_errors_reach_every_caller():
    calls: list[int] = []
    b = DynamicBatcher(_recording_predict(calls), max_batch=8, max_delay_s=0.0)
    futs = [b.submit(np.full((1, 2, 2, 3), i, np.uint8)) for i in range(5)]
    assert [float(f.result(5).scores[0]) for f in futs] == [0, 1, 2, 3, 4]
    assert calls == [1, 1, 1, 1, 1]
    b.close()

    def broken(images: np.ndarray) -> Predictions:
        raise ValueError("engine broke")

    b = DynamicBatcher(broken, max_batch=8, max_delay_s=0.05, max_queue=2)
    futs = [b.submit(np.zeros((1, 2, 2, 3), np.uint8)) for _ in range(2)]
    with pytest.raises(QueueFullError, match="expected at most 2 queued images, found 2 waiting and 1 more"):
        b.submit(np.zeros((1, 2, 2, 3), np.uint8))
    for f in futs:
        with pytest.raises(ValueError, match="engine broke"):
            f.result(5)
    b.close()


# -- the command ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_with_two_worker_processes(tiny_export):
    """Two uvicorn workers, each with the token (from EDGEAD_TOKEN) and the header deadline of the command line."""
    import os
    import subprocess
    import sys

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgead.cli.app", "serve", str(tiny_export("fbft") / "export"),
                             "--port", str(port), "--workers", "2", "--name", "cli", "--header-timeout", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EDGEAD_TOKEN": "cli-token"})
    auth = {"Authorization": "Bearer cli-token"}
    try:
        deadline = time.time() + 120
        status = None
        while time.time() < deadline and status != 200:
            assert proc.poll() is None, proc.stderr.read()
            try:
                status, body, _ = _request(f"http://127.0.0.1:{port}/v2/models/cli/ready", headers=auth)
            except OSError:
                time.sleep(0.3)
        assert json.loads(body) == {"name": "cli", "ready": True}
        x = _images(1)
        for _ in range(4):  # reaches both workers (the kernel spreads connections); each wants the token
            assert _request(f"http://127.0.0.1:{port}/v2/models/cli")[0] == 401
        status, out, _ = _request(f"http://127.0.0.1:{port}/v2/models/cli/infer", "POST",
                                  json.dumps(_v2(data=x.reshape(-1).tolist())).encode(), auth)
        out = json.loads(out)
        assert status == 200 and [o["name"] for o in out["outputs"]] == ["scores", "maps"]  # no threshold: no labels
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            t0 = time.perf_counter()
            s.sendall(b"GET /v2 HTTP/1.1\r\nHo")  # and stalls inside its headers
            reply = s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 408 ") and time.perf_counter() - t0 < 1.0 + 1.0, reply
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("sys.argv = ['edgead', 'serve', '/nonexistent/artifact']",
         "expected an artifact folder, found no folder at /nonexistent/artifact"),
        ("sys.modules['uvicorn'] = None; sys.argv = ['edgead', 'serve', '.']",
         "Python package 'uvicorn' is not installed (needed for edgead serve); install it with: pip install "
         "'edgead[serve]'"),
    ],
)
def test_cli_errors_are_one_line(code, message):
    import subprocess
    import sys

    script = f"import sys\n{code}\nfrom edgead.cli.app import main\nmain()\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert message in lines[0]


def test_load_benchmark_counts_requests_and_batches(tiny_export, tmp_path):
    from edgead.bench.serve_load import main

    out = tmp_path / "load.json"
    main([str(tiny_export("fbft") / "export"), "--clients", "4", "--requests", "3", "--delays", "200",
          "--json", str(out)])
    result = json.loads(out.read_text())
    (run,) = result["summary"]
    assert (run["batch_delay_ms"], run["ok"], run["errors"]) == (200.0, 12, 0)
    assert run["mean_batch"] > 1.0  # 4 clients within 200 ms share engine calls
    assert run["latency_ms_p50"] <= run["latency_ms_p99"] and run["server_rss_mb_after"] > 50


# -- hardening (issue 25, items 1-4) ---------------------------------------------------------------------------
def _fake_engine(images: np.ndarray) -> Predictions:
    """Test harness: score = first red pixel / 100; a first pixel of 9 gives NaN (an engine that failed)."""
    first = images[:, 0, 0, 0]
    scores = first.astype(np.float32) / 100
    scores[first == 9] = np.nan
    return Predictions(scores, np.zeros((len(first), H, W), np.float32), None)


def _fake_app(predict=_fake_engine, **config):
    spec = DetectorSpec("fbft", "vit_tiny_test_patch14", "layernorm", (8,), (H, W), threshold=0.5)
    return create_app(predict, spec, ServeConfig(name="m", max_delay_ms=0.0, **config))


def _strict_json(body: bytes):
    def refuse(constant: str):
        raise AssertionError(f"expected strict JSON, found a bare {constant}")

    return json.loads(body, parse_constant=refuse)


def _first_pixels(*values: int) -> np.ndarray:
    x = np.zeros((len(values), H, W, 3), np.uint8)
    x[:, 0, 0, 0] = values
    return x


def _png(first_red: int) -> bytes:
    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[0, 0, 2] = first_red
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    return buf.tobytes()


def test_a_nan_score_is_anomalous_and_null_in_strict_json_on_every_route():
    with background_server(_fake_app()) as url:
        x = _first_pixels(9, 80, 20)
        status, body, _ = _request(f"{url}/v2/models/m/infer", "POST", json.dumps(_v2(
            shape=x.shape, data=x.reshape(-1).tolist())).encode(), {"content-type": "application/json"})
        assert status == 200
        out = {o["name"]: o["data"] for o in _strict_json(body)["outputs"]}
        assert out["scores"] == [None, pytest.approx(0.8), pytest.approx(0.2)]
        assert out["labels"] == [True, True, False]  # the runners' rule: not (score <= threshold)

        body, ctype = _multipart([("nan.png", _png(9)), ("low.png", _png(20))])
        status, out, _ = _request(f"{url}/predict?heatmap=true", "POST", body, {"content-type": ctype})
        assert status == 200, out
        rows = _strict_json(out)["results"]
        assert [(r["name"], r["score"], r["label"]) for r in rows] == [
            ("nan.png", None, "anomalous"), ("low.png", pytest.approx(0.2), "normal")]

        status, out, _ = _request(f"{url}/api/recent")
        recent = [(r["name"], r["score"], r["anomalous"]) for r in _strict_json(out)["recent"]]
        assert recent == [("low.png", pytest.approx(0.2), False), ("nan.png", None, True),
                          ("infer[2]", pytest.approx(0.2), False), ("infer[1]", pytest.approx(0.8), True),
                          ("infer[0]", None, True)]


def _corrupt_scan_jpeg() -> tuple[bytes, int]:
    """A 56 px JPEG with 0xFF 0x42 written into its scan data: OpenCV decodes it, ``read_image`` refuses it."""
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    at = data.find(b"\xff\xda") + 40
    data[at : at + 2] = b"\xff\x42"
    return bytes(data), at


def _png_header(w: int, h: int) -> bytes:
    """The first 33 bytes of a PNG declaring w x h: enough for the header check, nothing to decode."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("scan.jpg", _corrupt_scan_jpeg()[0],
         f"expected valid JPEG scan data, found a corrupt marker 0xFF42 at byte {_corrupt_scan_jpeg()[1]}: scan.jpg"),
        ("bomb.png", _png_header(30000, 30000),
         "expected an image of at most 16.8 Mpx, found bomb.png declaring 30000x30000 (900.0 Mpx; a decompression "
         "bomb?); raise --max-upload-mpx to allow it"),
        ("flat.png", _png_header(8000, 8000),
         "expected an image of at most 16.8 Mpx, found flat.png declaring 8000x8000 (64.0 Mpx; a decompression "
         "bomb?); raise --max-upload-mpx to allow it"),
        ("huge.ppm", b"P6\n40000 40000\n255\n" + bytes(64),  # OpenCV asserts on it, naming its own source file
         "expected a readable image (png, jpg, bmp, tif, webp), found a corrupt or unknown file: huge.ppm"),
    ],
    ids=["corrupt-jpeg-scan", "30000px-png", "8000px-png", "opencv-assert"],
)
def test_uploads_get_read_images_checks_and_the_pixel_cap(name, data, message):
    with background_server(_fake_app()) as url:
        body, ctype = _multipart([("ok.png", _png(20)), (name, data)])
        status, out, _ = _request(f"{url}/predict", "POST", body, {"content-type": ctype})
        assert (status, json.loads(out)) == (400, {"error": message})
        assert _metric(url, "edgead_images_total") == 0.0  # refused before the engine


def test_stalled_clients_are_closed_within_the_timeouts_while_others_are_answered():
    import selectors

    app = _fake_app(header_timeout_s=1.0, body_timeout_s=1.5)
    with background_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        start = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        opened: dict[socket.socket, tuple[int, float]] = {}
        stalls = (start + b"Content-Le", start + b"Content-Length: 100000\r\n\r\n012345", b"")
        for i in range(100):  # stop inside the headers, after 6 bytes of a 100,000-byte body, or send nothing
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(stalls[i % 3])
            opened[s] = (i, time.perf_counter())
        answered = []
        for v in (10, 20, 30):  # while all 100 are stalled
            x = _first_pixels(v)
            t = time.perf_counter()
            status, out = _infer_json(url, _v2(shape=x.shape, data=x.reshape(-1).tolist()), model="m")
            answered.append((status, out["outputs"][0]["data"], time.perf_counter() - t, time.perf_counter()))
        sel = selectors.DefaultSelector()
        for s in opened:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        replies: dict[socket.socket, bytes] = dict.fromkeys(opened, b"")
        open_for: dict[int, float] = {}
        deadline = time.perf_counter() + 6.0
        while sel.get_map() and time.perf_counter() < deadline:  # bounded: 6 s at most
            for key, _ in sel.select(timeout=0.1):
                chunk = key.fileobj.recv(4096)
                replies[key.fileobj] += chunk
                if not chunk:
                    i, t = opened[key.fileobj]
                    open_for[i] = time.perf_counter() - t
                    sel.unregister(key.fileobj)
        first_close = min(t + open_for.get(i, 99.0) for i, t in opened.values())
        for s in opened:
            s.close()
    assert len(open_for) == 100, f"{100 - len(open_for)} stalled connections were still open after 6 s"
    header_s = [v for i, v in open_for.items() if i % 3 != 1]
    body_s = [v for i, v in open_for.items() if i % 3 == 1]
    print(f"100 stalled connections: open for {min(open_for.values()):.2f}..{max(open_for.values()):.2f} s "
          f"(header stalls {max(header_s):.2f} s at most, body stalls {max(body_s):.2f} s); normal requests "
          f"meanwhile answered in {', '.join(f'{a[2] * 1000:.0f}' for a in answered)} ms")
    assert [a[:2] for a in answered] == [(200, [pytest.approx(v / 100)]) for v in (10, 20, 30)]
    assert all(a[3] < first_close for a in answered), "normal requests were answered only after the stalls ended"
    assert 1.0 - 0.05 <= min(header_s) and max(header_s) < 1.0 + 0.75, sorted(header_s)
    assert 1.5 - 0.05 <= min(body_s) and max(body_s) < 1.5 + 0.75, sorted(body_s)
    silent = {r for s, r in replies.items() if opened[s][0] % 3 == 2}
    assert silent == {b""}  # a connection that never spoke is closed without an answer
    spoke = [r for s, r in replies.items() if opened[s][0] % 3 != 2]
    assert {r.split(b"\r\n", 1)[0] for r in spoke} == {b"HTTP/1.1 408 Request Timeout"}
    bodies = {json.loads(r.split(b"\r\n\r\n", 1)[1])["error"] for r in spoke}
    assert bodies == {"expected the request headers within 1 s, found them incomplete; closing the connection",
                      "expected the request body within 1.5 s, found it incomplete; closing the connection"}


def test_a_token_guards_all_but_health_and_the_page_and_a_foreign_host_is_refused():
    with background_server(_fake_app(token="s3cret")) as url:
        none = _request(f"{url}/v2/models/m")
        assert (none[0], json.loads(none[1]), none[2]["www-authenticate"]) == (401, {
            "error": "expected an 'Authorization: Bearer <token>' header (edgead serve --token or EDGEAD_TOKEN), "
                     "found none"}, "Bearer")
        wrong = _request(f"{url}/metrics", headers={"Authorization": "Bearer s3cre"})
        assert (wrong[0], json.loads(wrong[1])["error"]) == (401, "expected an 'Authorization: Bearer <token>' "
                                                                  "header (edgead serve --token or EDGEAD_TOKEN), "
                                                                  "found a wrong token")
        ok = {"Authorization": "Bearer s3cret"}
        assert _request(f"{url}/v2/models/m", headers=ok)[0] == 200
        assert _request(f"{url}/v2/health/ready")[0] == 200 and _request(f"{url}/v2/health/live")[0] == 200
        status, page, _ = _request(f"{url}/")
        assert status == 200 and b"<title>edgead" in page
        status, out, _ = _request(f"{url}/v2/models/m", headers={**ok, "Host": "evil.example:8000"})
        assert (status, json.loads(out)) == (400, {"error": "expected a Host header naming this server "
                                                            "(--allowed-host), found 'evil.example:8000'"})
        assert _request(f"{url}/v2/models/m", headers={**ok, "Host": f"localhost:{url.rsplit(':', 1)[1]}"})[0] == 200
    with background_server(_fake_app(allowed_hosts=("*",))) as url:
        assert _request(f"{url}/v2/models/m", headers={"Host": "evil.example"})[0] == 200


def test_no_answer_reveals_a_local_path(runner, tmp_path):
    (tmp_path / "a.png").write_bytes(_png(20))
    app = app_for_runner(runner, ServeConfig(name="tiny", folder=tmp_path))
    with background_server(app) as url:
        bodies = [_request(f"{url}{route}")[1].decode() for route in ("/api/info", "/v2/models/tiny", "/api/folder")]
    assert json.loads(bodies[0])["artifact"] == runner.folder.name and json.loads(bodies[0])["folder"] == tmp_path.name
    assert json.loads(bodies[1])["parameters"]["artifact"] == runner.folder.name
    assert json.loads(bodies[2]) == {"folder": tmp_path.name, "images": ["a.png"]}
    for body in bodies:
        assert str(tmp_path) not in body and str(runner.folder) not in body, body
    empty = tmp_path / "empty"
    empty.mkdir()
    with background_server(app_for_runner(runner, ServeConfig(name="tiny", folder=empty))) as url:
        status, out, _ = _request(f"{url}/api/folder")
    assert (status, json.loads(out)) == (404, {"error": "expected image files (.png, .jpg, .jpeg, .bmp, .tif, .tiff, "
                                                        ".webp) in the served folder 'empty', found none"})

    def failing(images: np.ndarray) -> Predictions:  # test harness: an engine whose error names a file
        raise RuntimeError("could not open /home/operator/models/line3/model.xml: permission denied")

    with background_server(_fake_app(failing)) as url:
        status, out = _infer_json(url, _v2(), model="m")
    assert (status, out) == (500, {"error": "internal error: RuntimeError: could not open <path>: permission denied"})


def test_deep_json_is_400_and_a_request_that_can_never_fit_the_queue_is_413(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(20))
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with background_server(_fake_app(max_queue=4, folder=tmp_path)) as url:
        status, out, _ = _request(f"{url}/v2/models/m/infer", "POST", deep)
        assert (status, json.loads(out)) == (400, {"error": "expected a JSON inference request, found JSON nested "
                                                            "too deeply to parse"})
        status, out, _ = _request(f"{url}/api/folder/predict", "POST", b'{"names": ' + deep[11:])
        assert (status, json.loads(out)) == (400, {"error": 'expected a JSON body {"names": [image names from '
                                                            '/api/folder]}, found JSON nested too deeply to parse'})
        x = _first_pixels(*[10] * 5)
        status, out = _infer_json(url, _v2(shape=x.shape, data=x.reshape(-1).tolist()), model="m")
        assert (status, out) == (413, {"error": "expected at most 4 images in one request (--max-queue), found 5"})
        body, ctype = _multipart([(f"{i}.png", _png(20)) for i in range(5)])
        status, out, _ = _request(f"{url}/predict", "POST", body, {"content-type": ctype})
        assert (status, json.loads(out)) == (413, {"error": "expected at most 4 images in one request "
                                                            "(--max-queue), found 5"})
        assert _metric(url, "edgead_queue_images") == 0.0
        x = _first_pixels(*[10] * 4)  # exactly the queue still fits
        assert _infer_json(url, _v2(shape=x.shape, data=x.reshape(-1).tolist()), model="m")[0] == 200


def test_predict_tiles_frames_by_the_artifacts_plan(tiled_export, defect_frame):
    """A tiled artifact: /predict cuts each upload (two sizes in one request) into tiles that go through the
    batcher (a queue of 16 makes a 42-tile frame three submissions) and answers the frame-level score of
    Runner.predict_frames; the panel is drawn at the frame's own size; /api/info shows the plan."""
    import base64

    import edgead.runtimes as rt

    _, export = tiled_export
    frame, _ = defect_frame
    small = np.ascontiguousarray(frame[40:140, 30:190])
    with rt.load(export, "onnxruntime") as runner:
        expected = [float(runner.predict_frames(f).scores[0]) for f in (frame, small)]
        app = app_for_runner(runner, ServeConfig(name="tiled", max_queue=16, max_batch=8, max_delay_ms=2.0))
        with background_server(app) as url:
            files = [(n, cv2.imencode(".png", f[:, :, ::-1])[1].tobytes()) for n, f in (("a.png", frame),
                                                                                        ("b.png", small))]
            body, ctype = _multipart(files)
            status, out, _ = _request(f"{url}/predict?heatmap=true", "POST", body, {"content-type": ctype})
            assert status == 200, out
            res = json.loads(out)["results"]
            assert [r["score"] for r in res] == pytest.approx(expected, abs=1e-5)
            assert res[0]["label"] == "anomalous"
            png = base64.b64decode(res[0]["heatmap"].split(",", 1)[1])
            panel = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
            assert panel.shape[1] == 2 * 250 and panel.shape[0] > 300
            status, out, _ = _request(f"{url}/api/info")
            assert json.loads(out)["tiling"] == {"tile": [56, 56], "overlap": 14}


def test_v2_infer_tiles_frames_for_a_tiled_artifact(tiled_export, defect_frame):
    """KServe v2 on a tiled artifact, driven by NVIDIA's tritonclient: metadata says frames of any size, a
    [2, 300, 250, 3] tensor comes back as predict_frames' scores and (2, 300, 250) stitched maps, and a frame
    smaller than a tile is a 400 naming the least size."""
    th = pytest.importorskip("tritonclient.http")
    import edgead.runtimes as rt

    _, export = tiled_export
    frame, _ = defect_frame
    normal = np.clip(np.random.default_rng(4).normal(120, 4, frame.shape), 0, 255).astype(np.uint8)
    x = np.stack([frame, normal])
    with rt.load(export, "onnxruntime") as runner:
        ref = [runner.predict_frames(f) for f in x]
        app = app_for_runner(runner, ServeConfig(name="tiled", max_queue=16, max_batch=8, max_delay_ms=2.0))
        with background_server(app) as url:
            client = th.InferenceServerClient(url.removeprefix("http://"))
            meta = client.get_model_metadata("tiled")
            assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
            assert meta["outputs"][1] == {"name": "maps", "datatype": "FP32", "shape": [-1, -1, -1]}
            inp = th.InferInput("images", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x, binary_data=True)
            res = client.infer("tiled", [inp], outputs=[th.InferRequestedOutput(n, binary_data=True)
                                                        for n in ("scores", "maps")])
            np.testing.assert_allclose(res.as_numpy("scores"), [p.scores[0] for p in ref], atol=1e-5)
            maps = res.as_numpy("maps")
            assert maps.shape == (2, 300, 250)
            np.testing.assert_allclose(maps, np.stack([p.maps[0] for p in ref]), atol=1e-5)
            tiny = np.zeros((1, 40, 250, 3), np.uint8)
            status, body = _infer_json(url, _v2(shape=tiny.shape, data=tiny.reshape(-1).tolist()), model="tiled")
            assert status == 400 and "H >= 56 and W >= 56" in body["error"] and "[1, 40, 250, 3]" in body["error"]
