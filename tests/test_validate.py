"""validate + diff: any engine on the user's data, compared with error bars (issue 14);
and the statistics behind every interval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ROOT
from qanalysis import stats


# --------------------------------------------------------------------------- statistics


def test_bootstrap_interval_contains_the_drop_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1600):
        a = (rng.random(n) < 0.9).astype(float) * 100
        b = np.where(rng.random(n) < 0.05, 0.0, a)  # b loses ~5 % of a's right answers
        iv = stats.paired_bootstrap(None, None, None, torch.zeros(n), per_sample=(a, b))
        assert iv.low <= iv.delta <= iv.high and iv.delta > 0
        widths.append(iv.high - iv.low)
    assert widths[1] < widths[0] / 2.5  # ∝ 1/√N: 4× the samples, about half the width


def test_generic_metric_bootstrap_matches_the_per_sample_one():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (200,), generator=g)
    a, b = torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g)
    from qanalysis.workload import top1_accuracy

    fast = stats.paired_bootstrap(top1_accuracy, a, b, y, per_sample=(stats.correct_vector(a, y), stats.correct_vector(b, y)))
    slow = stats.paired_bootstrap(top1_accuracy, a, b, y, n_boot=1000)
    assert fast.delta == pytest.approx(slow.delta)
    assert fast.low == pytest.approx(slow.low) and fast.high == pytest.approx(slow.high)  # same seed, same resamples


def test_mcnemar_exact():
    ref = np.array([1] * 10 + [0] * 2 + [1] * 88)
    cand = np.array([0] * 10 + [1] * 2 + [1] * 88)
    m = stats.mcnemar(ref, cand)
    assert (m["ref_right_cand_wrong"], m["ref_wrong_cand_right"]) == (10, 2)
    assert m["p_value"] == pytest.approx(0.03857, abs=1e-4)  # 2·P(X ≤ 2), X ~ Bin(12, ½)
    assert stats.mcnemar(ref, ref)["p_value"] == 1.0


def test_verdict_says_uncertain_when_the_interval_straddles_a_threshold():
    sure = stats.verdict_with_interval(stats.Interval(0.4, 0.1, 0.8, n=500, n_boot=1000))
    assert sure.certain and sure.text == "ship INT8"
    unsure = stats.verdict_with_interval(stats.Interval(0.4, -0.3, 1.2, n=540, n_boot=1000))
    assert not unsure.certain and unsure.text.startswith("uncertain: ship INT8 or mixed precision or QAT")
    assert unsure.samples_to_settle and unsure.samples_to_settle > 540
    assert str(unsure.samples_to_settle) in unsure.text


# --------------------------------------------------------------------------- validate / diff


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """This tool's export of digits_cnn, plus a plain ORT quantize_static engine (int8
    activations, ORT's defaults) and a quantize_dynamic one, made from the same FP32 model."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    from qanalysis.cli import main
    from qanalysis.workload import load_sample

    d = tmp_path_factory.mktemp("engines")
    assert main(["export", "sample:digits_cnn", "--out", str(d / "e"), "--quiet"]) == 0
    wl = load_sample("digits_cnn")
    import onnx

    name = onnx.load(str(d / "e" / "model_fp32.onnx")).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: x[0].numpy()} for x in wl.calibration])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(d / "e" / "model_fp32.onnx"), str(d / "ort_static.onnx"), Reader())
    quantize_dynamic(str(d / "e" / "model_fp32.onnx"), str(d / "ort_dynamic.onnx"))
    return d


