"""edgead against anomalib 2.7 on the same Dinomaly weights, timed interleaved in one run (issue 28).

    bash bench/peers/anomalib-venv.sh                                    # the peer's own venv, .peer-venv/anomalib
    .peer-venv/anomalib/bin/python bench/peers/anomalib_peer.py build --data DATA -o PEER   # anomalib builds + exports
    edgead import PEER/model.ckpt --format anomalib-dinomaly -o CKPT; edgead export CKPT -o EXP; edgead compile EXP
    python -m edgead.bench.peer_anomalib --peer-dir PEER --edgead default=EXP --edgead int8-b1=EXP/openvino-int8 \\
        --frames DATA/test --batch 1,8 --rounds 10 --iters 3 [--parity EXP/openvino-fp32] [--json F]

anomalib runs in its own venv (it is not a re-implementation): ``bench/peers/anomalib_peer.py serve`` is started as
a persistent subprocess with the peer venv's python and times anomalib's ``OpenVINOInferencer.predict`` when asked
(JSON lines, see that file). This module loads edgead's artifacts in this process and drives the rounds: every row
(the peer's ``default`` and ``int8_ptq`` exports, each ``--edgead`` artifact) is warmed up first, then each round
times every row ``--iters`` calls at each batch, the order rotated from round to round, so a slow minute of the
shared machine hits all rows alike. Each row keeps its round medians (ms/image): min / median / max. Ratios are
taken **round by round** (peer ms / edgead ms of the same round; > 1 means edgead is faster) and reported with
their spread. Both sides get the same uint8 frames (the ``--frames`` images, fitted to anomalib's resize side):
anomalib's inferencer scales and transposes them and its graph resizes, crops and normalises; edgead's
``Runner.predict_frames`` fits them (``imageio.prepare``) and brings its maps back onto the frame. The load average
is sampled before, between rounds and after; the machine line names the CPU flags.

``--parity ART``: edgead's artifact against anomalib's torch model (``PEER/parity.npz``: uint8 images at the crop
size and ``DinomalyModel.forward``'s raw scores and maps), max |diff| of scores and maps.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgead.errors import EdgeadError

ROOT = Path(__file__).resolve().parent.parent  # the repository (the editable install maps bench/ here)
PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "anomalib_peer.py"  # shipped in the wheel too
PEER_PYTHON = ROOT / ".peer-venv" / "anomalib" / "bin" / "python"  # bench/peers/anomalib-venv.sh; --peer-python
PEER_EXPORTS = {"anomalib default": "default", "anomalib int8_ptq": "int8_ptq"}


class PeerError(EdgeadError):
    """The peer process failed, answered an error or broke the protocol."""


# -- the peer process -------------------------------------------------------------------------------------------
class PeerProcess:
    """A persistent subprocess speaking the JSON-lines protocol of ``bench/peers/anomalib_peer.py serve``."""

    def __init__(self, argv: Sequence[str], timeout_s: float = 900.0, stderr: Any = None,
                 cwd: str | Path | None = None) -> None:
        self.argv = list(argv)
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr if stderr is not None else subprocess.DEVNULL, text=True,
                                     bufsize=1, cwd=cwd)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise PeerError(f"expected the peer process to be running, found it exited with {self.proc.returncode}")
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        if not self._sel.select(self.timeout_s):
            raise PeerError(f"expected the peer's answer to {cmd!r} within {self.timeout_s:.0f} s, found none")
        line = self.proc.stdout.readline()
        if not line:
            raise PeerError(f"expected the peer's answer to {cmd!r}, found end of output (exit {self.proc.wait()})")
        try:
            answer = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PeerError(f"expected one JSON object per line from the peer, found {line[:80]!r}") from exc
        if not isinstance(answer, dict) or not answer.get("ok"):
            raise PeerError(f"peer refused {cmd!r}: {answer.get('error') if isinstance(answer, dict) else answer}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
                self.proc.wait(timeout=30)
            except (PeerError, subprocess.TimeoutExpired):  # a peer that does not answer quit is ended
                self.proc.kill()
                self.proc.wait()
        self._sel.close()

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- rows --------------------------------------------------------------------------------------------------------
class Row(Protocol):
    label: str
    side: str  # "peer" or "edgead"

    def warmup(self, batch: int, n: int) -> None: ...

    def time(self, batch: int, n: int) -> list[float]: ...


class PeerRow:
    """One model loaded in the peer process; the peer times its own calls."""

    side = "peer"

    def __init__(self, peer: PeerProcess, label: str, xml: str | Path) -> None:
        self.peer, self.label, self.name = peer, label, label
        self.info = peer.call("load", name=label, xml=str(xml))

    def warmup(self, batch: int, n: int) -> None:
        self.peer.call("warmup", name=self.name, batch=batch, n=n)

    def time(self, batch: int, n: int) -> list[float]:
        seconds = self.peer.call("time", name=self.name, batch=batch, n=n)["seconds"]
        if len(seconds) != n or not all(isinstance(s, (int, float)) and s > 0 for s in seconds):
            raise PeerError(f"expected {n} positive call times from the peer, found {seconds!r}")
        return [float(s) for s in seconds]


class LocalRow:
    """An edgead runner in this process, fed the same frames through ``predict_frames``."""

    side = "edgead"

    def __init__(self, label: str, call: Callable[[np.ndarray], Any], frames: np.ndarray,
                 info: dict[str, Any] | None = None, batches: Sequence[int] | None = None) -> None:
        self.label, self.call, self.frames, self.info = label, call, frames, info or {}
        self.batches = None if batches is None else [int(b) for b in batches]  # None: every batch of the run

    def warmup(self, batch: int, n: int) -> None:
        for _ in range(n):
            self.call(self.frames[:batch])

    def time(self, batch: int, n: int) -> list[float]:
        from edgead.bench.timing import timed_calls

        return timed_calls(partial(self.call, self.frames[:batch]), n)[1]


# -- the rounds --------------------------------------------------------------------------------------------------
def loadavg() -> tuple[float, float, float] | None:
    try:
        a, b, c = open("/proc/loadavg").read().split()[:3]
        return float(a), float(b), float(c)
    except (OSError, ValueError):
        return None


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": float(min(values)), "median": float(np.median(values)), "max": float(max(values))}


def interleave(rows: Sequence[Row], batches: Sequence[int], rounds: int, iters: int, warmup: int = 2,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Warm every row at every batch, then ``rounds`` rounds: each batch, each row ``iters`` timed calls, the row
    order rotated by one every round (a row with ``batches`` is timed at those only). Returns per row and batch
    the round medians (ms/image) with their spread, per-round cross ratios (each peer row's time over each edgead
    row's time of the same round, where both ran that batch) and the load average sampled around the rounds."""
    if rounds < 1 or iters < 1 or warmup < 0 or not rows:
        raise EdgeadError(f"expected rows, rounds >= 1, iters >= 1 and warmup >= 0, found {len(rows)} rows, "
                          f"rounds={rounds}, iters={iters}, warmup={warmup}")
    say = progress or (lambda _m: None)
    load = [loadavg()]

    def timed_at(row: Row, b: int) -> bool:
        only = getattr(row, "batches", None)
        return only is None or b in only

    for row in rows:
        for b in (b for b in batches if timed_at(row, b)):
            say(f"warm-up {row.label} at batch {b}")
            row.warmup(b, warmup)
    per_round: dict[tuple[str, int], list[float]] = {(r.label, b): [] for r in rows for b in batches
                                                      if timed_at(r, b)}
    started = time.time()
    for k in range(rounds):
        for b in batches:
            active = [r for r in rows if timed_at(r, b)]  # rotated among the rows this batch times
            for row in active[k % len(active):] + active[:k % len(active)]:
                say(f"round {k + 1}/{rounds}, batch {b}: {row.label}")
                seconds = row.time(b, iters)
                per_round[(row.label, b)].append(float(np.median(seconds)) * 1e3 / b)
        load.append(loadavg())
    out_rows = []
    for row in rows:
        for b in (b for b in batches if timed_at(row, b)):
            ms = per_round[(row.label, b)]
            out_rows.append({"label": row.label, "side": row.side, "batch": b, "round_ms_per_image": ms,
                             "ms_per_image": spread(ms), "info": getattr(row, "info", {})})
    ratios = []
    for p in (r for r in rows if r.side == "peer"):
        for e in (r for r in rows if r.side == "edgead"):
            for b in (b for b in batches if timed_at(p, b) and timed_at(e, b)):
                per = [pm / em for pm, em in zip(per_round[(p.label, b)], per_round[(e.label, b)], strict=True)]
                ratios.append({"peer": p.label, "edgead": e.label, "batch": b, "per_round": per,
                               "edgead_speedup": spread(per)})
    samples = [x for x in load if x is not None]
    return {"rounds": rounds, "iters_per_round": iters, "warmup": warmup, "batches": list(batches),
            "order": "rotated by one row each round", "wall_s": time.time() - started, "rows": out_rows,
            "ratios": ratios, "loadavg": samples,
            "loadavg_1min": spread([x[0] for x in samples]) if samples else None}


