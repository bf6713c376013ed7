"""Regenerate docs/screenshots/<page>.png: each dashboard page, served by `streamlit run`
and rendered in headless Chromium (Debian's, no browser download).

    .venv/bin/python scripts/screenshots.py [--model tests/specs/planted_outliers.py] [--out docs/screenshots]

The default model is digits_cnn with planted outlier channels (tests/specs/planted_outliers.py):
the bundled samples lose < 1 point in INT8, so their search and fixes pages have little to show.
The script drives what a user would: opens the model graph (Graph), keeps the most sensitive
layer in FP16 (Layer error), runs
the search and uses its config (Mixed precision), builds the INT8 engine (Export), then applies
cross-layer equalization (Fixes, last, since fixes change what the other pages show).

Each PNG is the page's full height at 1400 px wide, reduced to a 256-colour palette so it
stays small (< 400 KB) in the repository.
"""

from __future__ import annotations

import argparse
import io
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.chromium import chromium_path, free_port, launch, start_server, stop_server, wait_healthy  # noqa: E402

# Sidebar link text → (file name, text shown once the page has rendered), in the order taken.
PAGES = {
    "Summary": ("summary", "Run details"),  # the page's last element: its script has ended
    "Layer error": ("layer_error", "All layers"),
    "Graph": ("graph", "Model graph"),
    "Distributions": ("distributions", "Outlier channels, all layers"),
    "Mixed precision": ("mixed_precision", "What keeping each layer in float recovers"),
    "Export": ("export", "Analysis files"),
    "Fixes": ("fixes", "Where a fix would help"),
}
DEFAULT_MODEL = "tests/specs/planted_outliers.py"  # relative: the server runs in ROOT
WIDTH = 1400
MAX_BYTES = 400_000


def shrink(png: bytes) -> bytes:
    """256-colour palette PNG: screenshots are flat UI colours, so this is nearly lossless."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, "PNG", optimize=True
    )
    return out.getvalue()


def full_height_screenshot(page) -> bytes:
    """Streamlit scrolls inside its main container, so grow the viewport to the content's height."""
    height = page.evaluate(
        """() => { const m = document.querySelector('[data-testid="stMain"]');
                   const b = m && m.querySelector('[data-testid="stMainBlockContainer"]');
                   return Math.ceil(Math.max(b ? b.scrollHeight + 120 : 0, m ? m.scrollHeight : 0, 900)); }"""
    )
    page.set_viewport_size({"width": WIDTH, "height": min(int(height), 6000)})
    page.wait_for_timeout(800)  # plotly re-lays out on resize
    png = page.screenshot()
    page.set_viewport_size({"width": WIDTH, "height": 1000})
    return png


def act(page, title: str) -> None:
    """What a user does on the page before it is photographed."""
    if title == "Graph":
        # Group by top-level module and open the module holding the planted outliers (conv2).
        page.get_by_text("Or pick the layer here").wait_for(timeout=60_000)
        page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(timeout=60_000)
    elif title == "Distributions":
        # a weight channel against its own per-channel grid (the page opens on the activation)
        page.get_by_text("weight", exact=True).first.click()
        page.get_by_text("Channel SQNR").wait_for(timeout=60_000)
    elif title == "Layer error":
        # Keep the most sensitive layer (the one the page opens on) in FP16.
        page.get_by_role("button", name="Keep in FP16").click()
        page.get_by_role("button", name="Back to INT8").wait_for(timeout=60_000)
    elif title == "Mixed precision":
        page.get_by_role("button", name="Run search").click()
        page.get_by_text("Chosen config:").first.wait_for(timeout=180_000)
        use = page.get_by_role("button", name="Use this config")
        if use.is_enabled():
            use.click()
            page.get_by_text("In use: it is your current selection.").wait_for(timeout=60_000)
        page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(timeout=60_000)
    elif title == "Export":
        page.get_by_role("button", name="Build engines").click()
        page.get_by_text("Engine vs simulation, layer by layer").first.wait_for(timeout=180_000)
    elif title == "Fixes":
        page.locator('[data-testid="stMultiSelect"]').filter(has_text="Fixes to apply").click()
        page.get_by_role("option", name="cle", exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_role("button", name="Apply").click()
        page.get_by_text("FP32 / PTQ / PTQ + fixes").wait_for(timeout=180_000)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="MODEL to open the dashboard on (sample:NAME or a spec path)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = ap.parse_args(argv)
    exe = chromium_path()
    if exe is None:
        print("error: Chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port)
    try:
        wait_healthy(proc, url)
        with sync_playwright() as p:
            browser = launch(p, exe)
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            page.goto(f"{url}/?{urllib.parse.urlencode({'model': args.model})}")
            page.get_by_text("Verdict:").first.wait_for(timeout=180_000)
            nav = page.locator('[data-testid="stSidebarNav"]')
            for title, (name, marker) in PAGES.items():
                if title != "Summary":  # the page it opens on (clicking it again would rerun it)
                    nav.get_by_role("link", name=title).click()
                page.get_by_text(marker, exact=True).first.wait_for(timeout=120_000)
                page.wait_for_load_state("networkidle")
                act(page, title)
                page.wait_for_timeout(1500)
                if page.locator('[data-testid="stException"]').count():
                    raise SystemExit(f"{title}: the page shows an exception")
                png = shrink(full_height_screenshot(page))
                (args.out / f"{name}.png").write_bytes(png)
                note = "" if len(png) <= MAX_BYTES else f"  (over {MAX_BYTES // 1000} KB)"
                print(f"{args.out / f'{name}.png'}: {len(png) // 1000} KB{note}")
            browser.close()
    finally:
        stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
