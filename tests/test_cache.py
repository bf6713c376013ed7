"""The export cache survives damaged entries, and a run leaves no temporary folder behind."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import pytest

from conftest import ROOT
from qanalysis import graph
from qanalysis.errors import ExportError
from qanalysis.graph import prepare
from qanalysis.workload import load_workload

SAMPLE = "sample:diabetes_mlp"  # the quickest to export


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("QANALYSIS_CACHE", str(root))
    return root


def _fresh_prepare(progress=None):
    """prepare() on a new workload object, so the in-process cache cannot answer."""
    return prepare(load_workload(SAMPLE), progress=progress)


def _fingerprint(qg) -> dict:
    m = onnx.load(str(qg.float_path))
    return {
        "layers": [(l.name, l.op_type, l.weights, l.bias, l.act_inputs) for l in qg.layers],
        "quantized": sorted(qg.quantized_tensors),
        "edges": sorted(qg.edges),
        "axis": qg.weight_axis,
        "weights": {t.name: t.raw_data for t in m.graph.initializer},
    }


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return entry


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x00garbage{not json or onnx" * 7)


@pytest.mark.parametrize("how", ["truncate", "zero", "garbage"])
@pytest.mark.parametrize("name", ["model_fp32.onnx", "plan_qdq.onnx", "scopes.json", "manifest.json"])
def test_damaged_entry_is_rebuilt_with_the_same_results(cache, monkeypatch, name, how):
    first = _fingerprint(_fresh_prepare())
    entry = _entry(cache)
    assert (entry / "manifest.json").is_file()
    _corrupt(entry / name, how)
    said: list[str] = []
    second = _fresh_prepare(said.append)
    assert _fingerprint(second) == first
    assert said == [f"cache entry {entry} was corrupt; rebuilt"]
    # the entry is valid again: the next run uses it without exporting
    calls = []
    monkeypatch.setattr(graph, "export_onnx", lambda *a, **k: calls.append(1))
    said.clear()
    assert _fingerprint(_fresh_prepare(said.append)) == first
    assert not calls and not said


def test_entry_without_manifest_is_rebuilt(cache):
    """An entry whose store was cut short before its manifest (written last) is not trusted."""
    first = _fingerprint(_fresh_prepare())
    entry = _entry(cache)
    (entry / "manifest.json").unlink()
    said: list[str] = []
    assert _fingerprint(_fresh_prepare(said.append)) == first
    assert len(said) == 1 and "was corrupt; rebuilt" in said[0]
    assert (entry / "manifest.json").is_file()


def test_cli_rebuilds_a_zero_byte_plan_and_says_so(cache, run_cli, tmp_path):
    """A zero-byte plan used to blame the model ("found nothing to quantize")."""
    _fresh_prepare()
    (_entry(cache) / "plan_qdq.onnx").write_bytes(b"")
    code, _, err = run_cli("export", SAMPLE, "--out", tmp_path / "o")
    assert code == 0, err
    assert "was corrupt; rebuilt" in err and "nothing to quantize" not in err


def test_store_is_atomic_and_keeps_a_valid_entry(cache):
    qg = _fresh_prepare()
    entry = _entry(cache)
    before = {p.name: p.stat().st_ino for p in entry.iterdir()}
    graph._store(entry, qg.workdir)  # a concurrent run storing the same entry: the valid one stays
    assert {p.name: p.stat().st_ino for p in entry.iterdir()} == before
    _corrupt(entry / "model_fp32.onnx", "truncate")
    graph._store(entry, qg.workdir)  # a run that rebuilt a damaged entry replaces it
    with tempfile.TemporaryDirectory() as d:
        assert graph._fetch(entry, Path(d)) == "hit"
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no staging folder left beside it
    stale = cache / f".{entry.name}.tmp-1-dead"  # what a run killed while storing leaves
    stale.mkdir()
    os.utime(stale, (1, 1))
    graph._store(entry, qg.workdir)
    assert [p.name for p in cache.iterdir()] == [entry.name]


# --------------------------------------------------------------------------- temporary folders


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return d


def _left(d: Path) -> list[str]:
    gc.collect()
    return sorted(p.name for p in d.iterdir() if p.name.startswith("qanalysis"))


def test_analyze_leaves_no_temporary_folder(private_tmp, run_cli, tmp_path):
    code, _, err = run_cli("analyze", SAMPLE, "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    assert _left(private_tmp) == []


def test_failing_analyze_leaves_no_temporary_folder(private_tmp, run_cli, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"layers": {"nope": "fp16"}}))  # fails after the export and plan
    code, _, err = run_cli("analyze", SAMPLE, "--out", tmp_path / "o", "--config", cfg, "--quiet")
    assert code == 2 and "unknown layer" in err
    assert _left(private_tmp) == []


def test_interrupted_analyze_leaves_no_temporary_folder(private_tmp, run_cli, tmp_path, monkeypatch):
    from qanalysis import analysis

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis, "prepare_simulator", interrupt)  # Ctrl-C after the plan was read
    code, _, _ = run_cli("analyze", SAMPLE, "--out", tmp_path / "o", "--quiet")
    assert code == 130
    assert _left(private_tmp) == []


@pytest.mark.parametrize("exc", [ExportError("ONNX Runtime's quantize_static failed: boom"), KeyboardInterrupt()])
def test_failure_inside_prepare_removes_its_folder(private_tmp, monkeypatch, exc):
    monkeypatch.setenv("QANALYSIS_CACHE", "0")

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(graph, "ort_quantize", fail)
    with pytest.raises(type(exc)):
        _fresh_prepare()
    assert sorted(p.name for p in private_tmp.iterdir()) == []  # at once, not at garbage collection


def test_folder_lives_as_long_as_a_graph_uses_it(private_tmp, monkeypatch):
    """Engines are built from qg.float_path after prepare returns: the folder must outlive the call."""
    monkeypatch.setenv("QANALYSIS_CACHE", "0")
    qg = _fresh_prepare()
    wd = qg.workdir
    assert qg.float_path.is_file() and wd.parent == private_tmp
    import copy

    fixed = copy.copy(qg)  # what a fix makes (fixes.with_initializers)
    del qg
    gc.collect()
    assert fixed.float_path.is_file()
    del fixed
    gc.collect()
    assert not wd.exists()


def test_cli_process_leaves_no_temporary_folder(tmp_path):
    """The real command, in its own process (the folder must go at exit too)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "qanalysis", "export", SAMPLE, "--out", str(tmp_path / "o"), "--quiet"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    # (third-party caches such as torchinductor_<user> may stay: they are not ours)
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("qanalysis")) == []
