"""The anomalib peer harness's coordination protocol (``edgead.bench.peer_anomalib``), with a FAKE peer.

The fake peer below is a test harness, not anomalib: a small Python script speaking the JSON-lines protocol of
``bench/peers/anomalib_peer.py serve`` that "times" a call as a fixed number of seconds per image and logs every
command it receives, so the tests can check what the edgead side asked and in which order. No anomalib needed.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgead.bench.peer_anomalib import LocalRow, PeerError, PeerProcess, PeerRow, interleave, render

FAKE_PEER = textwrap.dedent('''
    """Test harness: a fake anomalib peer (fixed per-image times, a command log). Not anomalib."""
    import json, os, sys
    log = open(sys.argv[1], "a")
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    print("library noise on stdout must not reach the protocol")
    per_image = {}
    for line in sys.stdin:
        msg = json.loads(line)
        log.write(json.dumps(msg) + "\\n"); log.flush()
        cmd = msg["cmd"]
        if cmd == "hello":
            out = {"ok": True, "versions": {"anomalib": "fake"}}
        elif cmd == "frames":
            out = {"ok": True, "shape": [8, 4, 4, 3]}
        elif cmd == "load":
            if msg["xml"].endswith("missing.xml"):
                out = {"ok": False, "error": "no such model"}
            else:
                per_image[msg["name"]] = float(msg["xml"].split("=")[-1])
                out = {"ok": True, "precision": "bf16", "device": "AUTO"}
        elif cmd == "warmup":
            out = {"ok": True, "outputs": {}}
        elif cmd == "time":
            out = {"ok": True, "seconds": [per_image[msg["name"]] * msg["batch"]] * msg["n"]}
        elif cmd == "load_torch":
            out = {"ok": True}
        elif cmd == "outputs":  # the "torch" reference: a ramp; a model: the ramp scaled by its time, plus noise
            import numpy as np
            ramp = np.arange(msg["batch"] * 16, dtype=np.float32).reshape(msg["batch"], 4, 4)
            k = 1.0 if msg["name"] == "torch" else per_image[msg["name"]]
            np.savez(msg["path"], scores=k * ramp.max(axis=(1, 2)), maps=k * ramp + (k != 1.0) * (ramp % 2))
            out = {"ok": True}
        elif cmd == "crash":
            sys.exit(3)
        elif cmd == "garbage":
            reply.write("not json\\n"); continue
        elif cmd == "hang":
            import time; time.sleep(30); continue
        else:
            out = {"ok": True}
        reply.write(json.dumps(out) + "\\n")
        if cmd == "quit":
            break
''')


@pytest.fixture
def fake_peer(tmp_path: Path):
    script = tmp_path / "fake_peer.py"
    script.write_text(FAKE_PEER)
    log = tmp_path / "peer.log"

    def start(timeout_s: float = 60.0) -> PeerProcess:
        return PeerProcess([sys.executable, str(script), str(log)], timeout_s=timeout_s)

    def commands() -> list[dict]:
        return [json.loads(x) for x in log.read_text().splitlines()]

    return start, commands


class FixedRow:
    """An edgead-side row with fixed call times (the test's stand-in for a runner)."""

    side = "edgead"

    def __init__(self, label: str, per_image_s: float, calls: list[str]) -> None:
        self.label, self.per_image_s, self.calls, self.info = label, per_image_s, calls, {"executed": "int8"}

    def warmup(self, batch: int, n: int) -> None:
        self.calls.append(f"warmup {self.label} {batch}")

    def time(self, batch: int, n: int) -> list[float]:
        self.calls.append(f"time {self.label} {batch}")
        return [self.per_image_s * batch] * n


def test_rounds_alternate_peer_and_edgead_rows_and_ratios_are_per_round(fake_peer):
    start, commands = fake_peer
    calls: list[str] = []
    with start() as peer:
        assert peer.call("hello")["versions"] == {"anomalib": "fake"}
        rows = [PeerRow(peer, "anomalib default", "x=0.040"), PeerRow(peer, "anomalib int8_ptq", "x=0.020"),
                FixedRow("edgead default", 0.010, calls), FixedRow("edgead int8", 0.008, calls)]
        doc = interleave(rows, [1, 8], rounds=3, iters=2, warmup=1)
    log = commands()
    assert [c["cmd"] for c in log[:3]] == ["hello", "load", "load"]
    timed = [c for c in log if c["cmd"] == "time"]
    assert len(timed) == 2 * 2 * 3 and all(c["n"] == 2 for c in timed)  # 2 peer rows x 2 batches x 3 rounds
    warm = [c for c in log if c["cmd"] == "warmup"]
    assert log.index(warm[-1]) < log.index(timed[0])  # every warm-up before the first timed call
    assert log[-1]["cmd"] == "quit"
    # the row order rotates: round 1 starts with the peer's default, round 2 with its int8_ptq, round 3 with edgead
    assert timed[0]["name"] == "anomalib default" and calls[4:6] == ["time edgead default 1", "time edgead int8 1"]
    by = {(r["label"], r["batch"]): r for r in doc["rows"]}
    assert by[("anomalib default", 8)]["ms_per_image"] == {"min": 40.0, "median": 40.0, "max": 40.0}
    assert by[("edgead int8", 1)]["round_ms_per_image"] == pytest.approx([8.0] * 3)
    assert by[("anomalib int8_ptq", 1)]["info"]["precision"] == "bf16"
    ratio = {(q["peer"], q["edgead"], q["batch"]): q for q in doc["ratios"]}
    assert len(ratio) == 2 * 2 * 2
    assert ratio[("anomalib int8_ptq", "edgead int8", 8)]["edgead_speedup"]["median"] == pytest.approx(2.5)
    assert ratio[("anomalib default", "edgead default", 1)]["per_round"] == pytest.approx([4.0] * 3)
    doc["machine"] = {"cpu_model": "test CPU", "cores": 2, "flags": {"avx2": True, "amx_int8": False}}
    text = render(doc)
    assert "peer anomalib int8_ptq" in text and "2.50 / 2.50 / 2.50" in text and "flags: avx2" in text


def test_local_row_times_the_call_on_the_first_batch_frames():
    seen = []
    frames = np.zeros((8, 4, 4, 3), np.uint8)
    row = LocalRow("edgead", lambda f: seen.append(f.shape[0]), frames)
    row.warmup(8, 2)
    times = row.time(1, 3)
    assert seen == [8, 8, 1, 1, 1] and len(times) == 3 and all(t >= 0 for t in times)


def test_peer_failures_are_one_peer_error_each(fake_peer):
    start, _ = fake_peer
    with start() as peer:
        with pytest.raises(PeerError, match="peer refused 'load': no such model"):
            PeerRow(peer, "m", "missing.xml")
        with pytest.raises(PeerError, match="one JSON object per line"):
            peer.call("garbage")
        with pytest.raises(PeerError, match=r"end of output \(exit 3\)"):
            peer.call("crash")
        with pytest.raises(PeerError, match="to be running"):
            peer.call("hello")
    with start(timeout_s=0.5) as peer, pytest.raises(PeerError, match="within 0 s|within 1 s"):
        peer.call("hang")


def test_peer_rows_refuse_bad_times(fake_peer):
    start, _ = fake_peer
    with start() as peer:
        row = PeerRow(peer, "zero", "x=0")
        with pytest.raises(PeerError, match="positive call times"):
            row.time(1, 2)
        with pytest.raises(Exception, match="rounds >= 1"):
            interleave([row], [1], rounds=0, iters=1)


def test_rows_restricted_to_a_batch_are_timed_and_compared_there_only(fake_peer):
    start, _ = fake_peer
    calls: list[str] = []
    only8 = FixedRow("edgead static 8", 0.005, calls)
    only8.batches = [8]
    with start() as peer:
        doc = interleave([PeerRow(peer, "anomalib", "x=0.02"), only8], [1, 8], rounds=3, iters=1, warmup=0)
    assert calls == ["warmup edgead static 8 8"] + ["time edgead static 8 8"] * 3
    assert {(r["label"], r["batch"]) for r in doc["rows"]} == {("anomalib", 1), ("anomalib", 8),
                                                               ("edgead static 8", 8)}
    assert [(q["batch"], q["edgead_speedup"]["median"]) for q in doc["ratios"]] == [(8, pytest.approx(4.0))]


def test_artifact_options_parse_runner_options_and_a_batch():
    from edgead.bench.peer_anomalib import artifact_options

    assert artifact_options("exp/openvino-int8@static_batch=8,precision_hint=bf16,batch=8") == (
        "exp/openvino-int8", {"static_batch": 8, "precision_hint": "bf16"}, [8])
    assert artifact_options("exp") == ("exp", {}, None)
    with pytest.raises(Exception, match="key=value"):
        artifact_options("exp@static_batch")


def test_fidelity_compares_each_side_with_its_own_reference(fake_peer, tmp_path):
    from types import SimpleNamespace

    from edgead.bench.peer_anomalib import agreement, fidelity

    start, commands = fake_peer
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    ramp = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    ref = SimpleNamespace(scores=ramp.max(axis=(1, 2)), maps=ramp)
    edge = LocalRow("edgead int8", lambda f: SimpleNamespace(scores=ref.scores + 0.5, maps=2 * ramp + 1), frames)
    work = tmp_path / "work"
    work.mkdir()
    with start() as peer:
        rows = [PeerRow(peer, "anomalib int8_ptq", "x=0.5")]
        out = fidelity(peer, rows, tmp_path / "model.ckpt", [edge], lambda f: ref, frames, work)
    assert [c["cmd"] for c in commands()][1:4] == ["load_torch", "outputs", "outputs"]
    by = {o["row"]: o for o in out}
    assert by["edgead int8"]["map_r"] == pytest.approx(1.0) and by["edgead int8"]["max_abs_score"] == 0.5
    assert by["edgead int8"]["score_diff_over_spread"] == pytest.approx(0.5 / 16)
    assert 0.99 < by["anomalib int8_ptq"]["map_r"] < 1.0 and by["anomalib int8_ptq"]["side"] == "peer"
    with pytest.raises(Exception, match="reference's shapes"):
        agreement({"scores": ref.scores, "maps": ramp}, {"scores": ref.scores, "maps": ramp[:1]})


def test_the_order_rotates_among_the_rows_a_batch_times():
    calls: list[str] = []
    a, b, c = FixedRow("a", 0.01, calls), FixedRow("b", 0.01, calls), FixedRow("c8", 0.01, calls)
    c.batches = [8]
    interleave([a, b, c], [1, 8], rounds=2, iters=1, warmup=0)
    timed = [x.removeprefix("time ") for x in calls if x.startswith("time")]
    assert timed == ["a 1", "b 1", "a 8", "b 8", "c8 8",  # round 1
                     "b 1", "a 1", "b 8", "c8 8", "a 8"]  # round 2: each batch's first row moves on by one
