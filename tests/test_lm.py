"""Language models and lower-is-better metrics: the direction of every drop, relative budgets and
verdicts, logits [N, S, V], projection names and per-block aggregation (issue 13, items 3–4)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from conftest import SPECS
from qanalysis.errors import ConfigError, WorkloadError
from qanalysis.search import Budget, Evaluated, SearchResult
from qanalysis.sensitivity import block_of
from qanalysis.stats import Interval, verdict_with_interval
from qanalysis.workload import load_spec, relative, worse_by

HF_LM = SPECS / "hf_causal_lm.py"


def test_worse_by_is_positive_when_worse_in_both_directions():
    assert worse_by(97.0, 95.0) == 2.0  # accuracy fell
    assert worse_by(5.0, 5.5, higher_is_better=False) == 0.5  # perplexity rose
    assert worse_by(5.0, 4.5, higher_is_better=False) == -0.5  # perplexity fell: better
    assert relative(0.5, 5.0) == pytest.approx(10.0) and math.isnan(relative(1.0, 0.0))


@pytest.mark.parametrize("text,value,rel", [("1", 1.0, False), (" 2.5 ", 2.5, False), ("5%", 5.0, True), ("0.5 %", 0.5, True), (3, 3.0, False)])
def test_budget_parses_points_and_percent(text, value, rel):
    b = Budget.parse(text)
    assert (b.value, b.relative) == (value, rel)
    assert b.points(6.0) == pytest.approx(value * 6.0 / 100 if rel else value)


@pytest.mark.parametrize("text", ["-1", "five", "5%%", "nan"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(ConfigError, match="max-drop"):
        Budget.parse(text)


def test_verdict_of_a_perplexity_is_its_relative_increase():
    # perplexity 6.0 → 6.1: +0.1 is 1.7 % relative: mixed precision, although 0.1 "points" would ship
    iv = Interval(delta=0.1, low=0.09, high=0.11, n=100, n_boot=1000)
    assert verdict_with_interval(iv).verdict == "ship INT8"
    v = verdict_with_interval(iv, relative_to=6.0)
    assert v.verdict == "mixed precision or QAT" and v.certain
    # 6.0 → 6.05 ± 0.04: 0.2 %..1.5 % straddles the 1 % threshold, said in %
    v = verdict_with_interval(Interval(0.05, 0.01, 0.09, 100, 1000), relative_to=6.0)
    assert not v.certain and "straddles 1 %" in v.text


def test_pareto_front_follows_the_drop_not_the_raw_metric():
    """Lower perplexity is better: the point with the lowest perplexity at the lowest size is the front."""
    ev = [Evaluated(0, [], 5.0 + 0.5, 0.5, 1.0, 100, "a"), Evaluated(1, ["x"], 5.0 + 0.1, 0.1, 1.0, 100, "b"),
          Evaluated(2, ["x", "y"], 5.0 + 0.0, 0.0, 2.0, 200, "c")]  # fmt: skip
    res = SearchResult(chosen=None, chosen_id=1, evaluated=ev, n_layers=2, n_evaluations=3, max_drop=0.3, objective="size",
                       predicted_latency_ms=1.0, measured_latency_ms=None, measured_latency_std_ms=None, int8_latency_ms=None,
                       fp32_latency_ms=None, seconds=0.0, met_budget=True)  # fmt: skip
    assert res.frame()["pareto_size"].tolist() == [False, True, True]


@pytest.mark.parametrize("layer,block", [
    ("model.layers.3.self_attn.q_proj", "model.layers.3"), ("model.layers.12.mlp.down_proj", "model.layers.12"),
    ("blocks.0.attn.qkv:add", "blocks.0"), ("layer1.0.conv2", "layer1.0"), ("lm_head", ""), ("conv1", ""),
])  # fmt: skip
def test_block_of(layer, block):
    assert block_of(layer) == block


def test_direction_must_be_a_bool(tmp_path):
    spec = tmp_path / "s.py"
    spec.write_text("import torch\nHIGHER_IS_BETTER = 'no'\n"
                    "def build_model():\n    return torch.nn.Linear(4, 3)\n"
                    "def calibration_batches():\n    return [torch.randn(8, 4)]\n"
                    "def evaluation_batches():\n    return [(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))]\n")
    with pytest.raises(WorkloadError, match="HIGHER_IS_BETTER must be True or False"):
        load_spec(spec)


def test_hf_causal_lm_spec_loads_as_a_language_model():
    pytest.importorskip("transformers")
    wl = load_spec(HF_LM)
    assert wl.task == "language_model" and wl.higher_is_better is False and wl.metric_name == "perplexity"
    assert wl.drop(500.0, 510.0) == 10.0


def test_hf_causal_lm_end_to_end(run_cli, tmp_path):
    """analyze / search --max-drop 5% / export of a random Hugging Face Llama through the CLI."""
    pytest.importorskip("transformers")
    code, out, err = run_cli("analyze", HF_LM, "--out", tmp_path / "a", "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["higher_is_better"] is False and s["task"] == "language_model" and s["metric_name"] == "perplexity"
    assert s["drop"] == pytest.approx(s["int8_metric"] - s["fp32_metric"])  # a rise of perplexity is the drop
    assert s["drop_relative_pct"] == pytest.approx(100 * s["drop"] / s["fp32_metric"])
    assert s["verdict_basis"] == "relative increase (%)" and "% relative" in out
    layers = pd.read_csv(tmp_path / "a" / "layers.csv")
    names = set(layers["layer"])
    for i in (0, 1):
        for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):  # fmt: skip
            assert f"model.layers.{i}.{p}" in names
    assert "lm_head" in names
    only = layers["metric_only"] - s["fp32_metric"]
    assert (layers["metric_drop"] - only).abs().max() < 1e-6
    assert layers.loc[layers.layer.str.endswith("_proj"), "e2e_kl"].notna().all()  # KL over the vocabulary, per token
    blocks = pd.read_csv(tmp_path / "a" / "blocks.csv")
    assert {"model.layers.0", "model.layers.1", "lm_head"} <= set(blocks["block"])
    assert blocks["n_layers"].sum() == len(layers)
    assert blocks.set_index("block").loc["model.layers.0", "metric_drop_sum"] == pytest.approx(
        layers.loc[layers.layer.map(block_of) == "model.layers.0", "metric_drop"].sum())

    # latency: the formats phase profiles W8/W4 engines of the Llama's projections (tiny_lm's test covers size)
    code, out, err = run_cli("search", HF_LM, "--max-drop", "5%", "--objective", "latency", "--out", tmp_path / "s", "--quiet")
    assert code == 0, err
    r = json.loads((tmp_path / "s" / "search.json").read_text())
    assert r["budget"] == "5%" and r["max_drop"] == pytest.approx(0.05 * s["fp32_metric"], rel=1e-6) and r["met_budget"]
    df = pd.read_csv(tmp_path / "s" / "pareto.csv")
    assert ((df["drop"] - (df["metric"] - s["fp32_metric"])).abs() < 1e-6).all() and df["pareto"].any()

    code, out, err = run_cli("export", HF_LM, "--config", tmp_path / "s" / "config.json", "--out", tmp_path / "e", "--quiet")
    assert code == 0, err
    e = json.loads((tmp_path / "e" / "export.json").read_text())
    assert math.isfinite(e["engine_metric"]) and e["engine_metric"] == pytest.approx(e["simulated_metric"], rel=0.02)


def test_tiny_lm_search_over_formats_then_export(run_cli, tmp_path):
    """search --max-drop 5% --objective size chooses weight-only W4 (group 32 or 128) per layer
    beside static INT8; the chosen config exports to one engine, smaller than the all-INT8 one,
    whose perplexity is the simulation's (up to the static INT8 layers' rounding ties)."""
    code, out, err = run_cli("search", "sample:tiny_lm", "--max-drop", "5%", "--objective", "size", "--out", tmp_path / "s", "--quiet")
    assert code == 0, err
    r = json.loads((tmp_path / "s" / "search.json").read_text())
    assert r["budget"] == "5%" and r["met_budget"] and "budget 5% = " in out
    formats = r["layer_formats"]
    assert formats and set(formats.values()) <= {"w4g32", "w4g128", "w8g32"} and "w4g32" in formats.values()
    df = pd.read_csv(tmp_path / "s" / "pareto.csv")
    chosen = df[df["chosen"]].iloc[0]
    int8 = df[df["phase"] == "all int8"].iloc[0]
    assert chosen["size_bytes"] < 0.8 * int8["size_bytes"] and chosen["drop"] <= r["max_drop"]
    assert {"probe", "grow"} <= set(df["phase"])
    code, out, err = run_cli("export", "sample:tiny_lm", "--config", tmp_path / "s" / "config.json", "--out", tmp_path / "e", "--quiet")
    assert code == 0, err
    e = json.loads((tmp_path / "e" / "export.json").read_text())
    assert e["mode"] == "int8+weight-only" and {w["layer"] for w in e["weight_only"]} == set(formats)
    assert all(w["ort_identical"] for w in e["weight_only"])
    assert e["layer_checks"] and not e["disagreements"]  # every static layer, given the engine's own inputs
    assert e["simulated_metric"] == pytest.approx(chosen["metric"], rel=1e-9)  # the search's verdict is the export's simulation
    # every quantized tensor on the simulation's grid (the engine once took ORT's own range for a
    # Transpose whose owner stayed float: 35 dB); QLinearMul, the integer attention MatMuls and
    # ORT's own LayerNormalization / Erf took sim vs engine from 56.4 to 65.7 dB (5.68891 vs 5.68893)
    assert e["engine_metric"] == pytest.approx(e["simulated_metric"], rel=2e-5)
    assert e["output_sqnr_db"]["margin_db"] >= 30.0
    # the cost model's size is conservative: the engine is no larger than predicted, and close to it
    assert e["int8_size_bytes"] < int8["size_bytes"] and 0.85 * chosen["size_bytes"] <= e["int8_size_bytes"] <= chosen["size_bytes"]


def test_diff_of_perplexities_follows_the_direction():
    """diff with a lower-is-better spec: B's higher perplexity is a positive drop, judged in % of A."""
    import torch

    from qanalysis.validate import Results, diff

    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 16, (40, 8), generator=g)
    good = torch.nn.functional.one_hot(targets, 16).float() * 3.0
    worse = good + 0.8 * torch.randn(good.shape, generator=g)
    ppl = lambda o, y: float(torch.exp(torch.nn.functional.cross_entropy(o.reshape(-1, 16), y.reshape(-1))))

    def res(o):
        return Results(engine="e", engine_sha256="", size_bytes=1, data="d", metric_name="perplexity", metric=ppl(o, targets),
                       n=40, outputs=o, targets=targets)  # fmt: skip

    a, b = res(good), res(worse)
    d = diff(a, b, evaluate=ppl, higher_is_better=False, n_boot=200)
    assert d.drop.delta == pytest.approx(b.metric - a.metric) and d.drop.delta > 0
    assert d.verdict["verdict"] == "keep FP16"  # far more than 3 % worse


