"""A Hugging Face transformer (two inputs, attention masks, GELU, LayerNorm, pooler) end to end."""

import pytest

from conftest import SPECS

pytest.importorskip("transformers")


def test_hf_bert_analyze_and_export(tmp_path):
    from qanalysis.analysis import analyze
    from qanalysis.export import export
    from qanalysis.workload import load_spec

    wl = load_spec(SPECS / "hf_bert.py")
    a = analyze(wl, baseline=False, previews=0)
    names = set(a.layers_frame()["layer"])
    for n in ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.LayerNorm",
              "bert.encoder.layer.0.attention.self:softmax", "classifier"]:  # fmt: skip
        assert n in names, n
    rep = export(wl, a.config, tmp_path, repeats=3)
    # 48 generated samples: one flipped prediction is 2.08 points, so allow at most one
    assert rep.sim_engine_gap <= 100.0 / wl.n_eval + 1e-3
    assert abs(rep.simulated_metric - a.int8_metric) < 1e-9
    assert not rep.disagreements
    # the masked softmax is ORT's QLinearSoftmax run by ORT itself: outputs identical (50.4 dB before)
    from qanalysis.metrics import SQNR_CAP_DB

    assert rep.output_sqnr_db["sim_vs_engine"] == SQNR_CAP_DB, rep.output_sqnr_db
