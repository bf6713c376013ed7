"""Regenerate pylock.toml (exact versions and hashes of every dependency, torch included)
from pyproject.toml's dependencies and its ``dev`` extra: ``make lock``.

`make setup` installs from the lock (``pip install -r pylock.toml``), then the project itself
without dependencies, so every machine gets the same environment.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(reqs) + "\n")
    cmd = [sys.executable, "-m", "pip", "lock", "-q", "-r", f.name, "-o", str(ROOT / "pylock.toml")]
    print(" ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
