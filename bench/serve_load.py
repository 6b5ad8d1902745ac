"""Load test of ``edgead serve`` on loopback: N concurrent clients, a fixed number of KServe v2 requests each.

``python -m edgead.bench.serve_load ARTIFACT [--clients 8] [--requests 25] [--delays 0,5] [--images 1] [--rounds 2]``

For each batching delay the server is started as its own ``edgead serve`` process (so its RSS is its own and the
clients do not share its interpreter), warmed up, then each client thread sends its requests back to back over one
keep-alive connection (binary tensor extension, like Triton's clients). Reported per delay: throughput, p50/p99
latency, errors, the engine's batch-size histogram from ``/metrics``, and the server's RSS before and after the load.
Bounded: at most ``clients * requests`` requests and ``--timeout`` seconds per run; loopback only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _infer_body(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8",
                                     "parameters": {"binary_data_size": images.nbytes}}],
                         "outputs": [{"name": "scores", "parameters": {"binary_data": True}}]}).encode()
    return header + images.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                       "Content-Type": "application/octet-stream"}


def _metrics(port: int) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return text


def _batch_histogram(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("edgead_batch_size_bucket"):
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.split()[-1])
        elif line.startswith(("edgead_batch_size_count", "edgead_batch_size_sum")):
            out[line.split()[0].rsplit("_", 1)[1]] = float(line.split()[-1])
    return out


def _start(artifact: str, port: int, delay_ms: float, max_batch: int, threads_env: dict[str, str]):
    cmd = [sys.executable, "-m", "edgead.cli.app", "serve", artifact, "--port", str(port), "--name", "m",
           "--batch-delay-ms", str(delay_ms), "--max-batch", str(max_batch), "--max-queue", "1024"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **threads_env})
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 120:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready within 120 s")


def run_load(artifact: str, delay_ms: float, clients: int, requests: int, images: int, max_batch: int,
             timeout: float) -> dict:
    port = _free_port()
    proc = _start(artifact, port, delay_ms, max_batch, {})
    try:
        meta_c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        meta_c.request("GET", "/v2/models/m")
        h, w = json.loads(meta_c.getresponse().read())["inputs"][0]["shape"][1:3]
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 256, (images, h, w, 3), dtype=np.uint8)
        body, headers = _infer_body(batch)
        warm = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(3):
            warm.request("POST", "/v2/models/m/infer", body, headers)
            warm.getresponse().read()
        rss_before = _rss_mb(proc.pid)
        hist_before = _batch_histogram(_metrics(port))
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        deadline = time.perf_counter() + timeout

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for _ in range(requests):
                if time.perf_counter() > deadline:
                    with lock:
                        errors.append("timeout")
                    return
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/v2/models/m/infer", body, headers)
                    r = conn.getresponse()
                    r.read()
                    ok = r.status == 200
                except OSError as exc:
                    ok, r = False, exc
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                dt = time.perf_counter() - t0
                with lock:
                    (latencies.append(dt) if ok else errors.append(str(getattr(r, "status", r))))

        threads = [threading.Thread(target=client) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        hist_after = _batch_histogram(_metrics(port))
        rss_after = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = np.array(latencies) * 1000.0
    calls = hist_after.get("count", 0) - hist_before.get("count", 0)
    imgs = hist_after.get("sum", 0) - hist_before.get("sum", 0)
    return {
        "batch_delay_ms": delay_ms, "clients": clients, "requests": clients * requests, "images_per_request": images,
        "ok": len(latencies), "errors": len(errors), "error_samples": errors[:3], "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 2), "images_per_s": round(len(latencies) * images / wall, 2),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "engine_calls": int(calls), "mean_batch": round(imgs / calls, 2) if calls else 0.0,
        "server_rss_mb_before": round(rss_before, 1), "server_rss_mb_after": round(rss_after, 1),
        "_latencies_ms": lat,
    }


def summarise(runs: list[dict]) -> list[dict]:
    """Pool the rounds of each delay: throughput over their summed wall time, percentiles over all latencies."""
    out = []
    for delay in dict.fromkeys(r["batch_delay_ms"] for r in runs):
        rs = [r for r in runs if r["batch_delay_ms"] == delay]
        lat = np.concatenate([r["_latencies_ms"] for r in rs])
        wall = sum(r["wall_s"] for r in rs)
        ok = sum(r["ok"] for r in rs)
        out.append({"batch_delay_ms": delay, "rounds": len(rs), "ok": ok, "errors": sum(r["errors"] for r in rs),
                    "images_per_s": round(ok * rs[0]["images_per_request"] / wall, 3),
                    "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
                    "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
                    "mean_batch": round(sum(r["mean_batch"] * r["engine_calls"] for r in rs)
                                        / max(1, sum(r["engine_calls"] for r in rs)), 2),
                    "server_rss_mb_before": min(r["server_rss_mb_before"] for r in rs),
                    "server_rss_mb_after": max(r["server_rss_mb_after"] for r in rs)})
    return out


def cpu_flags() -> str:
    """The flags that decide f32/bf16/int8 speed that this CPU has, read where every other figure reads them."""
    from edgead.bench.machine import machine_info

    return " ".join(f for f, have in machine_info()["flags"].items() if have) or platform.processor()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="requests per client")
    ap.add_argument("--images", type=int, default=1, help="images per request")
    ap.add_argument("--delays", default="0,5", help="batching delays in ms to compare (0: batching off)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1, help="alternate the delays this many times (ABBA order)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per run at most")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.clients * a.requests > 5000:
        raise SystemExit("at most 5000 requests per run")
    delays = [float(d) for d in a.delays.split(",")]
    runs = []
    for r in range(a.rounds):  # alternate the order so a machine that drifts in speed favours neither setting
        for d in delays if r % 2 == 0 else delays[::-1]:
            runs.append(run_load(a.artifact, d, a.clients, a.requests, a.images, a.max_batch, a.timeout))
    summary = summarise(runs)
    for r in runs:
        r.pop("_latencies_ms")
    result = {"artifact": a.artifact, "cpu": cpu_flags(), "cores": os.cpu_count(), "summary": summary, "runs": runs}
    text = json.dumps(result, indent=2)
    if a.json:
        a.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
