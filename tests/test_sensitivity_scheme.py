"""Per-layer numbers follow the scheme and the layer's own override (issue 10, item 1), and a
recommendation never names a remedy that its own measurement contradicts (item 8).

Every per-layer number is checked against a *direct* simulation of the one-layer config,
written out here by hand: all other layers "fp32", the layer itself absent (so the scheme
decides) or at its own quantized override."""

from __future__ import annotations

import copy
import functools
import json
import math

import pytest
import torch

from conftest import cached_workload
from qanalysis import metrics as M
from qanalysis import outliers
from qanalysis.analysis import analyze, simulate_config
from qanalysis.scheme import Config
from qanalysis.simulate import dynamic_fake_quant, quantize_weight

CNN = "sample:digits_cnn"
VIT = "sample:digits_vit"


@functools.cache
def _analysis(config_json: str, previews: int, source: str):
    return analyze(cached_workload(source), Config.from_dict(json.loads(config_json)), baseline=False, previews=previews)


def analysis(config: dict, previews: int = 0, source: str = CNN):
    return _analysis(json.dumps(config, sort_keys=True), previews, source)


def w_bits(bits: int, **weights) -> dict:
    return {"scheme": {"weights": {"bits": bits, **weights}}}


def direct_config(a, layer: str) -> Config:
    """The one-layer config, spelled out: every other layer fp32, ``layer`` at its own quantized
    override if it has one, else left to the scheme."""
    layers = {l.name: "fp32" for l in a.qgraph.layers if l.name != layer}
    own = a.config.layers.get(layer)
    if own in ("int8", "int4"):
        layers[layer] = own
    return a.config.with_layers(layers)


def run_all(a, config: Config) -> list[dict[str, torch.Tensor]]:
    """Every tensor of every evaluation batch under ``config`` (whole graph, no reuse)."""
    sim, plan = a.sim, a.sim.plan(config)
    with torch.inference_mode():
        return [sim.run(dict(zip(a.qgraph.input_names, x)), plan, keep=True) for x, _ in a.workload.evaluation]


def sqnr(ref: list[torch.Tensor], x: list[torch.Tensor]) -> float:
    """10·log10(Σ ref² / Σ (ref − x)²) over all batches together."""
    return M.sqnr_db(torch.cat([r.reshape(-1) for r in ref]), torch.cat([v.reshape(-1) for v in x]))


