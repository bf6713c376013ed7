"""Models whose export carries external data go through every command (issue 11)."""

from __future__ import annotations

import json

import onnx
import pytest

from conftest import SPECS

SPEC = SPECS / "big_embedding.py"


def test_the_export_really_carries_external_data(tmp_path):
    from qanalysis.graph import export_onnx
    from qanalysis.workload import load_spec

    wl = load_spec(SPEC)
    export_onnx(wl.model, wl.calibration[0], tmp_path / "exported.onnx")
    assert (tmp_path / "exported.onnx.data").stat().st_size > 7_000_000  # the premise of the tests below


def test_analyze_search_export(run_cli, tmp_path):
    code, _, err = run_cli("analyze", SPEC, "--out", tmp_path / "a", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["n_layers"] >= 2
    # by size: by latency the search may rightly pick FP32 here (its INT8 engine is not faster)
    code, _, err = run_cli("search", SPEC, "--max-drop", "1", "--objective", "size", "--out", tmp_path / "s", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("export", SPEC, "--config", tmp_path / "s" / "config.json", "--out", tmp_path / "e", "--quiet")
    assert code == 0, err
    x = json.loads((tmp_path / "e" / "export.json").read_text())
    assert x["engine_metric"] == pytest.approx(x["simulated_metric"], abs=100 / 48 + 1e-9)
    # the embedding table is quantized as ORT's QDQGather does it (activation grid, per tensor)
    assert x["disagreements"] == [], x["disagreements"]
    assert any(c["layer"] == "emb" and c["agrees"] for c in x["layer_checks"])
    for f in ("model_fp32.onnx", "model_int8.onnx"):
        onnx.checker.check_model(str(tmp_path / "e" / f))  # self-contained: loads from its folder alone
    assert (tmp_path / "e" / "model_fp32.onnx").stat().st_size > 7_000_000  # the embedding is in the file
