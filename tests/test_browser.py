"""One real-browser test: the dashboard served by `streamlit run`, driven in headless Chromium.

What AppTest cannot see: the server starts, the page renders in a browser (JavaScript,
plotly, the sidebar navigation links), and no page shows an exception box.
Uses Debian's Chromium (no browser download); skipped with a reason when it is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Sidebar link text → something the page shows once it has rendered.
PAGES = {
    "Layer error": "All layers",
    "Distributions": "Outlier channels, all layers",
    "Fixes": "Where a fix would help",
    "Mixed precision": "What keeping each layer in float recovers",
    "Export": "Analysis files",
    "Summary": "Most sensitive layers",
}
pytestmark = pytest.mark.browser


def chromium_path() -> str | None:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(
        f"streamlit did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    )


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                # A fresh server opened straight on a page still goes through app.py's router
                # (Streamlit would otherwise run pages/layers.py alone, without the sidebar).
                t0 = time.monotonic()
                page.goto(f"{url}/layers")
                page.get_by_text("All layers", exact=True).first.wait_for(timeout=90_000)
                print(f"first load (default sample, cold): {time.monotonic() - t0:.1f} s")
                assert page.get_by_role("button", name="Run analysis").is_visible()
                assert page.url.rstrip("/").endswith("/layers")
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
                # Plotly charts mount lazily: wait for the Summary's per-class chart to draw.
                page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(
                    timeout=30_000
                )
            finally:
                browser.close()
    finally:
        stop_server(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
