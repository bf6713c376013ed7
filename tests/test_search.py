import json
import random

import pandas as pd
import pytest

from conftest import SPECS, cached_analysis, cached_workload
from qanalysis.export import export
from qanalysis.scheme import Config
from qanalysis.search import pareto_mask, search
from qanalysis.workload import list_samples


def test_pareto_mask_is_exactly_the_non_dominated_set():
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.choice([90, 91, 92, 93]), rng.choice([1.0, 2.0, 3.0, 4.0])) for _ in range(12)]
        mask = pareto_mask([p[0] for p in pts], [p[1] for p in pts])
        for (m, c), on_front in zip(pts, mask):
            dominated = any(m2 >= m and c2 <= c and (m2 > m or c2 < c) for m2, c2 in pts)
            assert on_front == (not dominated)


def test_planted_search_keeps_only_the_culprit_float_and_engine_agrees(tmp_path):
    a = cached_analysis(str(SPECS / "planted_outliers.py"))
    # size: the accuracy-driven part alone (for latency, FP32 itself may be the fastest engine)
    res = search(a, 1.0, objective="size", progress=None, try_fixes=False)  # CLE alone would fix it
    assert res.met_budget
    assert res.chosen.float_layers() == ["conv2.conv"]
    assert res.n_evaluations <= len(a.qgraph.layers) + 5
    df = res.frame()
    assert df["chosen"].sum() == 1 and df.loc[df.chosen, "drop"].item() <= 1.0
    rep = export(cached_workload(str(SPECS / "planted_outliers.py")), res.chosen, tmp_path, repeats=3)
    assert rep.fp32_metric - rep.engine_metric <= 1.0
    assert rep.fp32_metric - rep.simulated_metric <= 1.0
    assert res.measured_latency_ms > 0 and res.predicted_latency_ms > 0


@pytest.mark.parametrize("name", list_samples())
def test_each_sample_meets_a_one_point_budget(name):
    a = cached_analysis(f"sample:{name}")
    res = search(a, 1.0, measure=False)
    assert res.met_budget and res.n_evaluations <= len(a.qgraph.layers) + 5


def test_search_cli_outputs(run_cli, tmp_path):
    code, out, err = run_cli("search", str(SPECS / "planted_outliers.py"), "--max-drop", "1", "--objective", "size",
                             "--out", tmp_path / "s", "--quiet")  # fmt: skip
    assert code == 0, err
    df = pd.read_csv(tmp_path / "s" / "pareto.csv")
    for c in ["config_id", "n_float_layers", "metric", "drop", "latency_ms", "size_bytes", "pareto"]:
        assert c in df.columns
    assert df["pareto"].any()
    cfg = Config.from_dict(json.loads((tmp_path / "s" / "config.json").read_text()))
    assert cfg.float_layers() == [] and cfg.fixes == ("cle",)  # CLE tried before float, and enough
    code, _, err = run_cli("export", str(SPECS / "planted_outliers.py"), "--config", tmp_path / "s" / "config.json",
                           "--out", tmp_path / "e", "--quiet")  # fmt: skip
    assert code == 0, err


def test_negative_budget_is_rejected(run_cli, tmp_path):
    code, _, err = run_cli("search", "sample:digits_cnn", "--max-drop", "-1", "--out", tmp_path / "s", "--quiet")
    assert code != 0 and "max-drop" in err and err.count("\n") == 1
