"""ONNX files as models (issue 14): analyze / search / export on a graph exported elsewhere."""

from __future__ import annotations

import json

import onnx
import pandas as pd
import pytest
import torch

from conftest import ROOT, cached_analysis

SPEC = ROOT / "sample_models" / "digits_cnn.py"


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    from qanalysis.cli import main

    d = tmp_path_factory.mktemp("onnx")
    assert main(["export", "sample:digits_cnn", "--out", str(d / "e"), "--quiet"]) == 0
    return d / "e" / "model_fp32.onnx"


def test_analyze_an_onnx_file_with_a_spec_for_the_data(run_cli, digits_onnx, tmp_path):
    code, out, err = run_cli("analyze", digits_onnx, "--data", SPEC, "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    ref = cached_analysis("sample:digits_cnn")
    assert s["fp32_metric"] == pytest.approx(ref.fp32_metric)
    assert abs(s["int8_metric"] - ref.int8_metric) <= 100 / 540 + 1e-9  # the same graph, at most one sample apart
    layers = pd.read_csv(tmp_path / "o" / "layers.csv")
    assert len(layers) == len(ref.qgraph.layers)


def test_search_and_export_an_onnx_file(run_cli, digits_onnx, tmp_path):
    code, _, err = run_cli("search", digits_onnx, "--data", SPEC, "--max-drop", "1", "--out", tmp_path / "s", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("export", digits_onnx, "--data", SPEC, "--config", tmp_path / "s" / "config.json",
                           "--out", tmp_path / "e", "--quiet")  # fmt: skip
    assert code == 0, err
    x = json.loads((tmp_path / "e" / "export.json").read_text())
    assert x["engine_metric"] == pytest.approx(x["simulated_metric"], abs=100 / 540 + 1e-9)


def _image_folder(root, n=6, size=40):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()).save(root / f"c{c}" / f"{i}.png")
    return root


def _tiny(half: bool = False):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval()  # fmt: skip
    return m.half() if half else m


@pytest.mark.parametrize("half", [False, True])
def test_image_folder_fp32_and_fp16_files_named_by_their_nodes(run_cli, tmp_path, half):
    root = _image_folder(tmp_path / "imgs")
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "m.onnx"
    torch.onnx.export(_tiny(half), (x.half() if half else x,), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}},
                      dynamo=False)  # fmt: skip
    code, out, err = run_cli("analyze", path, "--data", root, "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    names = pd.read_csv(tmp_path / "o" / "layers.csv")["layer"].tolist()
    assert all(n.startswith("/") for n in names), names  # the graph's node names (no module names here)
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["n_evaluation_samples"] > 0 and "32×32" in s["description"]
    assert ("float16" in err) == half


def test_external_data_beside_the_file(run_cli, tmp_path):
    root = _image_folder(tmp_path / "imgs")
    path = tmp_path / "ext.onnx"
    torch.onnx.export(_tiny(), (torch.randn(1, 3, 32, 32),), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    m = onnx.load(str(path))
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data",
                    size_threshold=0)  # fmt: skip
    assert (tmp_path / "ext.onnx.data").stat().st_size > 1000
    code, _, err = run_cli("analyze", path, "--data", root, "--out", tmp_path / "o", "--quiet")
    assert code == 0, err


@pytest.mark.parametrize("args,needle", [([], "needs --data"), (["--data", "/nope"], "data folder not found")])
def test_bad_onnx_input_is_one_line(run_cli, digits_onnx, tmp_path, args, needle):
    code, _, err = run_cli("analyze", digits_onnx, *args, "--out", tmp_path / "o", "--quiet")
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_missing_onnx_file(run_cli, tmp_path):
    code, _, err = run_cli("analyze", tmp_path / "nope.onnx", "--data", SPEC, "--out", tmp_path / "o")
    assert code == 2 and "ONNX model not found" in err