# -- parity ------------------------------------------------------------------------------------------------------
def parity(artifact: str | Path, reference: str | Path) -> dict[str, Any]:
    """edgead's artifact on the reference's uint8 images against anomalib's torch outputs (raw score, map)."""
    from edgead.runtimes import load

    ref = np.load(reference)
    path, options, _ = artifact_options(str(artifact))
    with load(path, **options) as runner:
        pred = runner.predict(ref["images"])
        engine, precision = runner.engine, runner.executed_precision()
    scores, maps = np.asarray(pred.scores, np.float32).reshape(-1), np.asarray(pred.maps, np.float32)
    if maps.shape != ref["maps"].shape:
        raise EdgeadError(f"expected edgead maps of the reference's shape {ref['maps'].shape}, found {maps.shape}")
    r = float(np.corrcoef(maps.reshape(-1), ref["maps"].reshape(-1))[0, 1])
    return {"artifact": str(artifact), "engine": engine, "executed": precision, "images": int(len(scores)),
            "max_abs_score": float(np.max(np.abs(scores - ref["scores"]))),
            "max_abs_map": float(np.max(np.abs(maps - ref["maps"]))),
            "score_range": [float(ref["scores"].min()), float(ref["scores"].max())],
            "map_range": [float(ref["maps"].min()), float(ref["maps"].max())], "map_r": r}


