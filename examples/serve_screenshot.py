"""Screenshot of the inspection page (docs/serve-page.png): serve an artifact, upload images, capture the page.

python examples/serve_screenshot.py ARTIFACT IMAGE_FOLDER OUT.png   (needs Playwright and Debian's chromium)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from edgead.imageio import list_images
from edgead.serve import ServeConfig, app_for_artifact
from edgead.serve.server import background_server

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def main(artifact: str, folder: str, out: str) -> None:
    app = app_for_artifact(artifact, config=ServeConfig(name="texture-line3", folder=Path(folder)))
    files = [str(p) for p in list_images(folder)]
    with background_server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector("#meta b")
        page.set_input_files("#files", files)
        page.wait_for_function(f"document.querySelectorAll('#grid .card').length === {len(files)}", timeout=300_000)
        page.wait_for_function(f"document.querySelectorAll('#recent li').length >= {len(files)}")
        time.sleep(0.5)
        jpeg = out.endswith(".jpg")
        page.screenshot(path=out, type="jpeg" if jpeg else "png", **({"quality": 85} if jpeg else {}))
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
