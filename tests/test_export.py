"""Engines: verified export, simulation-engine fidelity, float layers really float, modes."""

import json

import onnx
import pytest
import torch

from conftest import SPECS, cached_workload
from qanalysis.baseline import engine_peak_memory, measure_peak_memory
from qanalysis.engine import attribute_to_layers, profile_nodes
from qanalysis.errors import ExportError
from qanalysis.export import export
from qanalysis.graph import prepare
from qanalysis.scheme import Config, Scheme, WeightSpec
from qanalysis.workload import list_samples

EXPORT_FIELDS = ["fp32_metric", "engine_metric", "simulated_metric", "fp32_size_bytes", "int8_size_bytes",
                 "fp32_latency_ms", "int8_latency_ms", "float_layers"]  # fmt: skip


@pytest.mark.parametrize("scheme", ["default", "per_tensor"])
@pytest.mark.parametrize("name", list_samples())
def test_engine_matches_simulation(tmp_path, name, scheme):
    cfg = Config() if scheme == "default" else Config(scheme=Scheme(weights=WeightSpec(granularity="per_tensor")))
    rep = export(cached_workload(f"sample:{name}"), cfg, tmp_path, repeats=3)
    d = rep.to_dict()
    for k in EXPORT_FIELDS:
        assert k in d
    assert rep.sim_engine_gap <= 0.3, f"simulated {rep.simulated_metric} vs engine {rep.engine_metric}"
    assert rep.int8_size_bytes < rep.fp32_size_bytes
    assert not rep.disagreements, rep.disagreements
    assert rep.layer_checks and all(c["max_err_steps"] <= 2.0 for c in rep.layer_checks)


def _consumer_inputs(model, node_name):
    node = next(n for n in model.graph.node if n.name == node_name)
    producers = {o: n for n in model.graph.node for o in n.output}
    return [(i, producers.get(i).op_type if i in producers else "initializer/input") for i in node.input if i]


def test_float_layer_has_no_qdq_on_weights_or_input(tmp_path):
    wl = cached_workload(str(SPECS / "planted_outliers.py"))
    qg = prepare(wl)
    full = export(wl, Config(), tmp_path / "full", repeats=3) if (tmp_path / "full").mkdir() is None else None
    rep = export(wl, Config(layers={"conv2.conv": "fp32"}), tmp_path, repeats=3)
    m = onnx.load(str(tmp_path / "model_int8.onnx"))
    ins = _consumer_inputs(m, qg.node_name("conv2.conv"))
    assert all(op != "DequantizeLinear" for _, op in ins), ins
    assert rep.float_layers == ["conv2.conv"] and "relu" in rep.float_tensors
    assert rep.sim_engine_gap <= 0.3
    assert rep.engine_metric > full.engine_metric + 3  # keeping it float really changes the engine


def test_export_cli_writes_contract(run_cli, tmp_path):
    code, out, err = run_cli("export", "sample:digits_cnn", "--out", tmp_path / "e", "--quiet")
    assert code == 0, err
    d = json.loads((tmp_path / "e" / "export.json").read_text())
    for k in EXPORT_FIELDS:
        assert k in d
    assert d["output_sqnr_db"]["sim_vs_engine"] > d["output_sqnr_db"]["engine_vs_fp32"]
    assert {"model_fp32.onnx", "model_int8.onnx", "export.json", "config.json"} <= {p.name for p in (tmp_path / "e").iterdir()}
    assert "INT8 engine" in out and "metric" in out
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    assert Config.from_dict(cfg).scheme == Scheme()
    assert all(v > 0 for v in d["peak_memory_bytes"].values()) and set(d["peak_memory_bytes"]) == {"fp32", "engine"}


def test_peak_memory_is_positive_on_every_export(tmp_path):
    """In-process RSS deltas gave 0 once an earlier run had grown the heap (3 exports of 5)."""
    wl = cached_workload("sample:digits_cnn")
    for i in range(3):
        rep = export(wl, Config(), tmp_path / str(i), repeats=3) if (tmp_path / str(i)).mkdir() is None else None
        assert all(v is not None and v > 0 for v in rep.peak_memory_bytes.values()), (i, rep.peak_memory_bytes, rep.peak_memory_note)
    # the engine's memory scales with the weights it holds: a bigger engine needs more
    vit = cached_workload("sample:digits_vit")
    qg = prepare(vit)  # held: its folder lives as long as the graph
    big = engine_peak_memory(qg.float_path, vit.evaluation[0][0])
    small = engine_peak_memory(tmp_path / "0" / "model_fp32.onnx", wl.evaluation[0][0])
    assert big.bytes and small.bytes and big.bytes > small.bytes


