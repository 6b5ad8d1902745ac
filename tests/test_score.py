"""``edgead score``, embedded path: one row per image, equal to ``Runner.predict``, resumable, safe targets.

Hardening (issue 25): an unreadable image is an error row, not an abort; one run at a time per output folder;
duplicate rows fail the run; an output folder inside the archive is not part of it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgead.cli.app import app
from edgead.errors import InputError, OutputError
from edgead.imageio import read_image
from edgead.score import COLUMNS, LOCK, ScoreWriter, artifact_digest, list_archive, read_prepared, score_archive


def make_images(folder, n: int, size: int = 56, seed: int = 0) -> list:
    """``n`` small PNGs with a bright square on some of them, in two sub-folders."""
    import cv2

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        img = rng.integers(90, 140, (size, size, 3), dtype=np.uint8)
        if i % 3 == 0:
            img[10:22, 10:22] = 250
        p = sub / f"{i:04d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def scored_artifact(tmp_path_factory):
    """A tiny FBFT export whose threshold is the median score of ``images``, so both labels occur."""
    import torch

    import edgead.runtimes as rt
    from edgead.export import export_onnx
    from edgead.models import build_detector, detector_spec
    from edgead.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("score")
    images = make_images(root / "images", 40)
    torch.manual_seed(0)
    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", "layernorm", input_size=56))
    save_checkpoint(det, root / "raw")
    with rt.load(root / "raw") as r:
        scores = r.predict(read_prepared(images, r.spec)).scores
    det.spec = det.spec.with_threshold(float(np.median(scores)))
    save_checkpoint(det, root / "ckpt")
    export_onnx(det, root / "export", source=root / "ckpt")
    return root / "export", root / "images"


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_equal_runner_predict(scored_artifact, tmp_path):
    import edgead.runtimes as rt

    artifact, images = scored_artifact
    s = score_archive(images, artifact, tmp_path / "out", batch=3, heatmaps=True)
    rows = read_rows(tmp_path / "out" / "scores.csv")
    assert tuple(rows[0]) == COLUMNS
    assert (s.total, s.scored, s.skipped) == (40, 40, 0)
    paths = list_archive(images)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    with rt.load(artifact) as runner:
        ref = runner.predict(read_prepared(paths, runner.spec))
    np.testing.assert_array_equal(np.array([float(r["score"]) for r in rows], np.float32), ref.scores)
    labels = np.array([r["label"] == "anomalous" for r in rows])
    np.testing.assert_array_equal(labels, ref.labels)
    assert s.anomalous == int(ref.labels.sum()) == 20 and s.anomaly_rate == pytest.approx(0.5)
    assert {r["artifact_sha256"] for r in rows} == {artifact_digest(artifact)}
    assert len(list((tmp_path / "out" / "heatmaps").glob("*.png"))) == 20
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["total"] == 40 and summary["backend"] == "embedded"


def test_resume_after_interruption_scores_only_missing_rows(scored_artifact, tmp_path):
    artifact, images = scored_artifact
    out = tmp_path / "out"
    score_archive(images, artifact, out, batch=8)
    full = read_rows(out / "scores.csv")
    # simulate a run killed mid-write: keep 13 complete rows and half of the 14th line
    lines = (out / "scores.csv").read_text().splitlines(keepends=True)
    (out / "scores.csv").write_text("".join(lines[:14]) + lines[14][:30])
    s = score_archive(images, artifact, out, batch=8)
    assert (s.scored, s.skipped) == (27, 13)
    again = read_rows(out / "scores.csv")
    assert len(again) == 40 and len({r["path"] for r in again}) == 40
    assert {r["path"]: r["score"] for r in again} == {r["path"]: r["score"] for r in full}
    s = score_archive(images, artifact, out)
    assert (s.scored, s.skipped) == (0, 40)


def test_list_file_relative_paths_and_duplicates(scored_artifact, tmp_path):
    artifact, images = scored_artifact
    some = sorted(images.rglob("*.png"))[:5]
    listing = images / "list.txt"
    listing.write_text("# five images, one twice\n" + "\n".join(str(p.relative_to(images)) for p in some)
                       + f"\n\n{some[0]}\n")
    s = score_archive(listing, artifact, tmp_path / "out")
    assert s.total == 5
    assert [r["path"] for r in read_rows(tmp_path / "out" / "scores.csv")] == [str(p) for p in some]
    listing.unlink()


def test_other_artifact_and_foreign_folders_are_refused(scored_artifact, tmp_path, tiny_export):
    artifact, images = scored_artifact
    out = tmp_path / "out"
    score_archive(images, artifact, out)
    other = tiny_export("fbft", "dyt") / "export"
    with pytest.raises(InputError, match="holds scores of another artifact"):
        score_archive(images, other, out)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="found a folder with other files"):
        score_archive(images, artifact, photos)
    assert sorted(p.name for p in photos.iterdir()) == ["notes.txt"]
    with pytest.raises(InputError, match="found a file"):
        score_archive(images, artifact, photos / "notes.txt")
    assert (photos / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("args, message", [
    (["{missing}", "-a", "{art}", "-o", "{out}"], "expected a folder of images or a text file"),
    (["{images}", "-a", "{art}", "-o", "{out}", "--batch", "0"], "expected --batch of at least 1, found 0"),
])
def test_cli_errors_are_one_line(scored_artifact, tmp_path, args, message):
    artifact, images = scored_artifact
    fill = {"missing": tmp_path / "nope", "art": artifact, "images": images, "out": tmp_path / "out"}
    out = subprocess.run([sys.executable, "-m", "edgead.cli.app", "score", *[a.format(**fill) for a in args]],
                         capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_json_summary(scored_artifact, tmp_path):
    artifact, images = scored_artifact
    res = CliRunner().invoke(app, ["score", str(images), "-a", str(artifact), "-o", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["total"] == 40 and summary["scored"] == 40 and summary["anomalous"] == 20


# -- hardening: bad files, concurrent runs, duplicates, an output inside the archive ---------------------------
def bad_archive(images, root, good: int = 10):
    """A list file of ``good`` images with three bad files among them: 0 bytes, text named .png, a missing file."""
    root.mkdir()
    paths = sorted(images.rglob("*.png"))[:good]
    empty, text, missing = root / "empty.png", root / "notes.png", root / "gone.png"
    empty.write_bytes(b"")
    text.write_text("not an image\n")
    order = [*paths[:3], empty, *paths[3:6], text, *paths[6:8], missing, *paths[8:]]
    (root / "list.txt").write_text("\n".join(str(p) for p in order) + "\n")
    return root / "list.txt", paths, {"empty": empty, "text": text, "missing": missing}


def reason_of(path) -> str:
    with pytest.raises(InputError) as exc:
        read_image(path)
    return str(exc.value)


def test_unreadable_files_get_error_rows_and_the_run_goes_on(scored_artifact, tmp_path):
    """Issue 25 item 5: a 0-byte, a non-image and a missing file are error rows; their batch-mates are scored."""
    import edgead.runtimes as rt

    artifact, images = scored_artifact
    listing, good, bad = bad_archive(images, tmp_path / "archive")
    out = tmp_path / "out"
    s = score_archive(listing, artifact, out, batch=4, parquet=True)  # every batch of 4 holds a bad file
    assert (s.total, s.scored, s.failed, s.skipped, s.errors) == (13, 10, 3, 0, 3)
    rows = {r["path"]: r for r in read_rows(out / "scores.csv")}
    assert len(read_rows(out / "scores.csv")) == len(rows) == 13
    errors = {Path(p).stem: r["error"] for p, r in rows.items() if r["error"]}
    assert errors == {"empty": reason_of(bad["empty"]), "notes": reason_of(bad["text"]),
                      "gone": reason_of(bad["missing"])}
    assert "empty file" in errors["empty"] and "corrupt or unknown" in errors["notes"]
    assert "found nothing" in errors["gone"]
    assert all(rows[str(bad[k])]["score"] == rows[str(bad[k])]["label"] == "" for k in bad)
    with rt.load(artifact) as runner:
        ref = runner.predict(read_prepared(good, runner.spec))
    np.testing.assert_array_equal(np.array([float(rows[str(p)]["score"]) for p in good], np.float32), ref.scores)
    assert s.anomalous == int(ref.labels.sum()) and s.anomaly_rate == pytest.approx(ref.labels.mean())
    import pyarrow.parquet as pq

    table = pq.read_table(out / "scores.parquet").to_pydict()
    assert sum(e is not None for e in table["error"]) == 3 and sum(v is None for v in table["score"]) == 3
    assert json.loads((out / "summary.json").read_text())["errors"] == 3
    # a rerun neither aborts nor retries the error rows: they are final until --retry-errors
    s = score_archive(listing, artifact, out, batch=4)
    assert (s.scored, s.failed, s.skipped, s.errors) == (0, 0, 13, 3)
    # --retry-errors reads them again: the repaired file gets its score, the two still bad keep an error row
    shutil.copy(good[0], bad["empty"])
    s = score_archive(listing, artifact, out, batch=4, retry_errors=True)
    assert (s.scored, s.failed, s.skipped, s.errors) == (1, 2, 10, 2)
    again = read_rows(out / "scores.csv")
    assert len(again) == len({r["path"] for r in again}) == 13
    assert {r["path"]: r["score"] for r in again}[str(bad["empty"])] == rows[str(good[0])]["score"]


def test_cli_exit_code_and_summary_line_count_error_rows(scored_artifact, tmp_path):
    artifact, images = scored_artifact
    listing, _, _ = bad_archive(images, tmp_path / "archive")
    args = ["score", str(listing), "-a", str(artifact), "-o", str(tmp_path / "out"), "--batch", "4"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 3, res.output
    assert "13 images: 10 scored now, 0 already had a row;" in res.output
    assert "3 error rows (unreadable images, 3 found now" in res.output
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 3
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert (summary["scored"], summary["failed"], summary["skipped"], summary["errors"]) == (0, 0, 13, 3)


def test_resumes_an_output_written_before_the_error_column(scored_artifact, tmp_path):
    artifact, images = scored_artifact
    out = tmp_path / "out"
    score_archive(images, artifact, out)
    full = read_rows(out / "scores.csv")
    old = [",".join(COLUMNS[:-1])] + [",".join(r[c] for c in COLUMNS[:-1]) for r in full[:25]]
    (out / "scores.csv").write_text("\n".join(old) + "\n")
    s = score_archive(images, artifact, out)
    assert (s.scored, s.skipped, s.errors) == (15, 25, 0)
    assert read_rows(out / "scores.csv") == full


def _score_cli(images, artifact, out):
    return subprocess.run([sys.executable, "-m", "edgead.cli.app", "score", str(images), "-a", str(artifact), "-o",
                           str(out)], capture_output=True, text=True, timeout=120)


def test_second_run_into_the_same_folder_fails_at_once(scored_artifact, tmp_path):
    """Issue 25 item 6: while one run holds the output folder, a second fails at once, naming the holder."""
    artifact, images = scored_artifact
    out = tmp_path / "out"
    with ScoreWriter(out, artifact_digest(artifact)):  # the first run, still writing
        res = _score_cli(images, artifact, out)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert f"pid {os.getpid()} on " in lines[0] and str(out / LOCK) in lines[0]
        with pytest.raises(OutputError, match="found another 'edgead score' run writing into it"):
            score_archive(images, artifact, out)
        assert read_rows(out / "scores.csv") == []
    s = score_archive(images, artifact, out)  # the lock goes with its holder
    assert s.scored == 40 and len({r["path"] for r in read_rows(out / "scores.csv")}) == 40


def test_rerun_of_an_output_with_duplicate_rows_fails(scored_artifact, tmp_path):
    """Issue 25 item 6: rows written twice (two runs at once) are found and reported, not called a success."""
    artifact, images = scored_artifact
    out = tmp_path / "out"
    score_archive(images, artifact, out)
    lines = (out / "scores.csv").read_text().splitlines(keepends=True)
    with open(out / "scores.csv", "a") as f:
        f.writelines(lines[3:8])  # five images written a second time
    with pytest.raises(OutputError, match=r"found 5 images with more than one row \(5 extra rows; first: "):
        score_archive(images, artifact, out)
    res = _score_cli(images, artifact, out)
    assert res.returncode == 1 and "found 5 images with more than one row" in res.stderr


def test_final_check_reads_the_rows_back_from_disk(scored_artifact, tmp_path):
    """A writer that ignored the lock (an older edgead, a file system without flock) adds rows behind this run's
    back: the final check reads scores.csv, not this run's memory, and fails."""
    artifact, images = scored_artifact
    out = tmp_path / "out"

    def intruder(done: int, total: int) -> None:
        if done == 8:
            with open(out / "scores.csv", "a") as f:
                f.write((out / "scores.csv").read_text().splitlines(keepends=True)[1])

    with pytest.raises(OutputError, match=r"found 1 images with more than one row \(1 extra rows"):
        score_archive(images, artifact, out, batch=8, progress=intruder)
    assert len(read_rows(out / "scores.csv")) == 41