def agreement(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """How far ``got`` (scores, maps) is from ``ref`` on the same frames: map Pearson r (blind to the affine min-max
    normalisation anomalib applies), max |score| difference and that difference over the reference's score spread."""
    rs, gs = np.asarray(ref["scores"], np.float64).reshape(-1), np.asarray(got["scores"], np.float64).reshape(-1)
    rm, gm = np.asarray(ref["maps"], np.float64), np.asarray(got["maps"], np.float64)
    if rm.shape != gm.shape or rs.shape != gs.shape:
        raise EdgeadError(f"expected outputs of the reference's shapes {rs.shape} / {rm.shape}, found {gs.shape} / "
                          f"{gm.shape}")
    diff = float(np.max(np.abs(rs - gs)))
    span = float(np.ptp(rs))
    return {"map_r": float(np.corrcoef(rm.reshape(-1), gm.reshape(-1))[0, 1]), "max_abs_score": diff,
            "score_diff_over_spread": diff / span if span > 0 else float("nan")}


def fidelity(peer: PeerProcess, peer_rows: Sequence[PeerRow], ckpt: Path, edgead_rows: Sequence[LocalRow],
             reference: Callable[[np.ndarray], Any], frames: np.ndarray, tmp: Path) -> list[dict[str, Any]]:
    """Each tool's rows against its own float reference on the same frames: anomalib's exports against anomalib's
    Lightning model (pre-processor, torch model, post-processor; outputs normalised), edgead's rows against
    edgead's FP32 artifact (itself checked against anomalib's torch model by ``parity``)."""
    def peer_out(name: str) -> dict[str, np.ndarray]:
        path = tmp / f"{len(list(tmp.iterdir()))}.npz"
        peer.call("outputs", name=name, batch=len(frames), path=str(path))
        with np.load(path) as z:
            return {"scores": z["scores"], "maps": z["maps"]}

    peer.call("load_torch", ckpt=str(ckpt))
    out = []
    ref = peer_out("torch")
    for row in peer_rows:
        out.append({"row": row.label, "side": "peer", "against": "anomalib Lightning model (torch fp32)",
                    **agreement(ref, peer_out(row.name))})
    mine = reference(frames)
    ref = {"scores": mine.scores, "maps": mine.maps}
    for row in edgead_rows:
        got = row.call(frames)
        out.append({"row": row.label, "side": "edgead", "against": "edgead openvino fp32 artifact",
                    **agreement(ref, {"scores": got.scores, "maps": got.maps})})
    return out


# -- frames and the command line ---------------------------------------------------------------------------------
def frames_from(folder: Path, count: int, side: int) -> np.ndarray:
    """``count`` images found under ``folder`` (recursively, sorted), resized to ``side`` x ``side`` uint8."""
    from edgead.imageio import IMAGE_SUFFIXES, read_image, resize

    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < count:
        raise EdgeadError(f"expected at least {count} images under {folder}, found {len(paths)}")
    return np.stack([np.ascontiguousarray(resize(read_image(p), (side, side))) for p in paths[:count]])


def _labelled(values: Sequence[str], what: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        label, sep, path = v.partition("=")
        if not sep or not label or not path:
            raise EdgeadError(f"expected {what} as LABEL=PATH, found {v!r}")
        out.append((label, path))
    return out


def artifact_options(spec: str) -> tuple[str, dict[str, Any], list[int] | None]:
    """``PATH[@key=value,...]``: the artifact, its runner options (``static_batch=8``, ``precision_hint=bf16``,
    ``mode=throughput``; integers read as such) and ``batch=N`` (time this row at batch N only)."""
    path, _, opts = spec.partition("@")
    options: dict[str, Any] = {}
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgeadError(f"expected runner options as key=value, found {item!r} in {spec!r}")
        options[key] = int(value) if value.isdigit() else value
    only = options.pop("batch", None)
    return path, options, None if only is None else [int(only)]


def render(doc: dict[str, Any]) -> str:
    from edgead.bench.report import render_machine_line

    lines = [f"{'row':34s} batch  ms/image min / median / max over {doc['rounds']} rounds   [executed]"]
    for r in doc["rows"]:
        s = r["ms_per_image"]
        products = r["info"].get("products") or {}
        executed = (" + ".join(f"{k} {v}" for k, v in sorted(products.items(), key=lambda kv: -kv[1]))
                    or r["info"].get("precision") or r["info"].get("executed") or "")
        lines.append(f"{r['side'] + ' ' + r['label']:34s} {r['batch']:5d}  {s['min']:7.1f} / {s['median']:7.1f} / "
                     f"{s['max']:7.1f}   [{executed}]")
    lines.append("per-round ratios, peer ms / edgead ms (> 1: edgead faster), min / median / max:")
    for q in doc["ratios"]:
        s = q["edgead_speedup"]
        lines.append(f"  {q['peer']:18s} / {q['edgead']:18s} batch {q['batch']}: {s['min']:.2f} / {s['median']:.2f} "
                     f"/ {s['max']:.2f}")
    if doc.get("loadavg_1min"):
        la = doc["loadavg_1min"]
        lines.append(f"load average (1 min) during the rounds: {la['min']:.2f} / {la['median']:.2f} / {la['max']:.2f}")
    for p in doc.get("parity", []):
        lines.append(f"parity {p['artifact']} [{p['engine']} {p['executed']}] vs anomalib torch: max |score| "
                     f"{p['max_abs_score']:.2e}, max |map| {p['max_abs_map']:.2e}, map r {p['map_r']:.6f}")
    for f in doc.get("fidelity", []):
        lines.append(f"fidelity {f['side']} {f['row']} vs {f['against']}: map r {f['map_r']:.5f}, max |score| "
                     f"{f['max_abs_score']:.2e} ({f['score_diff_over_spread']:.2f} of the reference's spread)")
    lines.append(render_machine_line(doc["machine"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from edgead.bench.machine import machine_info
    from edgead.runtimes import load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-dir", type=Path, required=True, help="what anomalib_peer.py build wrote")
    ap.add_argument("--edgead", action="append", default=[],
                    help="LABEL=ARTIFACT[@key=value,...]: an export folder (its default) or artifact, runner options")
    ap.add_argument("--frames", type=Path, required=True, help="images to feed both sides (recursive)")
    ap.add_argument("--frame-side", type=int, default=448, help="frames are resized to this (anomalib's resize)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=3, help="timed calls per row, batch and round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--parity", action="append", default=[],
                    help="ARTIFACT[@key=value,...] to check against anomalib's torch model")
    ap.add_argument("--peer-python", default=str(PEER_PYTHON))
    ap.add_argument("--peer", action="append", default=[],
                    help="LABEL=XML, the peer's rows (default: its default and int8_ptq exports)")
    ap.add_argument("--fidelity", default=None,
                    help="edgead FP32 artifact: check every row against its own tool's float reference on the frames")
    ap.add_argument("--json", type=Path, default=None, help="write the whole document here")
    a = ap.parse_args(argv)
    a.peer_dir = a.peer_dir.resolve()  # paths sent to the peer must not depend on its working folder
    batches = [int(b) for b in a.batch.split(",")]
    doc: dict[str, Any] = {"machine": machine_info(), "command": " ".join(sys.argv), "loadavg_before": loadavg()}
    doc["parity"] = [parity(art, a.peer_dir / "parity.npz") for art in a.parity]
    frames = frames_from(a.frames, max(batches), a.frame_side)
    peers = _labelled(a.peer, "--peer") or [
        (label, str(a.peer_dir / sub / "weights" / "openvino" / "model.xml")) for label, sub in PEER_EXPORTS.items()]
    peers = [(label, os.path.abspath(xml)) for label, xml in peers]  # the peer runs in its own folder (below)
    progress = partial(print, file=sys.stderr, flush=True)
    # cwd: anomalib's OpenVINOInferencer writes an "openvino_cache" folder into the working directory
    python = a.peer_python if os.sep not in str(a.peer_python) else os.path.abspath(a.peer_python)
    with tempfile.TemporaryDirectory() as tmp, PeerProcess([python, str(PEER_SCRIPT.resolve()), "serve"],
                                                           stderr=sys.stderr, cwd=a.peer_dir) as peer:
        np.save(Path(tmp) / "frames.npy", frames)
        doc["peer_versions"] = peer.call("hello")["versions"]
        peer.call("frames", path=str(Path(tmp) / "frames.npy"))
        rows: list[Any] = [PeerRow(peer, label, xml) for label, xml in peers]
        runners = []
        try:
            for label, spec in _labelled(a.edgead, "--edgead"):
                art, options, only = artifact_options(spec)
                runner = load(art, **options)
                runners.append(runner)
                rows.append(LocalRow(label, runner.predict_frames, frames,
                                     {"executed": runner.executed_precision(), "artifact": str(runner.folder),
                                      "options": options, "describe": runner.describe()}, only))
            if a.fidelity:
                progress("fidelity: every row against its own tool's float reference")
                with load(a.fidelity) as ref_runner:
                    doc["fidelity"] = fidelity(peer, [r for r in rows if isinstance(r, PeerRow)],
                                               a.peer_dir / "model.ckpt", [r for r in rows if isinstance(r, LocalRow)],
                                               ref_runner.predict_frames, frames, Path(tmp))
            doc.update(interleave(rows, batches, a.rounds, a.iters, a.warmup, progress))
        finally:
            for runner in runners:
                runner.close()
    doc["loadavg_after"] = loadavg()
    doc["pid"] = os.getpid()
    print(render(doc))
    if a.json is not None:
        a.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