CASES = {
    "W2": w_bits(2),
    "W3": w_bits(3),
    "W4": w_bits(4),
    "W8": {},
    "W4 per-tensor asymmetric": w_bits(4, granularity="per_tensor", symmetric=False),
    "W4 group 8": w_bits(4, granularity=8),
    "W8 A4 dynamic": {"scheme": {"activations": {"bits": 4, "dynamic": True}}},
    "W8, conv2 int4": {"layers": {"conv2.conv": "int4"}},
    "W3, conv1 kept fp16": {"scheme": w_bits(3)["scheme"], "layers": {"conv1.conv": "fp16"}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_per_layer_number_equals_a_direct_simulation_of_the_one_layer_config(case):
    a = analysis(CASES[case])
    sim, scheme = a.sim, a.config.scheme
    fp_envs = run_all(a, a.config.with_layers({l.name: "fp32" for l in a.qgraph.layers}))
    out = a.qgraph.program.outputs[0]
    rows = {r.layer: r for r in a.sens.rows}
    for layer in a.qgraph.layers:
        row, cfg = rows[layer.name], direct_config(a, layer.name)
        # the task metric, exactly, through the public simulate_config path
        direct = simulate_config(a, cfg)
        assert row.metric_only == direct.metric, layer.name
        assert row.metric_drop == pytest.approx(a.fp32_metric - direct.metric, abs=1e-12)
        # end to end and the layer's own output
        envs = run_all(a, cfg)
        assert row.e2e_sqnr_db == pytest.approx(sqnr([e[out] for e in fp_envs], [e[out] for e in envs]), abs=1e-6)
        assert row.output_sqnr_db == pytest.approx(
            sqnr([e[layer.output] for e in fp_envs], [e[layer.output] for e in envs]), abs=1e-6
        )
        # the weight, quantized from the scheme's spec at the layer's own bits
        bits = 4 if cfg.layers.get(layer.name) == "int4" else scheme.weights.bits
        w = a.qgraph.program.initializers[layer.weight].float()
        wq, _ = quantize_weight(w, scheme.weights, a.qgraph.weight_axis.get(layer.weight), bits)
        assert row.weight_sqnr_db == pytest.approx(M.sqnr_db(w, wq), abs=1e-6), layer.name
        # the input activation, on the scheme's grid (static: calibrated range; dynamic: per sample)
        t = layer.act_inputs[0][1]
        acts = [e[t] for e in fp_envs]
        act = scheme.activations
        if act.dynamic:
            quant = [dynamic_fake_quant(v, act.bits, act.symmetric) for v in acts]
        else:
            quant = [written_out_fake_quant(v, sim.act_qparams(t)) for v in acts]
        assert row.act_sqnr_db == pytest.approx(sqnr(acts, quant), abs=1e-6), layer.name


def test_a_layer_whose_module_is_another_layers_name_is_quantized_alone_at_the_scheme_bits():
    """In digits_vit the bias Add "blocks.0.attn.qkv:add" belongs to module "blocks.0.attn.qkv",
    which is also the MatMul's name: "all other layers fp32" must not float the Add too."""
    a = analysis(w_bits(3), source=VIT)
    names = {l.name for l in a.qgraph.layers}
    rows = {r.layer: r for r in a.sens.rows}
    colliding = [l for l in a.qgraph.layers if l.module in names and l.module != l.name]
    assert colliding
    for layer in colliding[:4] + [a.qgraph.by_name["blocks.0.attn.qkv"], a.qgraph.by_name["head"]]:
        layers = {l.name: "fp32" for l in a.qgraph.layers if l.name != layer.name}
        if layer in colliding:  # weightless: any quantized precision says the same
            assert not layer.weights and layer.bias is None
            layers[layer.name] = "int8"
        direct = simulate_config(a, a.config.with_layers(layers))
        assert rows[layer.name].metric_only == direct.metric, layer.name
        out = a.sim.outputs(a.workload.evaluation, a.sim.plan(a.config.with_layers(layers)))
        assert rows[layer.name].e2e_sqnr_db == pytest.approx(M.sqnr_db(a.sens.fp32_outputs, out), abs=1e-6)
        assert rows[layer.name].e2e_sqnr_db < M.SQNR_CAP_DB  # it really was quantized


def written_out_fake_quant(v: torch.Tensor, qp) -> torch.Tensor:
    """x̂ = s · (clamp(round(x / s) + z, qmin, qmax) − z), written out (per-tensor)."""
    s, z = float(qp.scale), float(qp.zero_point)
    return (torch.clamp(torch.round(v / s) + z, qp.qrange.qmin, qp.qrange.qmax) - z) * s


def test_low_bit_weights_show_in_the_only_this_layer_column():
    """The numbers of issue 10: at W3 `conv2.conv` alone costs 0.93 points (was 0.0 for every
    layer), at W2 the layers that break the model show it, and W16 is not W8."""
    w3 = {r.layer: r for r in analysis(w_bits(3)).sens.rows}
    assert w3["conv2.conv"].metric_drop == pytest.approx(0.925926, abs=1e-4)
    w2 = analysis(w_bits(2))
    assert w2.drop > 80 and max(r.metric_drop for r in w2.sens.rows) > 50
    w8, w16 = analysis({}), analysis(w_bits(16))
    for r8, r16 in zip(w8.sens.rows, w16.sens.rows):
        assert r16.output_sqnr_db > r8.output_sqnr_db
        assert r16.weight_sqnr_db > r8.weight_sqnr_db + 40  # ≈ 6.02 dB per bit


def test_recommendations_name_only_remedies_their_measurement_shows_helping():
    for config in (w_bits(2), w_bits(3), {}):
        a = analysis(config, previews=6)
        for r in a.sens.rows:
            assert "+-" not in r.recommendation and "-0.00" not in r.recommendation
            if "points measured)" in r.recommendation:
                assert r.recommendation_gain > 0
                assert f"(+{r.recommendation_gain:.2f} points measured)" in r.recommendation
            else:
                assert math.isnan(r.recommendation_gain)
    # a real case: at W2, conv3.conv alone costs points but neither FP16 nor clipping gains any
    w2 = {r.layer: r for r in analysis(w_bits(2), previews=6).sens.rows}
    assert w2["conv3.conv"].metric_drop > 1.0
    assert w2["conv3.conv"].recommendation.startswith("no measured fix helps (FP16 0.00 points")
    # the label says what quantizing means under the scheme
    assert w2["fc"].recommendation.startswith("W2A8 is fine")


def test_no_fp16_recommendation_when_fp16_measured_worse(monkeypatch):
    """The EfficientNet-Lite0 case: the float version made the model worse and the other fixes
    gain nothing; the recommendation used to read 'keep in FP16 (+-3.12 points measured)'."""
    a = analysis(w_bits(3))
    sens = copy.deepcopy(a.sens)
    row = next(r for r in sens.rows if r.layer == "conv2.conv")
    row.metric_drop_all_but = -3.12
    monkeypatch.setattr(outliers, "preview", lambda wl, sim, config, layer, fix, stats: row.metric_only - 0.5)
    monkeypatch.setattr(outliers, "_with_fix_metric", lambda *args: None)
    outliers.recommend(a.workload, a.sim, a.config, sens, a.tensor_summaries, a.stats, max_previews=6)
    assert row.recommendation.startswith("no measured fix helps (FP16 -3.12 points, other measured fixes at most -0.50)")
    assert "keep in FP16" not in row.recommendation and "+-" not in row.recommendation
    assert math.isnan(row.recommendation_gain)
    # and when a measured remedy does help, it is the one named, with its gain
    monkeypatch.setattr(outliers, "preview", lambda wl, sim, config, layer, fix, stats: row.metric_only + 1.5)
    outliers.recommend(a.workload, a.sim, a.config, sens, a.tensor_summaries, a.stats, max_previews=6)
    assert row.recommendation.startswith("percentile clipping of its input (+1.50 points measured)")
    assert row.recommendation_gain == pytest.approx(1.5)
    # a gain of 2 samples out of 540 (+0.37 points) is noise, not a recommendation (issue 14)
    monkeypatch.setattr(outliers, "preview", lambda wl, sim, config, layer, fix, stats: row.metric_only + 0.37)
    outliers.recommend(a.workload, a.sim, a.config, sens, a.tensor_summaries, a.stats, max_previews=6)
    assert row.recommendation.startswith("no measured fix helps") and "are noise" in row.recommendation
    assert math.isnan(row.recommendation_gain)
