import pytest

from conftest import SPECS, cached_analysis, cached_workload
from qanalysis.scheme import Config
from qanalysis.sensitivity import analyze_layers


def test_incremental_equals_naive_and_runs_fewer_nodes():
    a = cached_analysis("sample:digits_resnet")
    wl = cached_workload("sample:digits_resnet")
    naive = analyze_layers(wl, a.sim, Config(), incremental=False)
    fast = analyze_layers(wl, a.sim, Config(), incremental=True)
    for r1, r2 in zip(naive.rows, fast.rows):
        assert r1.layer == r2.layer
        assert r1.metric_only == r2.metric_only and r1.metric_all_but == r2.metric_all_but
        assert r1.e2e_sqnr_db == pytest.approx(r2.e2e_sqnr_db, abs=1e-9)
    assert fast.nodes_run < 0.75 * naive.nodes_run


def test_all_but_every_layer_and_only_every_layer_bracket_the_full_drop():
    a = cached_analysis(str(SPECS / "planted_outliers.py"))
    df = a.layers_frame()
    # keeping the culprit in float recovers (almost) all of the drop
    culprit = df.set_index("layer").loc["conv2.conv"]
    assert culprit["metric_drop_all_but"] > 0.8 * a.drop


def test_planted_outliers_flagged_and_consumer_ranked_first():
    a = cached_analysis(str(SPECS / "planted_outliers.py"))
    df = a.layers_frame().sort_values("metric_drop", ascending=False)
    assert df.iloc[0]["layer"] == "conv2.conv"
    assert df.iloc[0]["metric_drop"] > 3.0
    out = a.outliers_frame()
    act = out[(out.layer == "conv2.conv") & (out.tensor == "activation")]
    assert sorted(act.channel.tolist()) == [1, 5, 9]
    assert (act.ratio > 50).all()
    assert "outlier channel" in df.iloc[0]["recommendation"]
    assert a.verdict == "keep FP16"


def test_error_growth_and_proxies_are_reported():
    a = cached_analysis("sample:digits_vit")
    depth = a.depth_frame()
    assert len(depth) == len(a.qgraph.layers) and depth["sqnr_db"].notna().all()
    corr = a.sens.proxy_correlation
    assert set(corr["vs_e2e_sqnr"]) == {"weight_sqnr_db", "act_sqnr_db", "output_sqnr_db"}
    assert all(-1.0 <= v <= 1.0 for v in corr["vs_e2e_sqnr"].values())


def test_per_class_deltas_and_flips():
    a = cached_analysis(str(SPECS / "planted_outliers.py"))
    pc = a.per_class
    assert len(pc) == 10 and pc["n"].sum() == 540
    assert pc["delta"].min() < 0
    assert len(a.flips) > 0 and (~a.flips["int8_correct"] & a.flips["fp32_correct"]).any()


def test_float_config_recovers_the_metric():
    from qanalysis.analysis import simulate_config

    a = cached_analysis(str(SPECS / "planted_outliers.py"))
    r = simulate_config(a, Config(layers={"conv2.conv": "fp16"}))
    assert r.drop < 1.0 < a.drop
    assert r.float_layers == ["conv2.conv"]
