"""Experiments as files: a TOML grid, resumable, into one tidy table (issue 14)."""

from __future__ import annotations

import json

import pandas as pd

from conftest import ROOT

PLAN = """
name = "tiny"
models = ["sample:diabetes_mlp"]
calibrations = ["minmax", "percentile"]
seeds = [0, 1]
[schemes.w8]
weights = { bits = 8 }
[schemes.w4]
weights = { bits = 4 }
"""


def _plan(tmp_path, text=PLAN):
    p = tmp_path / "plan.toml"
    p.write_text(text)
    return p


def test_grid_runs_into_a_tidy_table_and_resumes(run_cli, tmp_path, monkeypatch):
    import qanalysis.experiment as ex

    calls = []
    real = ex.run_cell

    def counting(cell, *a, **k):
        calls.append(cell.key())
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cell, *a, **k)

    monkeypatch.setattr(ex, "run_cell", counting)
    out = tmp_path / "exp"
    code, _, err = run_cli("experiment", _plan(tmp_path), "--out", out, "--quiet")
    assert code == 130 and "interrupted" in err
    assert len(list((out / "cells").glob("*.json"))) == 2  # two finished cells kept
    code, stdout, err = run_cli("experiment", _plan(tmp_path), "--out", out)
    assert code == 0, err
    assert "8 cells, 2 already done" in err and len(calls) == 3 + 6  # the finished cells are not re-run
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 8 and set(df["scheme"]) == {"w8", "w4"} and set(df["seed"]) == {0, 1}
    for col in ["model", "calibration", "fixes", "fp32_metric", "metric", "drop", "drop_ci_low", "cpu", "threads",
                "v_torch", "v_onnxruntime"]:  # fmt: skip
        assert col in df.columns
    assert pd.read_parquet(out / "results.parquet").shape == df.shape
    s = pd.read_csv(out / "summary.csv")
    assert len(s) == 4 and (s["seeds"] == 2).all()
    assert "Plotly.newPlot" in (out / "report.html").read_text()
    marker = json.loads((out / ".qanalysis.json").read_text())
    assert {"results.csv", "report.html"} <= set(marker["files"]) and len(marker["files"]) == 8 + 4
    # seed 1 redraws the calibration: W4 results are not all identical across seeds
    assert "w4" in stdout


def test_plan_errors_are_one_line(run_cli, tmp_path):
    for text, needle in [("models = 1", "must be a non-empty list"), ("nope = 1\nmodels=['sample:digits_cnn']", "unknown plan key"),
                         ("models=['sample:digits_cnn']\ncalibrations=['vibes']", "unknown calibration"),
                         ("models = [", "not valid TOML")]:  # fmt: skip
        code, _, err = run_cli("experiment", _plan(tmp_path, text), "--out", tmp_path / "o")
        assert code == 2 and needle in err and err.count("\n") == 1, err
        assert not (tmp_path / "o").exists()


def test_refuses_a_folder_with_user_files(run_cli, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli("experiment", _plan(tmp_path), "--out", out)
    assert code == 2 and "notes.txt" in err and (out / "notes.txt").read_text() == "mine"


def test_example_plan_is_valid():
    from qanalysis.experiment import Plan

    p = Plan.load(ROOT / "examples" / "stage2_3.toml")
    assert len(p.cells) >= 24 and {c.calibration for c in p.cells} == {"minmax", "percentile", "entropy", "mse"}
