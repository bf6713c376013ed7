"""Layers kept in FP16 are stored in half precision in the engine, computed as simulated, and priced as stored."""

from __future__ import annotations

import onnx
import pytest
import torch

from conftest import cached_analysis, cached_workload
from qanalysis.engine import build_int8_engine, fp16_extra_bytes, run_session, session
from qanalysis.export import export
from qanalysis.scheme import Config

FP16 = ("conv1.conv", "conv2.conv")


def _producers(m: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in m.graph.node for o in n.output}


def _node(m: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.name == name)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    wl = cached_workload("sample:digits_cnn")
    root = tmp_path_factory.mktemp("fp16")
    reps = {}
    for tag, prec in [("int8", "int8"), ("fp32", "fp32"), ("fp16", "fp16")]:
        (root / tag).mkdir()
        reps[tag] = export(wl, Config(layers={n: prec for n in FP16}), root / tag, repeats=3)
    return root, reps


def test_fp16_layers_are_stored_as_float16_initializers(exported):
    root, reps = exported
    m = onnx.load(str(root / "fp16" / "model_int8.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    prod = _producers(m)
    a = cached_analysis("sample:digits_cnn")
    for name in FP16:
        layer = a.qgraph.by_name[name]
        node = _node(m, layer.node_name)
        for pos in [layer.weights[0][0], layer.bias[0]]:
            cast = prod[node.input[pos]]  # weight / bias read through a Cast to float
            assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
            assert inits[cast.input[0]].data_type == onnx.TensorProto.FLOAT16
        # the input is rounded to half: Cast(FLOAT16) then Cast(FLOAT)
        up = prod[node.input[layer.act_inputs[0][0]]]
        down = prod[up.input[0]]
        assert (up.op_type, down.op_type) == ("Cast", "Cast")
        assert down.attribute[0].i == onnx.TensorProto.FLOAT16
    big_float = [t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1]
    assert not big_float, big_float  # no FP32 weight tensor left anywhere
    assert reps["fp16"].float_layers == list(FP16)


def test_fp16_engine_matches_simulation(exported):
    _, reps = exported
    rep = reps["fp16"]
    assert rep.sim_engine_gap <= 0.3, (rep.simulated_metric, rep.engine_metric)
    assert not rep.disagreements, rep.disagreements


def test_fp16_layer_output_is_the_simulated_half_rounding(exported):
    """conv1 (the first layer, fed by the graph input) in the engine = Conv(half(x), half(w), half(b))
    in float, as simulated; and not the plain FP32 conv (so the rounding really happens)."""
    root, _ = exported
    a = cached_analysis("sample:digits_cnn")
    wl, qg = a.workload, a.qgraph
    layer = qg.by_name["conv1.conv"]
    m = onnx.load(str(root / "fp16" / "model_int8.onnx"))
    m.graph.output.append(onnx.helper.make_tensor_value_info(layer.output, onnx.TensorProto.FLOAT, None))
    path = root / "fp16_debug.onnx"
    onnx.save(m, str(path))
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    x = wl.evaluation[0][0]
    res = dict(zip(names, sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), x)})))
    eng = torch.from_numpy(res[layer.output])
    feeds = dict(zip(qg.input_names, x))
    sim = a.sim.run(feeds, a.sim.plan(a.config.with_layers({n: "fp16" for n in FP16})), keep=True)[layer.output]
    fp32 = a.sim.run(feeds, a.sim.fp32_plan(), keep=True)[layer.output]
    scale = float(fp32.abs().max())
    assert float((eng - sim).abs().max()) <= 1e-5 * scale
    assert float((eng - fp32).abs().max()) > 1e-4 * scale


def test_fp16_engine_is_smaller_than_fp32_layers_and_priced_as_stored(exported):
    _, reps = exported
    qg = cached_analysis("sample:digits_cnn").qgraph
    predicted = sum(fp16_extra_bytes(qg.by_name[n], qg.program) for n in FP16)
    real = reps["fp16"].int8_size_bytes - reps["int8"].int8_size_bytes
    assert abs(real - predicted) <= 0.05 * predicted + 256, (real, predicted)
    assert reps["fp16"].int8_size_bytes < reps["fp32"].int8_size_bytes - predicted // 2


def test_search_prices_float_layers_as_the_engine_stores_them(tmp_path):
    """The search's float layers are FP32 (what its simulation runs): priced at 4-byte weights."""
    from qanalysis.search import FLOAT, measure_costs

    assert FLOAT == "fp32"
    a = cached_analysis("sample:digits_cnn")
    costs = measure_costs(a, tmp_path)
    build_int8_engine(a.qgraph, a.sim, a.sim.plan(a.config.with_layers({n: FLOAT for n in FP16})), tmp_path / "e.onnx",
                      a.workload.calibration[0])  # fmt: skip
    real = (tmp_path / "e.onnx").stat().st_size
    assert abs(costs.size_bytes(set(FP16)) - real) <= 0.02 * real, (costs.size_bytes(set(FP16)), real)
    run_session(session(tmp_path / "e.onnx"), a.workload.evaluation[0][0])


def test_dynamic_engine_stores_fp16_layers_in_half(tmp_path):
    wl = cached_workload("sample:digits_vit")
    rep = export(wl, Config(layers={"head": "fp16"}), tmp_path, mode="dynamic", repeats=3)
    m = onnx.load(str(tmp_path / "model_int8.onnx"))
    halves = [t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert any(n.startswith("head.") for n in halves), halves
    assert rep.sim_engine_gap <= 1.0