def test_validate_and_diff_an_engine_made_by_plain_onnxruntime(run_cli, engines, tmp_path):
    spec = ROOT / "sample_models" / "digits_cnn.py"
    fp32, ours, ort_s = engines / "e" / "model_fp32.onnx", engines / "e" / "model_int8.onnx", engines / "ort_static.onnx"
    code, out, err = run_cli("validate", fp32, ours, ort_s, "--spec", spec, "--out", tmp_path / "r", "--quiet")
    assert code == 0, err
    res = {p.name: json.loads(p.read_text()) for p in (tmp_path / "r").glob("*.results.json")}
    assert set(res) == {"model_fp32.results.json", "model_int8.results.json", "ort_static.results.json"}
    r = res["model_fp32.results.json"]
    assert r["n"] == 540 and r["metric"] > 95 and r["top1"] == pytest.approx(r["metric"]) and r["top5"] >= r["top1"]
    assert len(r["per_class"]) == 10 and len(r["predictions"]) == 540
    assert r["latency"]["median_ms"] > 0 and r["latency"]["runs"] >= 10 and r["size_bytes"] > res["model_int8.results.json"]["size_bytes"]
    assert r["environment"]["versions"]["onnxruntime"]
    code, out, err = run_cli("diff", tmp_path / "r" / "model_fp32.results.json", tmp_path / "r" / "ort_static.results.json",
                             "--spec", spec, "--out", tmp_path / "d")  # fmt: skip
    assert code == 0, err
    assert "95% CI" in out and "McNemar" in out and "verdict:" in out
    d = json.loads((tmp_path / "d" / "diff.json").read_text())
    assert d["drop"]["low"] <= d["drop"]["delta"] <= d["drop"]["high"]
    assert d["metric_a"] == pytest.approx(r["metric"]) and len(d["per_class"]) == 10
    assert d["mcnemar"]["p_value"] <= 1.0 and d["one_sample_worth"] == pytest.approx(100 / 540)


def test_diff_of_two_engines_directly_on_an_image_folder(run_cli, tmp_path):
    """The seed's flow on an image folder: two engines (one with a fixed batch of 1)."""
    from PIL import Image

    root = tmp_path / "imgs"
    g = torch.Generator().manual_seed(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(8):
            Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()).save(root / f"c{c}" / f"{i}.png")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(8, 3)).eval()  # fmt: skip
    x = torch.randn(1, 3, 32, 32)
    torch.onnx.export(m, (x,), str(tmp_path / "dyn.onnx"), input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    torch.onnx.export(m, (x,), str(tmp_path / "fixed1.onnx"), input_names=["x"], dynamo=False)  # batch fixed at 1
    code, out, err = run_cli("diff", tmp_path / "dyn.onnx", tmp_path / "fixed1.onnx", "--data", root, "--size", "32",
                             "--resize", "0", "--quiet")  # fmt: skip
    assert code == 0, err
    assert "drop A − B: 0.00 points" in out and "on 24 paired samples" in out and "verdict: ship INT8" in out


@pytest.mark.parametrize("args,needle", [
    (["validate", "/nonexistent.onnx", "--spec", "sample_models/digits_cnn.py"], "engine not found"),
    (["validate", "x.onnx"], "exactly one of --data DIR or --spec"),
    (["diff", "/nope.results.json", "/nope2.results.json"], "results file not found"),
])  # fmt: skip
def test_bad_input_is_one_line(run_cli, tmp_path, args, needle):
    argv = [*args] + (["--out", str(tmp_path / "o")] if args[0] == "validate" else [])
    code, _, err = run_cli(*argv)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_analyze_reports_the_drop_with_its_interval(run_cli, tmp_path):
    code, out, err = run_cli("analyze", "sample:digits_resnet", "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    lo, hi = s["drop_ci95"]
    assert lo <= s["drop"] <= hi and hi > lo  # one flipped sample of 540: a real interval
    assert s["one_sample_worth"] == pytest.approx(100 / 540)
    assert s["verdict_detail"]["certain"] is True and s["verdict"] == "ship INT8"
    assert f"(95% CI {lo:.2f} to {hi:.2f})" in out.splitlines()[0]


def test_each_layer_drop_carries_its_interval(run_cli, tmp_path):
    import pandas as pd

    code, out, err = run_cli("analyze", "sample:digits_cnn", "--config", str(_w3(tmp_path)), "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    layers = pd.read_csv(tmp_path / "o" / "layers.csv")
    assert (layers["metric_drop_ci_low"] <= layers["metric_drop"] + 1e-9).all()
    assert (layers["metric_drop"] <= layers["metric_drop_ci_high"] + 1e-9).all()
    assert (layers["metric_drop_ci_high"] > layers["metric_drop_ci_low"]).any()  # W3 weights move some layer
    assert "95% CI" in out.splitlines()[2]


def _w3(tmp_path):
    p = tmp_path / "w3.json"
    p.write_text(json.dumps({"scheme": {"weights": {"bits": 3}}}))
    return p
