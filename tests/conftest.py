"""Shared fixtures: analyses are computed once per test session and reused."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# A fresh export cache per test session: hermetic, yet shared by the tests of this session.
import tempfile as _tempfile

os.environ["QANALYSIS_CACHE"] = _tempfile.mkdtemp(prefix="qanalysis-test-cache-")
import atexit as _atexit
import shutil as _shutil

_atexit.register(_shutil.rmtree, os.environ["QANALYSIS_CACHE"], True)
ROOT = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "specs"


@functools.lru_cache(maxsize=None)
def cached_workload(source: str):
    from qanalysis.workload import load_workload

    return load_workload(source)


@functools.lru_cache(maxsize=None)
def cached_analysis(source: str):
    from qanalysis.analysis import analyze

    return analyze(cached_workload(source), baseline=False)


@pytest.fixture
def run_cli(capsys):
    """Run ``qanalysis`` in-process: returns (exit code, stdout, stderr)."""
    from qanalysis.cli import main

    def run(*argv: str):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
