"""ONNX Runtime's speed options: measured at export, recorded in export.json, never a change of numerics."""

import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import cached_workload
from qanalysis.engine import build_int8_engine, run_session, session, session_options
from qanalysis.errors import ExportError
from qanalysis.export import export
from qanalysis.graph import prepare
from qanalysis.ort_options import BUILD_CANDIDATES, DEFAULT_BUILD, DEFAULT_SESSION, SESSION_CANDIDATES, choose
from qanalysis.quantized import prepare_simulator
from qanalysis.scheme import Config


@pytest.fixture(scope="module")
def digits_engine(tmp_path_factory):
    wl = cached_workload("sample:digits_cnn")
    sim, _, _, _ = prepare_simulator(wl, prepare(wl), Config())
    plan = sim.plan(Config())
    d = tmp_path_factory.mktemp("eng")
    build_int8_engine(sim.qg, sim, plan, d / "u8.onnx", wl.calibration[0])
    x = tuple(v[:8] for v in wl.evaluation[0][0])
    with torch.inference_mode():
        ref = sim.output(sim.run(dict(zip(sim.qg.input_names, x)), plan))
    return wl, sim, plan, d, x, ref


def test_export_records_measured_options_and_the_engine_loads_with_them(tmp_path):
    rep = export(cached_workload("sample:digits_cnn"), Config(), tmp_path, repeats=3, check_layers=False)
    o = rep.to_dict()["ort_options"]
    assert len(o["tried"]) == len(SESSION_CANDIDATES) + len(BUILD_CANDIDATES) - 1
    assert o["engine_builds"] == len(BUILD_CANDIDATES) - 1
    timed = [t for t in o["tried"] if "median_ms" in t]
    assert len(timed) == len(o["tried"]) and all(t["median_ms"] > 0 for t in timed)
    assert {t["session"]["graph_optimization_level"] for t in timed} >= {"ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC"}
    chosen = o["chosen"]
    if chosen != {"session": DEFAULT_SESSION, "build": DEFAULT_BUILD}:  # a switch is confirmed, and exact
        assert o["confirm"]["kept"] and o["confirm"]["chosen_median_ms"] < o["confirm"]["default_median_ms"]
    assert "ActivationSymmetric" in o["excluded"] and "QDQKeepRemovableActivations" in o["excluded"]
    # the note a user follows creates the deployed session; it computes what the export verified
    scope: dict = {}
    exec(o["how_to_load"].replace("'model_int8.onnx'", repr(str(tmp_path / "model_int8.onnx"))), scope)
    x = cached_workload("sample:digits_cnn").evaluation[0][0]
    got = scope["sess"].run(None, {scope["sess"].get_inputs()[0].name: x[0].numpy()})[0]
    want = run_session(session(tmp_path / "model_int8.onnx", options=chosen["session"]), x).numpy()
    assert np.array_equal(got, want)
    assert "ONNX Runtime options" in rep.table()


def test_a_candidate_with_other_numerics_is_never_chosen(digits_engine, tmp_path):
    wl, sim, plan, d, x, ref = digits_engine
    fp32 = sim.qg.float_path

    def build(options, path):  # "faster" perhaps, but the float model: not the simulated numbers
        shutil.copyfile(fp32, path)
        return path

    choice, path = choose(d / "u8.onnx", build, tuple(v[:1] for v in x), x, ref, repeats=5, budget_s=0.5)
    rows = [t for t in choice.tried if t["build"] != DEFAULT_BUILD]
    assert rows and all(not t["same_numerics"] for t in rows)
    assert choice.build == DEFAULT_BUILD and path == d / "u8.onnx"
    base = choice.tried[0]
    assert base["session"] == DEFAULT_SESSION and base["sqnr_vs_simulated_db"] > 60  # the default engine is the simulation


def test_int8_activations_are_the_uint8_grid_shifted(digits_engine):
    wl, sim, plan, d, x, ref = digits_engine
    build_int8_engine(sim.qg, sim, plan, d / "s8.onnx", wl.calibration[0], {"activation_type": "QInt8"})

    def qparams(path):
        m = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        return {n.input[0]: (inits[n.input[1]], inits[n.input[2]]) for n in m.graph.node if n.op_type == "QuantizeLinear"}

    u8, s8 = qparams(d / "u8.onnx"), qparams(d / "s8.onnx")
    assert u8.keys() == s8.keys() and u8
    for t, (s, z) in u8.items():
        assert z.dtype == np.uint8 and s8[t][1].dtype == np.int8
        assert s8[t][0] == s and int(s8[t][1]) == int(z) - 128, t


def test_session_options_are_checked():
    so = session_options({"graph_optimization_level": "ORT_ENABLE_EXTENDED", "intra_op_num_threads": 1})
    assert so.intra_op_num_threads == 1
    with pytest.raises(ExportError, match="graph_optimization_level"):
        session_options({"graph_optimization_level": "FAST"})
    with pytest.raises(ExportError, match="unknown session option"):
        session_options({"threads": 2})
