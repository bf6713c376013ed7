"""The CLI contract: outputs, and one clear line with a non-zero exit for bad input."""

import json
import os

import pandas as pd
import pytest

from conftest import SPECS
from qanalysis.workload import list_samples

LAYER_COLS = ["layer", "op_type", "params", "weight_sqnr_db", "act_sqnr_db", "output_sqnr_db", "e2e_sqnr_db",
              "e2e_kl", "metric_drop", "metric_drop_all_but", "recommendation"]  # fmt: skip


def test_samples(run_cli):
    code, out, _ = run_cli("samples")
    assert code == 0 and out.split() == list_samples()


@pytest.mark.parametrize("name", list_samples())
def test_analyze_each_sample(run_cli, tmp_path, name):
    code, out, err = run_cli("analyze", f"sample:{name}", "--out", tmp_path / "o")
    assert code == 0, err
    assert "→" in out and "verdict" not in err
    d = tmp_path / "o"
    layers = pd.read_csv(d / "layers.csv")
    assert list(layers.columns[: len(LAYER_COLS)]) == LAYER_COLS
    assert len(layers) >= 3 and layers["layer"].is_unique
    outl = pd.read_csv(d / "outliers.csv")
    assert list(outl.columns[:5]) == ["layer", "tensor", "channel", "absmax", "ratio"]
    s = json.loads((d / "summary.json").read_text())
    for k in ["fp32_metric", "int8_metric", "drop", "verdict", "scheme", "timings_s", "versions"]:
        assert k in s
    assert s["versions"]["onnxruntime"] and s["baseline"]["ort_latency_b1"]["mean_ms"] > 0
    html = (d / "report.html").read_text()
    assert html.count("<div") > 5 and "Plotly.newPlot" in html and "<script src=\"http" not in html  # self-contained
    assert "[" in err  # progress on stderr


def test_analyze_with_config(run_cli, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"scheme": {"weights": {"granularity": "per_tensor"}, "activations": {"calibration": "percentile"}},
                               "layers": {"conv2.conv": "fp16"}}))  # fmt: skip
    code, out, err = run_cli("analyze", "sample:digits_cnn", "--out", tmp_path / "o", "--config", cfg, "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["scheme"]["weights"]["granularity"] == "per_tensor"
    assert s["config"]["layers"] == {"conv2.conv": "fp16"}


def _cfg(tmp_path, obj):
    p = tmp_path / "cfg.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


@pytest.mark.parametrize(
    "args,needle",
    [
        (["sample:nope"], "unknown sample"),
        ([str(SPECS / "missing.py")], "spec file not found"),
        ([str(SPECS / "no_build_model.py")], "does not define build_model()"),
        ([str(SPECS / "raises.py")], "broken on purpose"),
        ([str(SPECS / "bad_forward.py")], "forward failed"),
        ([str(SPECS / "nan_outputs.py")], "NaN"),
        (["sample:digits_cnn", "--config", {"layers": {"conv9": "fp16"}}], "unknown layer 'conv9'"),
        (["sample:digits_cnn", "--config", {"scheme": {"weights": {"bits": 1}}}], "bits must be an integer in 2..16"),
        (["sample:digits_cnn", "--config", {"scheme": {"activations": {"calibration": "vibes"}}}], "unknown calibration"),
        (["sample:digits_cnn", "--config", "{not json"], "not valid JSON"),
        (["sample:digits_cnn", "--config", {"fixes": ["magic"]}], "unknown fix 'magic'"),
        (["sample:digits_cnn", "--config", "/nonexistent/c.json"], "config file not found"),
    ],
)
def test_bad_input_one_line_no_traceback_no_output(run_cli, tmp_path, args, needle):
    argv = []
    for a in args:
        if isinstance(a, dict) or (isinstance(a, str) and a.startswith("{")):
            argv.append(str(_cfg(tmp_path, a)))
        else:
            argv.append(a)
    out_dir = tmp_path / "out"
    code, out, err = run_cli("analyze", *argv, "--out", out_dir, "--quiet")
    assert code != 0
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_nonroot(run_cli, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, _, err = run_cli("analyze", "sample:digits_cnn", "--out", ro / "x")
    assert code != 0 and err.startswith("error: cannot write")


def test_unwritable_out(run_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a folder")
    code, _, err = run_cli("analyze", "sample:digits_cnn", "--out", blocker / "sub")
    assert code != 0 and err.startswith("error: cannot write to output folder") and "Traceback" not in err


def test_usage_error_is_one_line(run_cli):
    code, _, err = run_cli("analyze")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")


def test_module_entry_point(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "qanalysis", "samples"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "digits_cnn" in r.stdout


def test_analyze_torchvision_resnet18_on_an_image_folder(run_cli, tmp_path):
    import torch
    import torchvision
    from PIL import Image

    root = tmp_path / "images"
    g = torch.Generator().manual_seed(0)
    for c in ["a", "b"]:
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()).save(root / c / f"{i}.png")
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "w.pt")
    code, out, err = run_cli("analyze", f"torchvision:resnet18@{tmp_path / 'w.pt'}", "--data", root, "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    layers = pd.read_csv(tmp_path / "o" / "layers.csv")
    assert {"conv1", "layer1.0.conv1", "layer4.1:add", "fc"} <= set(layers["layer"])


def test_failed_run_into_existing_folder_keeps_old_files_and_adds_none(run_cli, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"layers": {"nope": "fp16"}}))
    code, _, err = run_cli("export", "sample:digits_cnn", "--out", out, "--config", cfg, "--quiet")
    assert code != 0 and "holds files qanalysis did not write (keep.txt)" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
