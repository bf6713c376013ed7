"""The dashboard served by `streamlit run` and Debian's headless Chromium, for the real-browser
test (tests/test_browser.py) and the README's screenshots (scripts/screenshots.py).

One home for what both need: the Chromium binary (never downloaded), its launch arguments,
and starting, waiting for and stopping a Streamlit server on a free port.
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

ROOT = Path(__file__).resolve().parents[1]

# Headless in a container, offline: no sandbox (root), no GPU, and nothing Chromium would fetch on
# its own (component updates, sync, QUIC probes), so every request a test sees is the page's.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium_path() -> str | None:
    """Debian's Chromium (`apt-get install chromium`), or None when it is not installed."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path | None = None) -> subprocess.Popen:
    """`streamlit run app.py` on 127.0.0.1:``port`` in its own process group (output to ``log``)."""
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1",
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]  # fmt: skip
    out = log.open("w") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


class ServerError(RuntimeError):
    pass


def wait_healthy(proc: subprocess.Popen, url: str, log: Path | None = None, timeout: float = 60.0) -> None:
    """Until ``url``/_stcore/health answers; ServerError (with the log's tail) if it never does."""
    tail = lambda: log.read_text()[-3000:] if log is not None and log.exists() else ""  # noqa: E731
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"streamlit exited with {proc.returncode}:\n{tail()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise ServerError(f"streamlit did not answer on {url} within {timeout:.0f} s:\n{tail()}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def launch(playwright, exe: str):
    """A headless Chromium browser with the shared arguments."""
    return playwright.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
