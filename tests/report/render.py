"""Open an HTML file in Debian's headless chromium and say what a reader would see, as JSON.

Run as its own process (``python tests/report/render.py PAGE SCREENSHOT``): Playwright's sync API
must not share a process with gevent, which other tests load. Never downloads a browser.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

# every chart: its box on the page, and how far its longest drawn data artist reaches
CHARTS = """() => [...document.querySelectorAll('figure.chart')].map(f => {
  const svg = f.querySelector('svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const lines = svg ? [...svg.querySelectorAll('g[id*="-data-"] path')] : [];
  const reach = p => { const b = p.getBoundingClientRect(); return Math.max(b.width, b.height); };
  const longest = Math.max(0, ...lines.map(reach));
  return {id: f.id, width: box.width, height: box.height, lines: lines.length, longest: longest};
})"""


def main(page_path: str, screenshot: str) -> None:
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}"))
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(Path(page_path).resolve().as_uri(), wait_until="load")
        charts = page.evaluate(CHARTS)
        text = page.inner_text("body")
        page.screenshot(path=screenshot, full_page=True)
        browser.close()
    json.dump({"problems": problems, "requests": requests, "charts": charts, "text": text}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
