"""``edgead score``, embedded path: one row per image, equal to ``Runner.predict``, resumable, safe targets."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edgead.cli.app import app
from edgead.errors import InputError
from edgead.score import COLUMNS, artifact_digest, list_archive, read_prepared, score_archive


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
