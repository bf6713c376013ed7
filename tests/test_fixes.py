"""Fixes (DESIGN.md step 7): each one measured on the bundled samples and carried by the engine."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import onnx
import pytest
import torch
from conftest import SPECS, cached_workload

from qanalysis import metrics as M
from qanalysis.analysis import analyze, prepare_simulator
from qanalysis.compare import preview_fix
from qanalysis.errors import ConfigError
from qanalysis.export import export
from qanalysis.simulate import broadcast_qparams
from qanalysis.fixes import FIXES, apply_fixes, cle, list_fixes
from qanalysis.fixes import adaround as ar
from qanalysis.fixes import qat as qt
from qanalysis.fixes import smoothquant as sq
from qanalysis.graph import prepare
from qanalysis.scheme import Config, QParams, QRange
from qanalysis.simulate import fake_quant
from qanalysis.workload import list_samples

PLANTED = str(SPECS / "planted_outliers.py")
W4A8 = {"weights": {"bits": 4}}
PER_TENSOR = {"weights": {"granularity": "per_tensor"}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The fixes' training loops run on tiny tensors: one thread is as fast, and immune to
    OpenMP oversubscription when other processes share the two cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fast(monkeypatch):
    """Test-sized iteration counts (the bench uses the defaults)."""
    monkeypatch.setattr(ar, "ITERS", 100)
    monkeypatch.setattr(qt, "EPOCHS", 2)


def cfg(scheme: dict | None = None, fixes: tuple[str, ...] = ()) -> Config:
    return Config.from_dict({"scheme": scheme or {}, "fixes": list(fixes)})


def simulate(wl, config: Config) -> tuple[float, torch.Tensor, list[str]]:
    qg = prepare(wl, config.scheme)
    sim, _, notes, _ = prepare_simulator(wl, qg, config)
    plan = sim.plan(config)
    with torch.inference_mode():
        out = torch.cat([sim.output(sim.run(dict(zip(qg.input_names, x)), plan)) for x, _ in wl.evaluation])
    return wl.score(out), out, notes


def float_outputs(qg, wl) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([qg.program.run(dict(zip(qg.input_names, x)))[qg.program.outputs[0]] for x, _ in wl.evaluation])


def test_registry_order_and_descriptions():
    assert list_fixes() == ["rtn", "cle", "awq", "smoothquant", "bias_correction", "gptq", "adaround", "qat"]
    assert all(FIXES[f].description for f in list_fixes())
    assert [f for f in list_fixes() if FIXES[f].preserves_fp32] == ["rtn", "cle", "awq", "smoothquant"]


# --------------------------------------------------------------------------- CLE


@pytest.mark.parametrize("source", [f"sample:{n}" for n in list_samples()] + [PLANTED])
def test_cle_preserves_fp32(source, monkeypatch):
    monkeypatch.setattr(cle, "GUARD", False)  # equalize every pair found
    wl = cached_workload(source)
    qg = prepare(wl)
    fixed = apply_fixes(wl, qg, cfg(fixes=("cle",)))
    a, b = float_outputs(qg, wl), float_outputs(fixed.qg, wl)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-4
    if "vit" in source or "tiny_lm" in source:  # no ReLU-joined linear pairs in a transformer
        assert "no equalizable" in fixed.notes[0]
    else:
        assert "equalized" in fixed.notes[0] and fixed.qg is not qg


def test_cle_recovers_planted_outliers_per_tensor(tmp_path):
    """3 planted 100× channels between conv1 and conv2, per-tensor INT8: CLE undoes them."""
    wl = cached_workload(PLANTED)
    base, fixed = cfg(PER_TENSOR), cfg(PER_TENSOR, ("cle",))
    m0, _, _ = simulate(wl, base)
    m1, _, notes = simulate(wl, fixed)
    fp32 = wl.score(float_outputs(prepare(wl), wl))
    assert fp32 - m0 > 20, "the planted channels should break per-tensor INT8"
    assert fp32 - m1 < 1.0, notes
    # the activation between conv1 and conv2 (conv2's per-tensor input grid) is evened out
    qg = prepare(wl, base.scheme)
    before = apply_fixes(wl, qg, base).stats["relu"].channel_absmax
    after = apply_fixes(wl, qg, fixed).stats["relu"].channel_absmax
    ratio = lambda c: float(c.max() / c.median())
    assert ratio(before) > 50 and ratio(after) < 5
    rep = export(wl, fixed, tmp_path, repeats=3)
    assert fp32 - rep.engine_metric < 1.0
    assert rep.sim_engine_gap <= 0.3 and not rep.disagreements
    assert "equalized" in " ".join(rep.fix_notes)


def test_cle_guard_keeps_only_equalizations_that_help():
    """Per-channel 4-bit weights: equalizing digits_resnet's dw → pw pairs raises the error, so
    they are left alone (unguarded, the metric fell from 97.96 to 97.22)."""
    wl = cached_workload("sample:digits_resnet")
    ptq, _, _ = simulate(wl, cfg(W4A8))
    m, _, notes = simulate(wl, cfg(W4A8, ("cle",)))
    assert m >= ptq and any("left" in n for n in notes), notes


def test_preview_fix_measures_cle_on_planted():
    wl = cached_workload(PLANTED)
    p = preview_fix(wl, cfg(PER_TENSOR), "cle")
    assert set(p) >= {"metric_before", "metric_after", "gain"}
    assert p["gain"] > 20 and math.isclose(p["gain"], p["metric_after"] - p["metric_before"])
    with pytest.raises(ConfigError, match="unknown fix"):
        preview_fix(wl, cfg(), "magic")


# --------------------------------------------------------------------------- bias correction


def test_bias_correction_removes_output_bias_w4a8():
    wl = cached_workload("sample:digits_cnn")
    fp = float_outputs(prepare(wl), wl)
    _, q0, _ = simulate(wl, cfg(W4A8))
    _, q1, notes = simulate(wl, cfg(W4A8, ("bias_correction",)))
    bias0 = float((fp - q0).mean(0).abs().mean())  # mean over classes of |E[y_fp32 − y_quant]|
    bias1 = float((fp - q1).mean(0).abs().mean())
    assert bias1 < 0.5 * bias0, (bias0, bias1)
    assert M.sqnr_db(fp, q1) > M.sqnr_db(fp, q0)
    assert "corrected 4 bias" in notes[0]


# --------------------------------------------------------------------------- AdaRound and QAT


def _w4a8_baseline(wl) -> tuple[float, float, float, torch.Tensor]:
    fp = float_outputs(prepare(wl), wl)
    m, q, _ = simulate(wl, cfg(W4A8))
    return wl.score(fp), m, M.sqnr_db(fp, q), fp


@pytest.mark.parametrize("name", list_samples())
def test_adaround_beats_round_to_nearest_w4a8(name, fast, monkeypatch):
    wl = cached_workload(f"sample:{name}")
    fp32, rtn, rtn_sqnr, fp = _w4a8_baseline(wl)
    for seed in (0, 1):
        monkeypatch.setattr(ar, "SEED", seed)
        m, q, _ = simulate(wl, cfg(W4A8, ("adaround",)))
        assert M.sqnr_db(fp, q) > rtn_sqnr + 0.5, (seed, M.sqnr_db(fp, q), rtn_sqnr)
        if wl.drop(fp32, rtn) >= 0.5:  # round-to-nearest loses something: AdaRound gets part of it back
            assert wl.drop(m, rtn) > 0, (seed, m, rtn)  # RTN is worse (drops follow the metric's direction)
        else:  # nothing to recover (RTN within 0.5 of FP32): no material loss either
            assert wl.drop(rtn, m) <= 0.5, (seed, m, rtn)


@pytest.mark.parametrize("name", list_samples())
def test_qat_beats_ptq_w4a8(name, fast, monkeypatch):
    wl = cached_workload(f"sample:{name}")
    fp32, ptq, _, _ = _w4a8_baseline(wl)
    for seed in (0, 1):
        monkeypatch.setattr(qt, "SEED", seed)
        m, _, notes = simulate(wl, cfg(W4A8, ("qat",)))
        if wl.drop(fp32, ptq) >= 0.5:
            assert wl.drop(m, ptq) > 0, (seed, m, ptq, notes)  # PTQ is worse
        else:
            assert wl.drop(ptq, m) <= 0.5, (seed, m, ptq, notes)


def test_adaround_and_qat_recover_w3a8_digits_cnn(fast, monkeypatch):
    """Where PTQ really hurts (3-bit weights: −6 points), both recover most of it, every seed."""
    wl = cached_workload("sample:digits_cnn")
    ptq, _, _ = simulate(wl, cfg({"weights": {"bits": 3}}))
    for seed in (0, 1):
        monkeypatch.setattr(ar, "SEED", seed)
        monkeypatch.setattr(qt, "SEED", seed)
        for fix in ("adaround", "qat"):
            m, _, _ = simulate(wl, cfg({"weights": {"bits": 3}}, (fix,)))
            assert m > ptq + 3.0, (fix, seed, m, ptq)


def test_adaround_export_carries_the_exact_rounding(tmp_path, monkeypatch):
    """At W8 the engine's int8 weights are AdaRound's integers q, not round-to-nearest's."""
    monkeypatch.setattr(ar, "ITERS", 60)
    wl = cached_workload("sample:digits_cnn")
    config = cfg(fixes=("adaround",))
    qg = prepare(wl)
    fixed = apply_fixes(wl, qg, config)
    assert fixed.weight_qparams
    rep = export(wl, config, tmp_path, repeats=3)
    assert rep.sim_engine_gap <= 0.3 and not rep.disagreements
    m = onnx.load(str(tmp_path / "model_int8.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    changed = 0
    for name, qp in fixed.weight_qparams.items():
        s, z = broadcast_qparams(qp, fixed.qg.program.initializers[name])
        q = torch.round(fixed.qg.program.initializers[name] / s) + z
        q_rtn = torch.round(qg.program.initializers[name] / s) + z
        engine_q = inits[f"{name}_quantized"].astype(np.int64)
        assert np.array_equal(engine_q, q.numpy().astype(np.int64)), name
        changed += int((q != q_rtn).sum())
    assert changed > 0


def test_ste_fake_quant_gradient():
    qp = QParams(torch.tensor(0.1), torch.tensor(128), QRange(0, 255))
    x = torch.tensor([-20.0, -1.234, 0.0, 5.55, 20.0], requires_grad=True)
    y = qt.ste_fake_quant(x, qp)
    assert torch.equal(y.detach(), fake_quant(x.detach(), qp))
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # clipped below −12.8 and above 12.7


def test_qat_gradients_flow_through_the_interpreter():
    wl = cached_workload("sample:digits_cnn")
    qg = prepare(wl)
    config = cfg(W4A8)
    sim, *_ = prepare_simulator(wl, qg, config)
    names = qt.trainable(qg)
    params = {n: torch.nn.Parameter(qg.program.initializers[n].float().clone()) for n in names}
    model = qt._QATModel(sim, sim.plan(config), params)
    x, y = next(iter(wl.training()))
    out = model((x,))
    with torch.inference_mode():  # the forward pass is the simulator's
        ref = sim.output(sim.run(dict(zip(qg.input_names, (x,))), sim.plan(config)))
    assert torch.allclose(out.detach(), ref, atol=1e-4)
    wl.loss(out, y).backward()
    assert set(names) == {w for l in qg.layers for _, w in l.weights + ([l.bias] if l.bias else [])}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


def test_qat_without_training_data_is_a_clear_error():
    wl = cached_workload(str(SPECS / "multi_input.py"))
    with pytest.raises(ConfigError, match="training_batches"):
        apply_fixes(wl, prepare(wl), cfg(fixes=("qat",)))


# --------------------------------------------------------------------------- SmoothQuant


def test_smoothquant_vit_lowers_activation_error_and_preserves_fp32():
    wl = cached_workload("sample:digits_vit")
    qg = prepare(wl)
    base, fixed_cfg = cfg(), cfg(fixes=("smoothquant",))
    sim0, *_ = prepare_simulator(wl, qg, base)
    sim1, _, notes, _ = prepare_simulator(wl, qg, fixed_cfg)
    a, b = float_outputs(qg, wl), float_outputs(sim1.qg, wl)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-4
    smoothed = [l for l in qg.layers if l.op_type in ("MatMul", "Gemm") and l.weights
                and qg.program.producer.get(l.act_inputs[0][1]) is not None
                and qg.program.nodes[qg.program.producer[l.act_inputs[0][1]]].op in ("LayerNormalization", "Gather")]  # fmt: skip
    assert len(smoothed) == 5, [l.name for l in smoothed]

    def input_sqnr(sim) -> dict[str, float]:
        acc = {l.name: [0.0, 0.0] for l in smoothed}
        with torch.inference_mode():
            for x, _ in wl.evaluation:
                env = sim.qg.program.run(dict(zip(qg.input_names, x)), keep=True)
                for l in smoothed:
                    t = l.act_inputs[0][1]
                    v = env[t].double()
                    acc[l.name][0] += float((v**2).sum())
                    acc[l.name][1] += float(((v - fake_quant(env[t], sim.act_qparams(t)).double()) ** 2).sum())
        return {k: 10 * math.log10(s / n) for k, (s, n) in acc.items()}

    s0, s1 = input_sqnr(sim0), input_sqnr(sim1)
    gains = [s1[k] - s0[k] for k in s0]
    assert sum(gains) / len(gains) > 0.5, (s0, s1, notes)
    assert min(gains) > -0.2, (s0, s1)


def test_smoothquant_fixed_alpha_runs(monkeypatch):
    """The paper's fixed α = 0.5 still preserves FP32 (and is what ALPHA = 0.5 selects)."""
    monkeypatch.setattr(sq, "ALPHA", 0.5)
    wl = cached_workload("sample:digits_vit")
    qg = prepare(wl)
    fixed = apply_fixes(wl, qg, cfg(fixes=("smoothquant",)))
    assert "α = 0.5" in fixed.notes[0] and fixed.notes[0].count("α = 0.5") == 5
    a, b = float_outputs(qg, wl), float_outputs(fixed.qg, wl)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-4


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("fix", ["cle", "smoothquant", "bias_correction", "adaround", "qat"])
def test_export_carries_each_fix(tmp_path, fix, fast):
    wl = cached_workload("sample:diabetes_mlp" if fix == "smoothquant" else "sample:digits_cnn")
    rep = export(wl, cfg(fixes=(fix,)), tmp_path, repeats=3)
    assert rep.fix_notes and rep.fix_notes[0].startswith(f"{fix}:")
    assert rep.sim_engine_gap <= 0.3 and not rep.disagreements
    assert all(c["max_err_steps"] <= 2.0 for c in rep.layer_checks)


def test_analyze_with_all_fixes(fast):
    wl = cached_workload("sample:digits_resnet")
    a = analyze(wl, cfg(fixes=tuple(list_fixes())), baseline=False, previews=0)
    s = a.summary()
    assert list(dict.fromkeys(n.split(":")[0] for n in s["fix_notes"])) == list_fixes()
    assert s["fixes"] == list_fixes()
    fp32 = wl.score(float_outputs(prepare(wl), wl))
    assert s["fp32_metric"] == pytest.approx(fp32)  # the original model stays the FP32 reference
    assert s["drop"] < 1.0


def test_compare_cli_fp32_ptq_fixes_qat(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(ar, "ITERS", 60)
    monkeypatch.setattr(qt, "MAX_STEPS", 30)
    files = {"PTQ": {}, "PTQ+fixes": {"fixes": ["cle", "bias_correction", "adaround"]}, "QAT": {"fixes": ["qat"]},
             "W4A8": {"scheme": W4A8}}  # fmt: skip
    paths = []
    for label, d in files.items():
        p = tmp_path / f"{label}.json"
        p.write_text(json.dumps(d))
        paths.append(p)
    code, out, err = run_cli("compare", "sample:digits_cnn", "--configs", *paths, "--out", tmp_path / "c", "--quiet")
    assert code == 0, err
    with open(tmp_path / "c" / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == ["FP32", "PTQ", "PTQ+fixes", "QAT", "W4A8"]
    for col in ("simulated_metric", "drop", "worst_class_delta", "engine_metric", "engine_size_bytes", "latency_ms"):
        assert col in rows[0]
    for r in rows[:4]:
        assert float(r["engine_metric"]) > 95 and int(r["engine_size_bytes"]) > 0 and float(r["latency_ms"]) > 0
    for r in rows[1:4]:
        assert abs(float(r["simulated_metric"]) - float(r["engine_metric"])) <= 0.3
        assert int(r["engine_size_bytes"]) < int(rows[0]["engine_size_bytes"])
    assert rows[4]["engine_metric"] == "" and "simulated only" in rows[4]["note"]
    assert float(rows[4]["drop"]) == pytest.approx(float(rows[0]["simulated_metric"]) - float(rows[4]["simulated_metric"]))
    assert (tmp_path / "c" / "QAT" / "model_int8.onnx").is_file() and not (tmp_path / "c" / "W4A8").exists()
    assert "FP32" in out and "PTQ+fixes" in out


def test_compare_cli_rejects_duplicate_labels(run_cli, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "PTQ.json").write_text("{}")
    code, _, err = run_cli("compare", "sample:digits_cnn", "--configs", tmp_path / "a" / "PTQ.json",
                             tmp_path / "b" / "PTQ.json", "--out", tmp_path / "c")  # fmt: skip
    assert code == 2 and err.startswith("error: ") and "PTQ" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()