def test_output_inside_the_archive_is_not_scored(scored_artifact, tmp_path):
    """Issue 25 item 7: heatmaps written into an output folder inside the archive are not images of the archive."""
    artifact, images = scored_artifact
    archive = tmp_path / "archive"
    shutil.copytree(images, archive)
    out = archive / "rescore"
    s = score_archive(archive, artifact, out, heatmaps=True)
    assert (s.total, s.scored) == (40, 40) and len(list((out / "heatmaps").glob("*.png"))) == 20
    s = score_archive(archive, artifact, out, heatmaps=True)
    assert (s.total, s.scored, s.skipped) == (40, 0, 40)
    assert len(read_rows(out / "scores.csv")) == 40
    heat = sorted((out / "heatmaps").glob("*.png"))[:2]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in [*sorted(archive.rglob("0*.png"))[:3], *heat]) + "\n")
    assert list_archive(listing, skip=out) == sorted(archive.rglob("0*.png"))[:3]
    with pytest.raises(OutputError, match="found the archive itself"):
        score_archive(archive, artifact, archive)


def test_a_tiled_artifact_scores_whole_frames(tiled_export, defect_frame, tmp_path):
    """Frames of two sizes and an unreadable file: each frame's row is Runner.predict_frames' score and label, the
    anomalous frame's heatmap panel is drawn at its own size, the broken file is an error row; Ray's batches alike."""
    import cv2

    import edgead.runtimes as rt
    from edgead.imageio import write_image

    _, export = tiled_export
    frame, _ = defect_frame
    normal = np.clip(np.random.default_rng(9).normal(120, 4, (180, 260, 3)), 0, 255).astype(np.uint8)
    archive = tmp_path / "frames"
    archive.mkdir()
    write_image(archive / "a_defect.png", frame)
    write_image(archive / "b_normal.png", normal)
    (archive / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    s = score_archive(archive, export, tmp_path / "out", batch=2, heatmaps=True)
    assert (s.total, s.scored, s.failed) == (3, 2, 1)
    rows = read_rows(tmp_path / "out" / "scores.csv")
    with rt.load(export) as runner:
        ref = [runner.predict_frames(f) for f in (frame, normal)]
    assert [float(r["score"]) for r in rows[:2]] == [float(p.scores[0]) for p in ref]
    assert [r["label"] for r in rows[:2]] == ["anomalous", "normal"] == [
        "anomalous" if p.labels[0] else "normal" for p in ref]
    assert rows[2]["score"] == "" and "c_broken.png" in rows[2]["path"] and rows[2]["error"]
    panels = list((tmp_path / "out" / "heatmaps").glob("*.png"))
    assert len(panels) == 1 and cv2.imread(str(panels[0])).shape[1] == 2 * 250
    # the Ray actors' batch function gives the same rows (the cluster run itself: tests/test_ray.py)
    from edgead.scale.ray_data import score_paths

    with rt.load(export) as runner:
        out = score_paths(runner, [str(archive / n) for n in ("a_defect.png", "b_normal.png", "c_broken.png")],
                          want_maps=True)
    assert out["score"][:2].tolist() == [float(p.scores[0]) for p in ref] and np.isnan(out["score"][2])
    assert out["label"].tolist() == [1, 0, -1] and out["error"][2] and not out["error"][0]
    assert np.load(io.BytesIO(out["map"][0])).shape == frame.shape[:2] and out["map"][1] == b""