def test_peak_memory_is_never_zero():
    m = measure_peak_memory(lambda: None)  # nothing allocated: unmeasurable, not "0 B"
    assert m.bytes is None and m.note
    m = measure_peak_memory(lambda: bytearray(64 << 20))
    assert m.bytes is not None and m.bytes >= 60 << 20


@pytest.mark.parametrize("mode,file", [("dynamic", "model_int8.onnx"), ("fp16", "model_fp16.onnx")])
def test_dynamic_and_fp16_engines(tmp_path, mode, file):
    rep = export(cached_workload("sample:digits_vit"), Config(), tmp_path, mode=mode, repeats=3)
    assert (tmp_path / file).exists()
    assert abs(rep.engine_metric - rep.fp32_metric) < 3.0
    assert rep.sim_engine_gap <= 1.0


@pytest.mark.parametrize(
    "cfg,needle",
    [
        (Config(scheme=Scheme(weights=WeightSpec(bits=4))), "simulated only"),
        (Config(layers={"conv2.conv": "int4"}), "simulated only"),
        (Config(scheme=Scheme(weights=WeightSpec(granularity=16))), "group-wise weights are simulated only"),
    ],
)
def test_unsupported_engine_schemes_say_simulated_only(tmp_path, cfg, needle):
    with pytest.raises(ExportError, match=needle):
        export(cached_workload("sample:digits_cnn"), cfg, tmp_path, repeats=3)


def test_export_bad_input_leaves_nothing(run_cli, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"layers": {"nope": "fp16"}}))
    code, _, err = run_cli("export", "sample:digits_cnn", "--out", tmp_path / "o", "--config", cfg, "--quiet")
    assert code != 0 and err.startswith("error: unknown layer 'nope'") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_names_map_both_ways():
    qg = prepare(cached_workload("sample:digits_resnet"))
    for l in qg.layers:
        assert qg.layer_of_node(qg.node_name(l.name)) == l.name


def test_profile_attributes_time_to_module_names(tmp_path):
    wl = cached_workload("sample:digits_cnn")
    export(wl, Config(), tmp_path, repeats=3)
    qg = prepare(wl)
    times = profile_nodes(tmp_path / "model_int8.onnx", wl.evaluation[0][0], runs=3)
    per_layer = attribute_to_layers(times, qg)
    for name in ["conv1.conv", "conv2.conv", "conv3.conv", "fc"]:
        assert per_layer.get(name, 0) > 0, per_layer


@pytest.mark.parametrize("name, margin", [("digits_resnet", 10), ("digits_vit", 25)])
def test_simulation_error_is_well_below_quantization_error(tmp_path, name, margin):
    """The simulation predicts the engine only if its own error (simulated vs engine outputs)
    lies well below the quantization error it predicts (engine vs FP32): ≥ 10 dB apart (digits_vit:
    11.4 dB with float arithmetic, 34.7 dB with QLinearSoftmax / QLinearAdd modelled)."""
    rep = export(cached_workload(f"sample:{name}"), Config(), tmp_path, repeats=3, tune_ort=False)
    q = json.loads(json.dumps(rep.to_dict()))["output_sqnr_db"]
    assert set(q) == {"sim_vs_engine", "engine_vs_fp32", "sim_vs_fp32", "margin_db"}
    assert q["engine_vs_fp32"] < 60  # the quantization error is real: the margin is not trivially met
    assert q["margin_db"] == pytest.approx(q["sim_vs_engine"] - q["engine_vs_fp32"])
    assert q["margin_db"] >= margin, q
    assert "output SQNR: simulated vs engine" in rep.table()


def test_an_all_float_export_reports_no_margin(tmp_path):
    """With every layer in float the engine's outputs equal FP32's: there is no quantization error
    for the simulation to predict, so no margin (digits_vit's all-float config printed
    "margin −15.8 dB", which read as a failure)."""
    from qanalysis.export import output_sqnr

    wl = cached_workload("sample:digits_cnn")
    qg = prepare(wl)
    rep = export(wl, Config().with_layers({l.name: "fp32" for l in qg.layers}), tmp_path, repeats=3, tune_ort=False)
    q = json.loads(json.dumps(rep.to_dict()))["output_sqnr_db"]
    assert q["engine_vs_fp32"] == 150.0 and q["margin_db"] is None, q
    assert "no margin to report" in rep.table() and "margin -" not in rep.table() and "margin −" not in rep.table()
    x = torch.randn(8, 10)
    assert output_sqnr(x, x + 0.01, x)["margin_db"] is not None  # a real quantization error keeps its margin
