"""Layer discovery, module names, and the tensor-level plan read back from ORT."""

import onnx

from conftest import SPECS, cached_analysis, cached_workload
from qanalysis.graph import prepare
from qanalysis.scheme import Config
from qanalysis.simulate import Simulator


def test_cnn_layers_are_module_names_in_execution_order():
    qg = prepare(cached_workload("sample:digits_cnn"))
    assert [l.name for l in qg.layers] == ["conv1.conv", "conv2.conv", "conv3.conv", "fc"]
    assert all(l.bias is not None for l in qg.layers)  # BN folded into conv: int32 biases


def test_resnet_has_residual_adds_named_by_their_module():
    qg = prepare(cached_workload("sample:digits_resnet"))
    names = [l.name for l in qg.layers]
    assert "block1:add" in names and "block2.downsample.conv" in names and "block1.dw.conv" in names
    dw = qg.by_name["block1.dw.conv"]
    w = qg.program.initializers[dw.weight]
    assert w.shape[1] == 1  # depthwise


def test_vit_linear_matmul_and_attention_ops():
    qg = prepare(cached_workload("sample:digits_vit"))
    names = [l.name for l in qg.layers]
    for n in ["blocks.0.attn.qkv", "blocks.0.attn.qkv:add", "blocks.0.attn:matmul", "blocks.0.attn:softmax",
              "blocks.0.norm1", "blocks.1.mlp.fc2", "head"]:  # fmt: skip
        assert n in names, n
    assert qg.by_name["blocks.0.attn.qkv:add"].module == "blocks.0.attn.qkv"


def test_relu_is_fused_into_conv_output():
    """ORT removes the ReLU after a quantized conv: the conv output takes the ReLU's range."""
    qg = prepare(cached_workload("sample:digits_cnn"))
    relu = [n for n in qg.program.nodes if n.op == "Relu"][0]
    assert relu.outputs[0] in qg.quantized_tensors
    assert relu.inputs[0] not in qg.quantized_tensors


def test_float_layer_input_is_not_quantized():
    a = cached_analysis(str(SPECS / "planted_outliers.py"))
    sim: Simulator = a.sim
    conv2 = a.qgraph.by_name["conv2.conv"]
    full = sim.plan(Config())
    kept = sim.plan(Config(layers={"conv2.conv": "fp32"}))
    edge = (conv2.node, conv2.act_inputs[0][0])
    assert full.edges.get(edge) is not None
    assert kept.edges.get(edge) is None
    assert conv2.weight not in kept.weights
    assert conv2.act_inputs[0][1] in kept.float_tensors(a.qgraph)
    assert conv2.act_inputs[0][1] not in full.float_tensors(a.qgraph)


def test_plan_matches_ort_qdq_model():
    """Every tensor ORT quantizes is quantized in the all-int8 simulation plan."""
    qg = prepare(cached_workload("sample:digits_vit"))
    qdq = onnx.load(str(qg.workdir / "plan_qdq.onnx"))
    n_q = sum(1 for n in qdq.graph.node if n.op_type == "QuantizeLinear")
    assert len(qg.quantized_tensors) == n_q


def test_export_and_plan_are_cached_on_disk(monkeypatch):
    from qanalysis import graph
    from qanalysis.workload import load_workload

    first = prepare(load_workload("sample:diabetes_mlp"))
    calls = []
    monkeypatch.setattr(graph, "export_onnx", lambda *a, **k: calls.append(1))
    second = prepare(load_workload("sample:diabetes_mlp"))  # another workload object: not the in-process cache
    assert first is not second and not calls
    assert [l.name for l in first.layers] == [l.name for l in second.layers]
    assert second.quantized_tensors == first.quantized_tensors