def test_attention_mask_values_do_not_set_a_range():
    """−inf and float32's lowest value (attention masks) are skipped by the observers: the range is the scores'."""
    import torch

    from qanalysis.calibrate import _Acc

    scores = torch.tensor([[-2.0, 3.0, float("-inf")], [1.0, torch.finfo(torch.float32).min, 0.5]])
    acc = _Acc()
    acc.first(scores)
    acc.second(scores)
    s = acc.stats("t")
    assert (s.min, s.max) == (-2.0, 3.0) and s.count == 4 and math.isfinite(s.std)
    assert float(s.hist.sum()) == 4 and torch.isfinite(s.channel_absmax).all()


def test_tiny_lm_compare_fp16_int8_w4_with_the_shipped_configs(run_cli, tmp_path):
    """The seed's table (README): the shipped examples/lm configs; FP16 is a real float16 engine,
    weight-only rows are MatMulNBits engines whose perplexity equals the simulation's; relative
    increase, batch-1 latency (median, IQR) and tokens/s per row."""
    from conftest import ROOT

    lm = ROOT / "examples" / "lm"
    code, out, err = run_cli("compare", "sample:tiny_lm", "--configs", lm / "fp16.json", lm / "int8.json",
                             lm / "w4g32.json", "--out", tmp_path / "c", "--quiet")  # fmt: skip
    assert code == 0, err
    df = pd.read_csv(tmp_path / "c" / "compare.csv").set_index("config")
    assert list(df.index) == ["FP32", "fp16", "int8", "w4g32"]
    assert list(df["engine"]) == ["fp32", "fp16", "int8", "weight-only"]
    assert (tmp_path / "c" / "fp16" / "model_fp16.onnx").is_file()
    w4 = df.loc["w4g32"]
    assert w4["engine_metric"] == pytest.approx(w4["simulated_metric"], rel=1e-6)
    assert w4["drop"] > 0 and w4["drop_pct"] == pytest.approx(100 * w4["drop"] / df.loc["FP32", "simulated_metric"])
    assert df.loc["fp16", "engine_drop_pct"] < 0.5  # float16 compute: nearly FP32
    assert w4["engine_size_bytes"] < df.loc["int8", "engine_size_bytes"] < df.loc["fp16", "engine_size_bytes"] < df.loc["FP32", "engine_size_bytes"]
    seq = json.loads((tmp_path / "c" / "compare.json").read_text())["tokens_per_sequence"]
    assert seq == 64
    assert list(df["tokens_per_s"]) == pytest.approx(list(seq * 1000.0 / df["latency_median_ms"]))
    assert "increase (%)" in out and "tokens/s" in out


def test_shipped_lm_configs_are_the_core_formats():
    from conftest import ROOT
    from qanalysis.compare import FORMATS
    from qanalysis.scheme import Config

    files = {p.stem: Config.load(p).to_dict() for p in sorted((ROOT / "examples" / "lm").glob("*.json"))}
    assert files == {k: v.to_dict() for k, v in FORMATS.items()}


def test_recommendations_speak_in_relative_increase_for_perplexity():
    from types import SimpleNamespace

    from qanalysis.outliers import _amount

    ppl = SimpleNamespace(relative_verdict=True, metric_name="perplexity (per byte)")
    acc = SimpleNamespace(relative_verdict=False, metric_name="accuracy (%)")
    assert _amount(ppl, 0.056, 5.6) == "1.00 % of FP32 perplexity"
    assert _amount(ppl, -0.056, 5.6, signed=True) == "-1.00 % of FP32 perplexity"
    assert _amount(acc, 0.25, 97.0) == "0.25 points" and _amount(acc, 0.0, 97.0, signed=True) == "0.00 points"
