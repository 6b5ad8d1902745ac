"""The inspection page, end to end in headless Chromium (Debian's ``chromium`` driven by Playwright).

Uploads a good and a defective image through the page's file picker and reads the verdicts the page shows, then
moves the threshold slider and checks the page re-labels without scoring again. Skips (saying why) only when
Playwright or a Chromium binary cannot be had; ``make test`` installs both on a fresh machine.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("EDGEAD_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set EDGEAD_CHROMIUM); make test installs it")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page_case(tiny_export, tiny_synthetic, tmp_path_factory):
    """A good image and a defective one (a good image with a large inverted patch), and a threshold between them."""
    import cv2

    import edgead.runtimes as rt
    from edgead.imageio import list_images, prepare, read_image

    runner = rt.load(tiny_export("fbft") / "export")
    folder = tmp_path_factory.mktemp("page")
    good = read_image(list_images(tiny_synthetic / "test" / "good")[0])
    bad = good.copy()
    bad[8:48, 8:48] = 255 - bad[8:48, 8:48]
    paths = {"good.png": good, "defect.png": bad}
    for name, img in paths.items():
        cv2.imwrite(str(folder / name), img[:, :, ::-1])
    s = runner.predict(np.stack([prepare(read_image(folder / n), runner.spec) for n in paths])).scores
    assert s[1] > s[0], f"the inverted patch should raise the score: good {s[0]}, defect {s[1]}"
    return runner, folder, float((s[0] + s[1]) / 2), dict(zip(paths, s.tolist(), strict=True))


def test_page_shows_verdicts_and_relabels_with_the_slider(browser, page_case):
    from edgead.serve import ServeConfig, app_for_runner
    from edgead.serve.server import background_server

    runner, folder, thr, scores = page_case
    app = app_for_runner(runner, ServeConfig(name="tiny", folder=folder), threshold=thr)
    with background_server(app) as url:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#meta b")
        assert f"threshold {thr:.4f}" in page.inner_text("#meta")
        page.set_input_files("#files", [str(folder / "good.png"), str(folder / "defect.png")])
        page.wait_for_function("document.querySelectorAll('#grid .card').length === 2")

        def verdicts() -> dict[str, str]:
            return page.eval_on_selector_all(
                "#grid .card", "cs => Object.fromEntries(cs.map(c => [c.dataset.name, "
                               "c.querySelector('.verdict').textContent]))")

        assert verdicts() == {"good.png": "OK", "defect.png": "ANOMALY"}
        shown = page.eval_on_selector_all("#grid .card .score", "es => es.map(e => e.textContent)")
        assert sorted(shown) == sorted(f"score {scores[n]:.4f}" for n in scores)
        assert page.inner_text("#n-bad") == "1 ANOMALY" and page.inner_text("#n-ok") == "1 OK"
        overlay = page.eval_on_selector("#grid .card img[alt='heatmap overlay']", "i => i.naturalWidth")
        assert overlay == runner.spec.input_size[1]

        # Above both scores: everything is OK, and nothing was scored again (the engine counter stays).
        images_before = app.state.service.metrics.images._value.get()
        page.eval_on_selector("#slider", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }",
                              max(scores.values()) * 1.01)
        assert verdicts() == {"good.png": "OK", "defect.png": "OK"}
        assert page.inner_text("#n-bad") == "0 ANOMALY"
        page.click("#reset")
        assert verdicts() == {"good.png": "OK", "defect.png": "ANOMALY"}
        assert app.state.service.metrics.images._value.get() == images_before

        # The server folder: the same two images scored on the server, and the live list of recent verdicts.
        page.click("#folder")
        page.wait_for_function("document.querySelectorAll('#grid .card').length === 4")
        page.wait_for_function("document.querySelectorAll('#recent li').length >= 4")
        recent = page.eval_on_selector_all("#recent li .verdict", "es => es.map(e => e.textContent)")
        assert sorted(recent[:4]) == ["ANOMALY", "ANOMALY", "OK", "OK"]
        assert errors == []
        page.close()


def test_page_shows_a_nan_score_as_anomaly_and_works_behind_a_token(browser, page_case):
    """A NaN score (an engine that failed on the image) reaches the page as null and must read ANOMALY, never OK."""
    from edgead.imageio import prepare, read_image
    from edgead.runtimes.base import Predictions
    from edgead.serve import ServeConfig, create_app
    from edgead.serve.server import background_server

    runner, folder, thr, _ = page_case

    def nan_for_defects(images: np.ndarray) -> Predictions:  # test harness: the real runner, NaN for the 2nd image
        p = runner.predict(images)
        scores = p.scores.copy()
        scores[1:] = np.nan
        return Predictions(scores, p.maps, None)

    app = create_app(nan_for_defects, runner.spec.with_threshold(thr), ServeConfig(name="tiny", token="s3cret"))
    with background_server(app) as url:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/#token=s3cret")
        page.wait_for_selector("#meta b")
        assert page.evaluate("location.hash") == ""  # the token leaves the address bar (kept for this tab only)
        page.set_input_files("#files", [str(folder / "good.png"), str(folder / "good.png")])
        page.wait_for_function("document.querySelectorAll('#grid .card').length === 2")
        cards = page.eval_on_selector_all(
            "#grid .card", "cs => cs.map(c => [c.querySelector('.score').textContent, "
                           "c.querySelector('.verdict').textContent])")
        good = runner.predict(prepare(read_image(folder / "good.png"), runner.spec)[None]).scores[0]
        assert good <= thr and sorted(cards) == sorted([["score –", "ANOMALY"], [f"score {good:.4f}", "OK"]])
        page.eval_on_selector("#slider", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", 1e9)
        assert page.inner_text("#n-bad") == "1 ANOMALY"  # no threshold makes a NaN score normal
        page.wait_for_function("document.querySelectorAll('#recent li').length >= 2")
        recent = page.eval_on_selector_all("#recent li .verdict", "es => es.map(e => e.textContent)")
        assert sorted(recent[:2]) == ["ANOMALY", "OK"]
        assert errors == []
        page.close()


def test_page_shows_the_lines_live_state(browser):
    """``--line-status``: the Line panel shows the line's counters, latency, health and last verdict (a NaN score on
    the line reads ANOMALY), follows the line as it goes on, and says so when a line cannot be reached."""
    from edgead.line.metrics import LineMetrics
    from edgead.serve.server import background_server
    from tests.test_serve_line import EXPECTED, app_with, closed_port_url, feed, line_status_server

    metrics = LineMetrics()
    feed(metrics)
    down = closed_port_url()
    with line_status_server(metrics) as line_url, background_server(app_with(line_status=(line_url, down))) as url:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#lines .lineblk[data-up='1'] dd")
        assert page.is_visible("#line-panel")
        shown = page.eval_on_selector_all("#lines .lineblk[data-up='1'] dd",
                                          "ds => Object.fromEntries(ds.map(d => [d.dataset.k, d.textContent]))")
        assert shown == {"frames_in": str(EXPECTED["frames_in"]), "verdicts_out": str(EXPECTED["verdicts_out"]),
                         "dropped": str(EXPECTED["dropped"]), "deadline_missed": str(EXPECTED["deadline_missed"]),
                         "p50": f"{EXPECTED['p50_ms']:.2f} ms", "p99": f"{EXPECTED['p99_ms']:.2f} ms",
                         "health": "ok", "last": "f19 · score – · ANOMALY"}
        assert page.inner_text("#lines .lineblk[data-up='0'] .down") == \
            "line unreachable: connection refused (is edgead line running with --metrics-port?)"

        metrics.frame_in()  # the line goes on; the panel polls every 2 s
        page.wait_for_function("document.querySelector(\"#lines [data-up='1'] dd[data-k='frames_in']\")"
                               ".textContent === '21'", timeout=10_000)
        assert errors == []
        page.close()

    with background_server(app_with()) as url:  # without --line-status the panel stays hidden
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#meta b")
        assert page.is_hidden("#line-panel")
        page.close()
