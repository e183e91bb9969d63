"""The dashboard in a real browser: Playwright for Python driving Debian's Chromium
(/usr/bin/chromium, headless, --no-sandbox) against `gpux demo` running as a process.

The page loads without script errors, every chart draws real data from the demo's traffic (each
chart element's data-count — levels, candles, trades, points, heat-map cells, samples, leases —
is above 0), live updates arrive (the trade tape's count grows while the page stays open),
switching class redraws from that class's data (the executable prices per product, from the
products and quotes channels of the selected class, never crossed), the candles can be shown for one kind (and the
caption says which), and a page opened later starts with its charts' history from
GET /v1/candles (the index line reaches back before it opened).

Without chromium or the playwright package this test skips with the reason — except under
CI=true, where it fails: CI (.ci/run) installs chromium with apt and `make test` installs the dev
extras, playwright among them.  Nothing is installed at run time.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.test_demo import STARTUP_S, TRADES_WITHIN_S, DemoProcess

CHROMIUM = "/usr/bin/chromium"
CHARTS = ("depth", "products", "candles", "tape", "index", "calendar", "forward", "util", "leases")


def _require_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        why = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why + " — required under CI=true")
        pytest.skip(why)


def test_dashboard_draws_every_chart_and_updates_live(tmp_path) -> None:
    _require_browser()
    from playwright.sync_api import sync_playwright

    demo = DemoProcess("--port", "0", "--seconds", "240", "--every", "30")
    try:
        demo.wait_for(r"^gpux demo — a live GPU-hour market", STARTUP_S)
        url = demo.wait_for(r"dashboard\s+(http://127\.0\.0\.1:\d+/)", 10).group(1)
        t0 = time.monotonic()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1400})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(url)
                assert page.title().startswith("gpux")
                assert page.locator("#status").get_attribute("data-state") in ("connecting", "live")

                # every chart draws real data from the demo's traffic
                counts = _wait_counts(page, TRADES_WITHIN_S + 30)
                assert all(counts[c] > 0 for c in CHARTS), counts
                assert time.monotonic() - t0 < TRADES_WITHIN_S + 30
                assert page.locator("#status").get_attribute("data-state") == "live"
                assert page.locator("#tape-rows tr").count() > 0
                assert re.match(r"\$\d+\.\d{3}", page.locator("#index-value").inner_text())
                assert page.locator("#ticker-H100").inner_text().startswith("H100")
                # executable prices per product (the products and quotes channels): never crossed
                crossed = page.evaluate("[...window.gpux.state.cls['H100'].products.values()].filter("
                                        "(p) => p.best_bid != null && p.best_ask != null && p.best_bid >= p.best_ask)")
                assert crossed == [], crossed
                assert page.locator("#product-rows tr").count() == counts["products"]

                # live updates: the tape grows while the page is open (no reload)
                first = counts["tape"]
                page.wait_for_function(f"window.gpux.counts().tape > {first}", timeout=60_000)
                # the utilisation history gains samples from the periodic poll
                util = counts["util"]
                page.wait_for_function(f"window.gpux.counts().util > {util}", timeout=30_000)

                # another class: its own data is drawn
                page.click("#tabs button[data-cls='A100']")
                page.wait_for_function("location.hash === '#A100'")
                counts = _wait_counts(page, 30)
                assert all(counts[c] > 0 for c in CHARTS), counts
                # the candles of one kind: the caption says which
                page.click("#candle-kinds button[data-kind='on_demand']")
                page.wait_for_function("document.getElementById('candles-kind').textContent === 'on-demand'",
                                       timeout=5_000)
                pressed = page.locator("#candle-kinds button[data-kind='on_demand']").get_attribute("aria-pressed")
                assert pressed == "true"
                assert "on-demand" in page.locator("#ticker-A100").inner_text()  # last price per kind

                # a page opened now starts with history from GET /v1/candles, not with empty charts:
                # the candles of every kind (those older than the live snapshot's are merged) and the
                # index line, one point per minute with firm trades, up to the page's first message
                fresh = browser.new_page(viewport={"width": 1400, "height": 1400})
                fresh.on("pageerror", lambda e: errors.append(str(e)))
                fresh.goto(url + "#H100")
                fresh.wait_for_function("window.gpux && window.gpux.history('H100').state === 'loaded'",
                                        timeout=30_000)
                hist = fresh.evaluate("window.gpux.history('H100')")
                assert hist["received"] > 0 and hist["index"] > 0 and hist["first"] <= fresh.evaluate(
                    "window.gpux.state.time"), hist
                fresh.wait_for_function("window.gpux.counts().index > 0 && window.gpux.counts().candles > 0",
                                        timeout=10_000)
                assert fresh.evaluate("window.gpux.counts().index") >= hist["index"]
                assert errors == [], errors
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            finally:
                browser.close()
    finally:
        demo.stop()


def _wait_counts(page, timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = page.evaluate("window.gpux ? window.gpux.counts() : {}")
        if counts and all(counts.get(c, 0) > 0 for c in CHARTS):
            return counts
        page.wait_for_timeout(500)
    return counts
