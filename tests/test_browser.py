"""One real-browser test: the dashboard served by `streamlit run`, driven in headless Chromium.

What AppTest cannot see: the server starts, the page renders in a browser (JavaScript,
plotly, the sidebar navigation links), and no page shows an exception box.
Uses Debian's Chromium (no browser download); skipped with a reason when it is missing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.chromium import ServerError, chromium_path, free_port, launch, start_server, stop_server
from scripts.chromium import wait_healthy as _wait_healthy

# Sidebar link text → something the page shows once it has rendered.
PAGES = {
    "Layer error": "All layers",
    "Graph": "Model graph",
    "Distributions": "Outlier channels, all layers",
    "Fixes": "Where a fix would help",
    "Mixed precision": "What keeping each layer in float recovers",
    "Formats": "Compare formats",
    "Export": "Analysis files",
    "Summary": "Most sensitive layers",
}
pytestmark = pytest.mark.browser


def wait_healthy(proc, url: str, log: Path) -> None:
    try:
        _wait_healthy(proc, url, log)
    except ServerError as e:
        pytest.fail(str(e))


def assert_no_exception(page, where: str) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, f"{where}: exception shown:\n{boxes.first.inner_text()[:2000]}"


def test_dashboard_in_chromium(tmp_path: Path) -> None:
    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium not found (apt-get install chromium); the browser test needs it")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright Python package is not installed"
    )

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "streamlit.log"
    proc = start_server(port, log)
    try:
        wait_healthy(proc, url, log)
        with sync_api.sync_playwright() as p:
            browser = launch(p, exe)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                # Offline: every request goes to the dashboard itself (the favicon included).
                outside: list[str] = []
                page.on(
                    "request",
                    lambda r: outside.append(r.url)
                    if not r.url.startswith((url, "data:", "blob:", "about:"))
                    else None,
                )
                # A fresh server opened straight on a page still goes through app.py's router
                # (Streamlit would otherwise run pages/layers.py alone, without the sidebar).
                t0 = time.monotonic()
                page.goto(f"{url}/layers")
                page.get_by_text("All layers", exact=True).first.wait_for(timeout=90_000)
                print(f"first load (default sample, cold): {time.monotonic() - t0:.1f} s")
                assert page.get_by_role("button", name="Run analysis").is_visible()
                assert urlparse(page.url).path.rstrip("/").endswith("/layers")
                assert query(page)["model"] == "sample:digits_cnn"  # the URL now names the view
                assert_no_exception(page, "Layer error (deep link)")

                page.goto(url)
                # The default sample is analyzed on first load: the verdict is the summary's first line.
                page.get_by_text("Verdict:").first.wait_for(timeout=90_000)
                page.get_by_text("Most sensitive layers").first.wait_for(timeout=30_000)
                assert_no_exception(page, "Summary")
                page.screenshot(path=str(tmp_path / "summary.png"), full_page=True)

                nav = page.locator('[data-testid="stSidebarNav"]')
                for title, marker in PAGES.items():
                    nav.get_by_role("link", name=title).click()
                    page.get_by_text(marker, exact=True).first.wait_for(timeout=60_000)
                    page.wait_for_load_state("networkidle")
                    assert_no_exception(page, title)
                    if title == "Mixed precision":
                        # The search's Pareto charts are drawn by plotly.js in the page.
                        page.get_by_role("button", name="Run search").click()
                        page.get_by_text("Chosen config:").first.wait_for(timeout=120_000)
                        charts = page.locator('[data-testid="stPlotlyChart"] .main-svg')
                        charts.first.wait_for(timeout=30_000)
                        assert_no_exception(page, "Mixed precision search")
                    if title == "Export":
                        page.get_by_role("button", name="Build engines").click()
                        page.get_by_text("Engine vs simulation, layer by layer").first.wait_for(
                            timeout=120_000
                        )
                        page.get_by_role("button", name="model_int8.onnx").wait_for(timeout=30_000)
                        assert_no_exception(page, "Export build")
                    page.screenshot(
                        path=str(tmp_path / f"{title.lower().replace(' ', '_')}.png"),
                        full_page=True,
                    )
                graph_click_reload_and_config(page, url, tmp_path)
                assert not outside, f"requests outside the dashboard: {outside[:5]}"
            finally:
                browser.close()
    finally:
        stop_server(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def graph_click_reload_and_config(page, url: str, tmp_path: Path) -> None:
    """Click a node of the graph, reload the deep link it leaves in the address bar, load a config."""
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Graph").click()
    page.get_by_text("Model graph", exact=True).first.wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    nodes = page.locator('[data-testid="stPlotlyChart"]').first.locator(".scatterlayer .trace").nth(1)
    points = nodes.locator("path.point")
    points.first.wait_for(timeout=30_000)
    # plotly hit-tests clicks on its drag layer: click where the 4th node (3rd layer) is drawn
    box = points.nth(3).bounding_box()
    assert box is not None
    before = query(page).get("focus")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(
        "before => new URLSearchParams(location.search).get('focus') !== before", arg=before, timeout=60_000
    )
    focus = query(page)["focus"]
    page.get_by_role("heading", name=focus).first.wait_for(timeout=60_000)
    assert_no_exception(page, "Graph click")
    page.get_by_role("button", name="Keep in FP16").click()
    page.get_by_role("button", name="Back to INT8").wait_for(timeout=60_000)
    page.wait_for_function("() => new URLSearchParams(location.search).has('float')", timeout=30_000)
    q = query(page)
    assert q["float"] == focus and q["page"] == "graph", q
    page.screenshot(path=str(tmp_path / "graph.png"), full_page=True)

    # A reload (or the link pasted in another session) restores the same view.
    deep = page.url
    page.goto(deep)
    page.get_by_text("Model graph", exact=True).first.wait_for(timeout=60_000)
    page.get_by_role("heading", name=focus).first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Back to INT8").wait_for(timeout=60_000)  # still kept in FP16
    assert_no_exception(page, "deep link reload")
    assert query(page)["float"] == focus

    # Load a colleague's config.json on the Export page: it becomes the config shown.
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Export").click()
    page.get_by_text("Analysis files", exact=True).first.wait_for(timeout=60_000)
    cfg = tmp_path / "colleague.json"
    cfg.write_text(json.dumps({"layers": {focus: "fp32"}}))
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(cfg))
    page.get_by_text("Loaded colleague.json").first.wait_for(timeout=60_000)
    page.wait_for_function("() => new URLSearchParams(location.search).has('prec')", timeout=60_000)
    assert query(page)["prec"] == f"{focus}=fp32" and "float" not in query(page)
    page.get_by_text("1 per-layer precision(s)").first.wait_for(timeout=120_000)
    assert_no_exception(page, "config loaded")
