"""GPTQ, AWQ and RTN: each improves (or keeps) the layers' output SQNR over RTN and is carried
into the MatMulNBits engine exactly."""

import re

import numpy as np
import onnx
import pytest

from conftest import cached_workload
from qanalysis.analysis import prepare_simulator
from qanalysis.export import export
from qanalysis.fixes import list_fixes
from qanalysis.graph import prepare
from qanalysis.scheme import Config

VIT = "sample:digits_vit"
NOTE = re.compile(r"(\S+): output SQNR RTN (-?[\d.]+) dB → (GPTQ|AWQ) (-?[\d.]+) dB")


def cfg(bits: int, fixes: list[str]) -> Config:
    return Config.from_dict({"scheme": {"weights": {"bits": bits, "granularity": 32}, "activations": None}, "fixes": fixes})


def _gains(notes):
    return {m.group(1): (float(m.group(2)), float(m.group(4))) for m in map(NOTE.search, notes) if m}


def test_registered():
    assert {"gptq", "awq", "rtn"} <= set(list_fixes())


@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_and_awq_improve_output_sqnr_over_rtn(bits):
    wl = cached_workload(VIT)
    c = cfg(bits, ["gptq"])
    qg = prepare(wl, c.scheme)
    _, _, notes, _ = prepare_simulator(wl, qg, c)
    g = _gains(notes)
    assert len(g) == 9 and all(after > before + 3.0 for before, after in g.values()), notes
    _, _, notes, _ = prepare_simulator(wl, qg, cfg(bits, ["awq"]))
    a = _gains(notes)
    assert a and all(after >= before for before, after in a.values()) and any(after > before for before, after in a.values())


def test_rtn_is_the_baseline():
    wl = cached_workload(VIT)
    c = cfg(4, ["rtn"])
    qg = prepare(wl, c.scheme)
    sim, *_ = prepare_simulator(wl, qg, c)
    sim0, *_ = prepare_simulator(wl, qg, cfg(4, []))
    assert (sim.outputs(wl.evaluation, sim.plan(c)) == sim0.outputs(wl.evaluation, sim0.plan(cfg(4, [])))).all()


@pytest.mark.parametrize("fixes", [["gptq"], ["awq"], ["awq", "gptq"]])
def test_carried_into_the_engine_exactly(tmp_path, fixes):
    wl = cached_workload(VIT)
    c = cfg(4, fixes)
    rep = export(wl, c, tmp_path, repeats=2)
    assert rep.engine_metric == rep.simulated_metric
    # the engine's integers are the simulation's (GPTQ's differ from ORT's own RTN of the same floats)
    qg = prepare(wl, c.scheme)
    sim, *_ = prepare_simulator(wl, qg, c)
    plan = sim.plan(c)
    m = onnx.load(str(tmp_path / "model_int8.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    by_layer = {n.name: n for n in m.graph.node if n.op_type == "MatMulNBits"}
    for w in rep.weight_only:
        node = by_layer[w["node"]]
        layer = sim.qg.by_name[w["layer"]]
        b, s, _ = sim.block_quant(plan, sim.qg.program.nodes[layer.node].inputs[1]).packed()
        assert np.array_equal(inits[node.input[1]].reshape(b.shape), b)
        assert np.array_equal(inits[node.input[2]].reshape(s.shape), s)
    if "gptq" in fixes:
        assert not all(w["ort_identical"] for w in rep.weight_only)
