"""Weight-only engines: MatMulNBits blocks simulated exactly as ONNX Runtime quantizes them,
engines built by ORT's own quantizer carrying the simulation's integers, mixed with QDQ and float."""

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from conftest import SPECS, cached_workload
from qanalysis.analysis import check_config
from qanalysis.errors import ConfigError
from qanalysis.export import export
from qanalysis.graph import prepare
from qanalysis.scheme import Config, Scheme
from qanalysis.simulate import block_quantize, roundf

VIT = "sample:digits_vit"


def wo(bits: int, group: int, symmetric: bool = True, **extra) -> Config:
    return Config.from_dict({"scheme": {"weights": {"bits": bits, "granularity": group, "symmetric": symmetric},
                                        "activations": None}, **extra})  # fmt: skip


def test_config_contract_round_trips():
    c = wo(4, 32, layers={"head": "w8", "blocks.0.attn.qkv": "fp16"})
    assert c.scheme.activations is None and c.scheme.weight_only
    assert Config.from_dict(c.to_dict()) == c
    assert c.to_dict()["scheme"]["activations"] is None
    assert "weight-only" in c.scheme.label()
    assert Config.from_dict({"scheme": {}}).scheme.activations is not None  # missing = the default scheme
    assert Config.from_dict({"layers": {"fc": "w4"}}).layers == {"fc": "w4"}
    with pytest.raises(ConfigError, match="group size"):
        Config.from_dict({"scheme": {"weights": {"bits": 4}, "activations": None}})
    with pytest.raises(ConfigError, match="precision must be one of"):
        Config.from_dict({"layers": {"fc": "w5"}})


@pytest.mark.parametrize("p,fmt", [("w4", (4, None)), ("w4g128", (4, 128)), ("w8g16", (8, 16)), ("int8", None), ("w5g32", None), ("w4g", None)])
def test_weight_only_precisions_with_their_own_group(p, fmt):
    from qanalysis.scheme import is_precision, weight_only_format

    assert weight_only_format(p) == fmt and is_precision(p) == (fmt is not None or p == "int8")


def test_a_group_outside_matmulnbits_blocks_is_refused():
    with pytest.raises(ConfigError, match="group size must be one of"):
        Config.from_dict({"layers": {"fc": "w4g100"}})
    assert Config.from_dict({"layers": {"fc": "w4g64", "*": "fp16"}}).layers == {"fc": "w4g64", "*": "fp16"}


def test_roundf_is_half_away_from_zero():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 2.4])
    assert roundf(x).tolist() == [1.0, 2.0, 3.0, -1.0, -3.0, 0.0, 2.0]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [16, 32, 128])
@pytest.mark.parametrize("shape", [(48, 144), (100, 30)])
def test_integers_scales_zero_points_equal_ort(bits, symmetric, block, shape):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

    g = torch.Generator().manual_seed(bits * 1000 + block + shape[0])
    w = torch.randn(shape, generator=g) * torch.rand(1, shape[1], generator=g) * 3
    w[:5, :3] = 0.0  # an all-zero block: s = 0
    q = DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, bits=bits))
    packed, scales, zp = q.qbits_block_quant(w.numpy().copy())
    b, s, z = block_quantize(w, bits, block, symmetric).packed()
    assert np.array_equal(b, packed) and np.array_equal(s, scales)
    assert (z is None) if symmetric else np.array_equal(z, zp)


def _nbits(path):
    m = onnx.load(str(path))
    return [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in m.graph.node if n.op_type == "MatMulNBits"], m


@pytest.mark.parametrize("bits,group,symmetric", [(4, 32, True), (4, 16, False), (8, 32, True)])
def test_weight_only_engine_equals_simulation(tmp_path, bits, group, symmetric):
    wl = cached_workload(VIT)
    rep = export(wl, wo(bits, group, symmetric), tmp_path, repeats=3)
    assert rep.engine_metric == rep.simulated_metric
    nodes, m = _nbits(tmp_path / "model_int8.onnx")
    assert len(nodes) == 9  # 8 MatMul Linears + the head Gemm
    assert all(a["bits"] == bits and a["block_size"] == group and a.get("accuracy_level", 0) == 0 for a in nodes)
    assert not any(n.op_type in ("QuantizeLinear", "Gemm") for n in m.graph.node)
    assert all(w["ort_identical"] for w in rep.weight_only) and len(rep.weight_only) == 9
    assert rep.int8_size_bytes < rep.fp32_size_bytes


def test_weight_only_sizes_shrink_with_bits(tmp_path):
    wl = cached_workload(VIT)
    (tmp_path / "w8").mkdir(), (tmp_path / "w4").mkdir()
    r8 = export(wl, wo(8, 32), tmp_path / "w8", repeats=2, check_layers=False)
    r4 = export(wl, wo(4, 32), tmp_path / "w4", repeats=2, check_layers=False)
    assert r4.int8_size_bytes < r8.int8_size_bytes < r8.fp32_size_bytes


def test_hf_transformer_weight_only(tmp_path):
    wl = cached_workload(str(SPECS / "hf_bert.py"))
    rep = export(wl, wo(4, 16, False), tmp_path, repeats=2)
    assert rep.engine_metric == rep.simulated_metric
    assert rep.weight_only and all(w["ort_identical"] for w in rep.weight_only)


def test_mixed_int8_weight_only_and_float_in_one_engine(tmp_path):
    wl = cached_workload(VIT)
    cfg = Config.from_dict({"layers": {"blocks.0.mlp.fc1": "w4", "blocks.1.mlp.fc2": "w8", "head": "w4",
                                       "blocks.0.attn.qkv": "fp16"}})  # fmt: skip
    rep = export(wl, cfg, tmp_path, repeats=2)
    assert rep.engine_metric == rep.simulated_metric
    nodes, m = _nbits(tmp_path / "model_int8.onnx")
    assert sorted(a["bits"] for a in nodes) == [4, 4, 8]
    ops = {n.op_type for n in m.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert {w["layer"]: w["bits"] for w in rep.weight_only} == {"blocks.0.mlp.fc1": 4, "blocks.1.mlp.fc2": 8, "head": 4}


def test_weight_only_on_a_conv_is_refused():
    wl = cached_workload(VIT)
    qg = prepare(wl, Scheme())
    conv = next(l.name for l in qg.layers if qg.program.nodes[l.node].op == "Conv")
    with pytest.raises(ConfigError, match="MatMulNBits"):
        check_config(Config.from_dict({"layers": {conv: "w4"}}), qg)


def test_weight_only_simulation_keeps_activations_float():
    from qanalysis.analysis import prepare_simulator

    wl = cached_workload(VIT)
    cfg = wo(4, 32)
    qg = prepare(wl, cfg.scheme)
    sim, *_ = prepare_simulator(wl, qg, cfg)
    plan = sim.plan(cfg)
    assert not plan.edges and not plan.outputs
    assert {k[0] for k in plan.weights.values()} == {"wo"}
