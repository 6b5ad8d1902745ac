"""``edgead line`` core: the hot folder, the queue's drop policy, deadlines, the log, the archive, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edgead.line.frames import Frame, Verdict
from edgead.line.log import COLUMNS, read_log
from edgead.line.queue import BLOCK, DROP_OLDEST, FrameQueue
from edgead.line.run import Line, LineConfig
from edgead.line.sources import HotFolderSource
from edgead.score import COLUMNS as SCORE_COLUMNS
from tests.test_line_helpers import FixedRunner, ListSource, line_artifact, make_image, write_png

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return line_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def runner(artifact):
    import edgead.runtimes as rt

    with rt.load(artifact) as r:
        yield r


def run_in_thread(line: Line) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def go() -> None:
        try:
            box["summary"] = line.run()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            box["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, box


def wait_for(cond, timeout: float = 10.0, step: float = 0.02) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(step)


def expected_score(runner, rgb: np.ndarray) -> float:
    from edgead.imageio import prepare

    return float(runner.predict(prepare(rgb, runner.spec)[None]).scores[0])


# -- the queue ---------------------------------------------------------------------------------------------
def test_queue_drop_oldest_keeps_order_and_counts():
    q = FrameQueue(2, DROP_OLDEST)
    dropped = [q.put(Frame(f"f{i}", i, np.zeros((1, 1, 3), np.uint8))) for i in range(5)]
    assert dropped == [False, False, True, True, True]
    assert q.dropped == 3
    q.close()
    got = []
    while (f := q.get(0.01)) is not None:
        got.append((f.frame_id, bool(f.meta.get("dropped")), f.image is None))
    # the three pushed out come first, in order, without their images; then the two newest
    assert got == [("f0", True, True), ("f1", True, True), ("f2", True, True), ("f3", False, False),
                   ("f4", False, False)]


def test_queue_block_waits_for_room():
    q = FrameQueue(1, BLOCK)
    q.put(Frame("a", 0, None))
    t = threading.Thread(target=q.put, args=(Frame("b", 1, None),))
    t.start()
    time.sleep(0.1)
    assert t.is_alive() and len(q) == 1
    assert q.get(0.1).frame_id == "a"
    t.join(2)
    assert not t.is_alive() and q.get(0.1).frame_id == "b" and q.dropped == 0


# -- the loop with a fake source ---------------------------------------------------------------------------
def test_every_frame_one_row_scores_equal_runner(runner, tmp_path):
    images = [make_image(i) for i in range(6)]
    src = ListSource(images)
    s = Line(runner, src, tmp_path / "out", LineConfig()).run()
    rows = read_log(tmp_path / "out" / "verdicts.csv")
    assert (s.frames_in, s.scored, s.verdicts_out, s.log_rows, len(rows)) == (6, 6, 6, 6, 6)
    assert [r["frame_id"] for r in rows] == [f"f{i}" for i in range(6)]
    assert [int(r["seq"]) for r in rows] == list(range(6))
    assert tuple(rows[0]) == COLUMNS and COLUMNS[: len(SCORE_COLUMNS)] == SCORE_COLUMNS
    thr = runner.spec.threshold
    for r, img in zip(rows, images, strict=True):
        want = expected_score(runner, img)
        assert float(r["score"]) == pytest.approx(want, abs=1e-6)
        assert r["label"] == ("anomalous" if want > thr else "normal")
        assert float(r["threshold"]) == thr
    assert {r["label"] for r in rows} == {"normal", "anomalous"}
    assert src.done_ids == [f"f{i}" for i in range(6)]
    assert s.anomalous == sum(r["label"] == "anomalous" for r in rows)


def test_parquet_log_has_the_rows_typed(runner, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    slow = FixedRunner(runner, score=0.0, delay_s=0.03)
    Line(slow, ListSource([make_image(i) for i in range(8)], policy=DROP_OLDEST), tmp_path / "out",
         LineConfig(queue=1, parquet=True)).run()
    rows = read_log(tmp_path / "out" / "verdicts.csv")
    t = pq.read_table(tmp_path / "out" / "verdicts.parquet").to_pylist()
    assert [r["frame_id"] for r in t] == [r["frame_id"] for r in rows] and len(t) == 8
    assert [r["seq"] for r in t] == list(range(8))
    assert [r["score"] is None for r in t] == [r["status"] == "dropped" for r in rows]
    assert all(r["score"] == 0.0 and r["label"] == "normal" for r in t if r["status"] == "scored")


def test_tiled_artifact_scores_whole_frames_by_its_plan(artifact, tmp_path):
    import edgead.runtimes as rt
    from edgead.spec import TilePlan

    with rt.load(artifact) as tiled:
        tiled.tiling = TilePlan((56, 56), 14)  # as a tiled artifact's runner has it
        frames = [make_image(i, size=120) for i in range(3)]
        want = [float(tiled.predict_frames(f[None]).scores[0]) for f in frames]
        resized = [expected_score(tiled, f) for f in frames]  # what a silent resize would have given
        Line(tiled, ListSource(frames), tmp_path / "out", LineConfig()).run()
    rows = read_log(tmp_path / "out" / "verdicts.csv")
    assert [float(r["score"]) for r in rows] == pytest.approx(want, abs=1e-6)
    assert all(abs(a - b) > 1e-4 for a, b in zip(want, resized, strict=True))


def test_drop_oldest_counts_every_dropped_frame(runner, tmp_path):
    slow = FixedRunner(runner, score=0.0, delay_s=0.05)
    src = ListSource([make_image(i) for i in range(20)], policy=DROP_OLDEST)  # all at once, no pacing
    s = Line(slow, src, tmp_path / "out", LineConfig(queue=2)).run()
    rows = read_log(tmp_path / "out" / "verdicts.csv")
    statuses = [r["status"] for r in rows]
    assert len(rows) == 20 and s.frames_in == 20
    assert [r["frame_id"] for r in rows] == [f"f{i}" for i in range(20)]  # every frame id once, in order
    assert statuses.count("dropped") == s.dropped == 20 - slow.calls
    assert statuses.count("scored") == s.scored == slow.calls
    assert s.dropped >= 15  # 20 frames arrive faster than one 50 ms prediction; the queue holds 2
    dropped = [r for r in rows if r["status"] == "dropped"]
    assert all(r["score"] == "" and r["label"] == "" for r in dropped)
    assert dropped[0]["error"] == "dropped: the queue was full (drop-oldest)"


def test_late_verdict_is_published_flagged(runner, tmp_path):
    slow = FixedRunner(runner, score=0.0, delay_s=0.03)
    s = Line(slow, ListSource([make_image(i) for i in range(3)]), tmp_path / "out",
             LineConfig(deadline_ms=10)).run()
    rows = read_log(tmp_path / "out" / "verdicts.csv")
    assert s.deadline_missed == 3 and [r["deadline_missed"] for r in rows] == ["1", "1", "1"]
    assert all(float(r["latency_ms"]) > 30 and r["status"] == "scored" and r["deadline_ms"] == "10" for r in rows)
    s2 = Line(FixedRunner(runner), ListSource([make_image(0)]), tmp_path / "out2", LineConfig(deadline_ms=5000)).run()
    assert s2.deadline_missed == 0


def test_nan_score_is_null_and_anomalous(runner, tmp_path):
    nan = FixedRunner(runner, score=float("nan"))
    got: list[Verdict] = []

    class Collect:
        def publish(self, v: Verdict) -> None:
            got.append(v)

        def close(self, drain_s: float) -> None:
            pass

    Line(nan, ListSource([make_image(0)]), tmp_path / "out", LineConfig(), sinks=(Collect(),)).run()
    msg = json.loads(got[0].to_json())
    assert msg["score"] is None and msg["label"] == "anomalous" and msg["status"] == "scored"
    assert msg["threshold"] == pytest.approx(runner.spec.threshold)
    assert len(msg["artifact_sha256"]) == 64 and msg["frame_id"] == "f0"
    assert read_log(tmp_path / "out" / "verdicts.csv")[0]["label"] == "anomalous"


def test_archive_keeps_anomalous_frames_within_its_size_limit(runner, tmp_path):
    hot = FixedRunner(runner, score=1e6)  # every part anomalous
    images = [make_image(i, size=96) for i in range(12)]
    line = Line(hot, ListSource(images), tmp_path / "out", LineConfig(archive_max_bytes=120_000))
    s = line.run()
    files = sorted(p.name for p in (tmp_path / "out" / "archive").iterdir())
    size = sum(p.stat().st_size for p in (tmp_path / "out" / "archive").iterdir())
    assert s.anomalous == 12 and line.archive.saved == 12
    assert size <= 120_000 and line.archive.bytes == size
    assert line.archive.pruned == 24 - len(files) > 0  # two files per frame; the oldest went
    assert any(n.endswith(".heatmap.png") for n in files) and any(n.startswith("f11-") for n in files)
    assert not any(n.startswith("f0-") for n in files)


def test_archive_age_limit(runner, tmp_path):
    from edgead.line.archive import Archive

    a = Archive(tmp_path / "a", 1 << 30, max_age_s=3600)
    old = tmp_path / "a" / "old.png"
    old.write_bytes(b"x" * 10)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    Archive(tmp_path / "a", 1 << 30, max_age_s=3600)
    assert not old.exists() and a.saved == 0


def test_stop_drains_the_parts_in_flight(runner, tmp_path):
    slow = FixedRunner(runner, score=0.0, delay_s=0.1)
    line = Line(slow, ListSource([make_image(i) for i in range(5)]), tmp_path / "out", LineConfig(queue=8))
    t, box = run_in_thread(line)
    wait_for(lambda: line.metrics.snapshot()["frames_in"] == 5 and slow.calls >= 1)
    line.stop()
    t.join(10)
    s = box["summary"]
    assert (s.frames_in, s.scored, s.log_rows, slow.calls) == (5, 5, 5, 5)


# -- the hot folder ----------------------------------------------------------------------------------------
def test_slow_writer_scored_once_and_complete(runner, tmp_path):
    folder = tmp_path / "hot"
    folder.mkdir()
    out = tmp_path / "out"
    src = HotFolderSource(folder, tmp_path / "state.txt", settle_s=0.3, poll_s=0.01)
    line = Line(runner, src, out, LineConfig(max_frames=1))
    t, box = run_in_thread(line)
    img = make_image(7, size=128)
    data = write_png(tmp_path / "ref.png", img)
    with open(folder / "part.png", "wb") as f:  # in place, in 8 chunks, 0.1 s apart: never settled before the end
        for k in range(8):
            f.write(data[k * len(data) // 8 : (k + 1) * len(data) // 8])
            f.flush()
            time.sleep(0.1)
    t.join(10)
    rows = read_log(out / "verdicts.csv")
    assert [r["frame_id"] for r in rows] == ["part.png"] and rows[0]["status"] == "scored"
    assert float(rows[0]["score"]) == pytest.approx(expected_score(runner, img), abs=1e-6)
    assert rows[0]["path"] == str(folder / "part.png")
    assert (tmp_path / "state.txt").read_text() == "part.png\n"


def test_atomic_rename_and_partial_names(runner, tmp_path):
    folder = tmp_path / "hot"
    folder.mkdir()
    write_png(folder / ".a.png", make_image(1))  # a writer's temporary names: never picked up
    write_png(folder / "b.png.tmp", make_image(2))
    (folder / "notes.txt").write_text("not an image")
    src = HotFolderSource(folder, tmp_path / "state.txt", settle_s=0.0, poll_s=0.01)
    line = Line(runner, src, tmp_path / "out", LineConfig(max_frames=2))
    t, _ = run_in_thread(line)
    time.sleep(0.2)
    assert line.metrics.snapshot()["frames_in"] == 0
    os.rename(folder / ".a.png", folder / "a.png")
    os.rename(folder / "b.png.tmp", folder / "b.png")
    t.join(10)
    assert [r["frame_id"] for r in read_log(tmp_path / "out" / "verdicts.csv")] == ["a.png", "b.png"]


def test_restart_rescores_nothing(runner, tmp_path):
    folder = tmp_path / "hot"
    folder.mkdir()
    for i in range(4):
        write_png(folder / f"p{i}.png", make_image(i))
    out = tmp_path / "out"

    def run(n: int):
        src = HotFolderSource(folder, out / "processed.txt", settle_s=0.05, poll_s=0.01)
        return Line(runner, src, out, LineConfig(max_frames=n)).run()

    assert run(4).scored == 4
    write_png(folder / "p4.png", make_image(4))
    s = run(1)
    rows = read_log(out / "verdicts.csv")
    assert s.scored == 1 and [r["frame_id"] for r in rows] == [f"p{i}.png" for i in range(5)]
    assert (out / "processed.txt").read_text().splitlines() == [f"p{i}.png" for i in range(5)]
    # a second process on the same --out is refused while the first runs
    from edgead.errors import OutputError
    from edgead.line.log import lock_folder

    held = lock_folder(out)
    with pytest.raises(OutputError, match="another 'edgead line' process"):
        Line(runner, ListSource([]), out)
    held.close()


def test_done_dir_moves_processed_files(runner, tmp_path):
    folder, done = tmp_path / "hot", tmp_path / "done"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"p{i}.png", make_image(i))
    src = HotFolderSource(folder, tmp_path / "s.txt", settle_s=0.0, poll_s=0.01, done_dir=done)
    s = Line(runner, src, tmp_path / "out", LineConfig(max_frames=3)).run()
    assert s.scored == 3 and list(folder.iterdir()) == []
    assert sorted(p.name for p in done.iterdir()) == ["p0.png", "p1.png", "p2.png"]
    from edgead.errors import InputError

    with pytest.raises(InputError, match="expected --done-dir apart from the hot folder"):
        HotFolderSource(folder, tmp_path / "s2.txt", done_dir=folder)


def test_undecodable_file_becomes_one_error_row(runner, tmp_path):
    folder = tmp_path / "hot"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"\x89PNG not really")
    src = HotFolderSource(folder, tmp_path / "s.txt", settle_s=0.0, poll_s=0.01, grace_s=0.2)
    s = Line(runner, src, tmp_path / "out", LineConfig(max_frames=1)).run()
    rows = read_log(tmp_path / "out" / "verdicts.csv")
    assert s.errors == 1 and len(rows) == 1 and rows[0]["status"] == "error"
    assert "expected a readable image" in rows[0]["error"]


# -- the command -------------------------------------------------------------------------------------------
def test_cli_sigterm_drains_and_exits_zero(artifact, tmp_path):
    folder = tmp_path / "hot"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"p{i}.png", make_image(i))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    from tests.test_line_helpers import free_port
    from tests.test_line_metrics import scrape

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgead.cli.app", "line", str(artifact), "--source",
                             f"folder:{folder}", "-o", str(out), "--settle-ms", "20", "--json",
                             "--metrics-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        wait_for(lambda: (out / "verdicts.csv").is_file() and len(read_log(out / "verdicts.csv")) == 3, 30)
        m = scrape(port)
        assert m["edgead_line_frames_in_total"] == 3 and m['edgead_line_verdicts_total{status="scored"}'] == 3
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    s = json.loads(stdout)
    assert (s["frames_in"], s["scored"], s["log_rows"]) == (3, 3, 3)


def test_cli_refuses_a_bad_source_in_one_line(artifact, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgead.cli.app", "line", str(artifact), "--source", "ftp:x",
                        "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == ("error: expected --source folder:PATH, video:PATH|URL or camera:[ID], found 'ftp:x'")


def test_video_file_every_frame_once(runner, tmp_path):
    import cv2

    from edgead.line.sources import VideoSource

    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    for i in range(10):
        w.write(make_image(i)[:, :, ::-1])
    w.release()
    cap, decoded = cv2.VideoCapture(str(path)), []
    while (got := cap.read())[0]:
        decoded.append(got[1][:, :, ::-1])
    cap.release()
    src = VideoSource(str(path))
    assert src.policy == BLOCK  # a file can wait: no frame of it is dropped
    s = Line(runner, src, tmp_path / "out", LineConfig(queue=1)).run()
    rows = read_log(tmp_path / "out" / "verdicts.csv")
    assert len(decoded) == 10 and s.scored == 10 and s.dropped == 0
    assert [r["frame_id"] for r in rows] == [f"clip:{i}" for i in range(10)]
    for r, img in zip(rows, decoded, strict=True):
        assert float(r["score"]) == pytest.approx(expected_score(runner, np.ascontiguousarray(img)), abs=1e-6)
    assert VideoSource("rtsp://127.0.0.1:1/x").policy == DROP_OLDEST


def test_archive_falls_behind_without_holding_the_line(runner, tmp_path):
    from edgead.line.archive import Archive

    a = Archive(tmp_path / "a", 1 << 30, None, backlog=2)
    v = Verdict("x", 0, "r", "s", "scored", 0, 1, 9.0, "anomalous", 1.0, "0" * 64, None, False)
    img = make_image(0, size=512)
    accepted = [a.submit(v, img, img[:56, :56], np.zeros((56, 56), np.float32)) for _ in range(12)]
    a.close()
    assert a.skipped == accepted.count(False) > 0 and a.saved == accepted.count(True)


def test_an_archive_writer_error_is_counted_and_close_returns(tmp_path, monkeypatch):
    """An encoder error in the writer thread is a skipped archive write, not a dead writer that leaves close()
    waiting forever on a full backlog."""
    import cv2

    from edgead.line import archive as archive_mod
    from edgead.line.archive import Archive

    def broken(*args, **kwargs):
        raise cv2.error("encoder broke")

    monkeypatch.setattr(archive_mod.cv2, "imencode", broken)
    a = Archive(tmp_path / "a", 1 << 30, None, backlog=2)
    v = Verdict("x", 0, "r", "s", "scored", 0, 1, 9.0, "anomalous", 1.0, "0" * 64, None, False)
    img = np.zeros((8, 8, 3), np.uint8)
    for _ in range(6):
        a.submit(v, img, img, np.zeros((8, 8), np.float32))
        time.sleep(0.05)
    closer = threading.Thread(target=a.close, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive() and a.saved == 0 and a.skipped == 6
