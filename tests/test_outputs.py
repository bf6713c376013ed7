"""Output folders: nothing of the user's is deleted or overwritten, nothing half-written is
left, and a folder holds either one complete run or the one before it (issue 10)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from qanalysis.outputs import MARKER


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _no_staging_left(*dirs: Path) -> bool:
    return not any(p.name.startswith(".qanalysis-") and p.is_dir() for d in dirs if d.exists() for p in d.rglob("*"))


def _cfg(tmp_path: Path, obj) -> Path:
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(obj))
    return p


@pytest.fixture
def previous_run(run_cli, tmp_path):
    """A folder holding a successful analyze run of diabetes_mlp (the fastest sample)."""
    out = tmp_path / "prev"
    code, _, err = run_cli("analyze", "sample:diabetes_mlp", "--out", out, "--quiet")
    assert code == 0, err
    return out


def test_marker_lists_exactly_what_the_run_wrote(previous_run, capsys):
    m = json.loads((previous_run / MARKER).read_text())
    assert m["tool"] == "qanalysis" and m["command"] == "analyze"
    assert sorted(m["files"]) == sorted(p.name for p in previous_run.iterdir() if p.name != MARKER)
    assert {"layers.csv", "summary.json", "report.html", "outliers.csv"} <= set(m["files"])


def test_user_file_is_never_overwritten_even_on_success(run_cli, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text("the user's own summary")
    (out / "run.log").write_text("log")
    code, stdout, err = run_cli("analyze", "sample:diabetes_mlp", "--out", out, "--quiet", "--force")
    assert code == 2 and err.startswith("error: --out") and "did not write" in err and err.count("\n") == 1
    assert _tree(out) == {"run.log": b"log", "summary.json": b"the user's own summary"}
    assert stdout == ""


def test_failed_export_keeps_the_users_model_file(run_cli, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model_fp32.onnx").write_bytes(b"my model")
    code, _, err = run_cli("export", "sample:digits_cnn", "--out", out, "--config", _cfg(tmp_path, {"layers": {"nope": "fp16"}}))
    assert code == 2 and "error:" in err
    assert _tree(out) == {"model_fp32.onnx": b"my model"}


def test_failing_run_into_cwd_keeps_run_log(tmp_path):
    (tmp_path / "run.log").write_text("earlier lines\n")
    with open(tmp_path / "run.log", "a") as log:
        r = subprocess.run([sys.executable, "-m", "qanalysis", "analyze", "sample:nope", "--out", "."], cwd=tmp_path,
                           stderr=log, stdout=subprocess.PIPE, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert r.returncode == 2
    text = (tmp_path / "run.log").read_text()
    assert text.startswith("earlier lines\n") and "error:" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.log"]


def test_previous_results_need_force_and_failed_rerun_keeps_them(run_cli, previous_run, tmp_path):
    before = _tree(previous_run)
    code, _, err = run_cli("analyze", "sample:diabetes_mlp", "--out", previous_run, "--quiet")
    assert code == 2 and "--force" in err and "previous 'qanalysis analyze' run" in err
    assert _tree(previous_run) == before
    bad = _cfg(tmp_path, {"layers": {"nope": "fp16"}})
    code, _, err = run_cli("analyze", "sample:diabetes_mlp", "--out", previous_run, "--quiet", "--force", "--config", bad)
    assert code == 2 and "unknown layer" in err
    assert _tree(previous_run) == before and _no_staging_left(previous_run, tmp_path)


def test_force_replaces_a_previous_run_as_a_whole(run_cli, previous_run):
    code, out, err = run_cli("export", "sample:diabetes_mlp", "--out", previous_run, "--quiet", "--force")
    assert code == 0, err
    names = {p.name for p in previous_run.iterdir()}
    assert "layers.csv" not in names and {"model_fp32.onnx", "model_int8.onnx", "export.json", MARKER} <= names
    m = json.loads((previous_run / MARKER).read_text())
    assert m["command"] == "export" and sorted(m["files"]) == sorted(names - {MARKER})
    wrote = out.strip().splitlines()[-1]
    assert wrote.startswith("wrote ") and "layers.csv" not in wrote and "model_int8.onnx" in wrote


@pytest.mark.parametrize("where", ["qanalysis.workload.load_workload", "qanalysis.analysis.analyze",
                                   "qanalysis.report.write_json"])  # fmt: skip
def test_ctrl_c_over_previous_results_keeps_them_complete(run_cli, previous_run, tmp_path, monkeypatch, where):
    import importlib

    before = _tree(previous_run)
    mod_name, fn_name = where.rsplit(".", 1)
    mod = importlib.import_module(mod_name)
    real = getattr(mod, fn_name)
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if fn_name == "write_json":  # write_analysis writes CSVs and the report first: interrupt mid-writing
            raise KeyboardInterrupt
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, fn_name, interrupted)
    code, _, err = run_cli("analyze", "sample:diabetes_mlp", "--out", previous_run, "--quiet", "--force")
    assert calls and code == 130 and err.startswith("error: interrupted")
    assert _tree(previous_run) == before and _no_staging_left(previous_run, tmp_path)


def test_ctrl_c_into_a_new_nested_folder_leaves_nothing(run_cli, tmp_path, monkeypatch):
    import qanalysis.report as report

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_json", boom)
    code, _, err = run_cli("analyze", "sample:diabetes_mlp", "--out", tmp_path / "a" / "b" / "c", "--quiet")
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_failed_run_to_nested_folder_creates_no_parents(run_cli, tmp_path):
    code, _, err = run_cli("analyze", "sample:nope", "--out", tmp_path / "a" / "b" / "c")
    assert code == 2 and "unknown sample" in err
    assert list(tmp_path.iterdir()) == []


def test_successful_run_to_nested_folder(run_cli, tmp_path):
    code, out, err = run_cli("analyze", "sample:diabetes_mlp", "--out", tmp_path / "a" / "b" / "c", "--quiet")
    assert code == 0, err
    assert (tmp_path / "a" / "b" / "c" / "summary.json").is_file() and _no_staging_left(tmp_path)
    assert out.strip().splitlines()[-1].startswith("wrote flips.csv") or "summary.json" in out


def test_compare_refuses_a_user_file_in_a_config_named_subfolder(run_cli, tmp_path):
    out = tmp_path / "o"
    (out / "ptq").mkdir(parents=True)
    (out / "ptq" / "model_int8.onnx").write_bytes(b"mine")
    cfg = tmp_path / "ptq.json"
    cfg.write_text("{}")
    code, _, err = run_cli("compare", "sample:diabetes_mlp", "--configs", cfg, "--out", out, "--force")
    assert code == 2 and "ptq/model_int8.onnx" in err
    assert _tree(out) == {"ptq/model_int8.onnx": b"mine"}


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_out_is_an_error(run_cli, name):
    code, _, err = run_cli("analyze", "sample:diabetes_mlp", "--out", name)
    assert code == 2 and err.strip() == "error: --out is empty: name an output folder"


def test_too_long_out_name_is_one_line_before_any_work(run_cli, tmp_path):
    code, _, err = run_cli("analyze", "sample:diabetes_mlp", "--out", tmp_path / ("x" * 300))
    assert code == 2 and err.startswith("error: output folder name is too long") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_out_is_a_file(run_cli, tmp_path):
    f = tmp_path / "f"
    f.write_text("mine")
    code, _, err = run_cli("analyze", "sample:diabetes_mlp", "--out", f)
    assert code == 2 and "not a folder" in err and f.read_text() == "mine"


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    # SIGINT as a terminal delivers it: a suite started in the background (`make test &`) would
    # hand the child an ignored SIGINT, and Python then never raises KeyboardInterrupt
    return subprocess.Popen([sys.executable, "-m", "qanalysis", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def _signal_after(p: subprocess.Popen, needle: str, sig: int, timeout: float = 240) -> tuple[str, str]:
    """Send ``sig`` once the progress line containing ``needle`` appears on stderr."""
    err_lines = []
    t0 = time.time()
    for line in p.stderr:
        err_lines.append(line)
        if needle in line:
            p.send_signal(sig)
            break
        if time.time() - t0 > timeout:
            break
    out, rest = p.communicate(timeout=timeout)
    return out, "".join(err_lines) + rest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("needle", ["calibrating", "simulating"])
def test_signal_during_analyze_keeps_previous_run_and_user_files(previous_run, tmp_path, sig, needle):
    before = _tree(previous_run)
    p = _start(["analyze", "sample:digits_cnn", "--out", str(previous_run), "--force"], tmp_path)
    _, err = _signal_after(p, needle, sig)
    assert p.returncode == 128 + sig, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and ("terminated" in last if sig == signal.SIGTERM else "interrupted" in last)
    assert "Traceback" not in err
    assert _tree(previous_run) == before and _no_staging_left(previous_run, tmp_path)
    # the next run on the same cache succeeds
    p = _start(["analyze", "sample:digits_cnn", "--out", str(previous_run), "--force", "--quiet"], tmp_path)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert json.loads((previous_run / "summary.json").read_text())["model"] == "sample:digits_cnn"


def test_sigterm_during_export_into_a_new_folder(tmp_path):
    out = tmp_path / "new"
    p = _start(["export", "sample:digits_cnn", "--out", str(out)], tmp_path)
    _, err = _signal_after(p, "engine", signal.SIGTERM)
    assert p.returncode == 128 + signal.SIGTERM and "terminated" in err.strip().splitlines()[-1]
    assert not out.exists() and _no_staging_left(tmp_path)
