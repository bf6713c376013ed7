"""Memory budget: chunked runs give the unchunked numbers; --eval-samples / --calib-samples /
--memory-budget bound a run and are recorded in summary.json."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from conftest import cached_analysis, cached_workload
from qanalysis import memory
from qanalysis.calibrate import collect_stats
from qanalysis.errors import ConfigError
from qanalysis.scheme import Config
from qanalysis.sensitivity import analyze_layers
from qanalysis.workload import limit_samples


@pytest.mark.parametrize(
    "text, n",
    [("2GB", 2 * 1024**3), ("512M", 512 * 1024**2), ("1.5g", int(1.5 * 1024**3)), ("300000000", 300000000),
     ("64KiB", 64 * 1024), (" 8 MB ", 8 * 1024**2)],
)  # fmt: skip
def test_parse_bytes(text, n):
    assert memory.parse_bytes(text) == n


@pytest.mark.parametrize("text", ["", "lots", "2XB", "-1G", "0", "1e9"])
def test_parse_bytes_refuses_with_one_line(text):
    with pytest.raises(ConfigError) as e:
        memory.parse_bytes(text)
    assert "\n" not in str(e.value) and "--memory-budget" in str(e.value)


def test_budget_is_scoped():
    assert memory.current_budget() == memory.DEFAULT_BUDGET
    with memory.memory_budget(1000):
        assert memory.current_budget() == 1000
    assert memory.current_budget() == memory.DEFAULT_BUDGET


def test_chunk_size_and_split():
    assert memory.chunk_size(100, 32, budget=1000) == 10
    assert memory.chunk_size(100, 32, budget=10**9) == 32
    assert memory.chunk_size(10**12, 32, budget=1) == 1
    x = (torch.arange(10).reshape(10, 1),)
    parts = memory.split(x, 4)
    assert [int(p[0].shape[0]) for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p[0] for p in parts]), x[0])


def test_footprint_counts_kept_and_live_bytes():
    wl = cached_workload("sample:digits_cnn")
    qg = cached_analysis("sample:digits_cnn").qgraph
    fp = memory.footprint(qg.program, dict(zip(qg.input_names, (t[:1] for t in wl.evaluation[0][0]))))
    everything = sum(fp.sizes.values())
    assert 0 < fp.float_live <= everything
    # a quantized run adds, at one node at a time, the fake-quantized copies of its inputs (the
    # engine arithmetic's temporaries run over blocks of samples and are not counted per sample)
    assert fp.float_live < fp.live <= fp.float_live + 2 * fp.largest
    assert fp.kept(qg.program.outputs) == fp.sizes[qg.program.outputs[0]]


def _rebatched(wl, size):
    """The same evaluation samples in batches of ``size`` (what chunking does inside a run)."""
    import dataclasses

    ev = [((tuple(t[i : i + size] for t in x)), y[i : i + size]) for x, y in wl.evaluation for i in range(0, len(y), size)]
    return dataclasses.replace(wl, evaluation=ev)


@pytest.mark.parametrize("source", ["sample:digits_cnn", "sample:digits_vit"])
def test_chunked_sensitivity_is_exactly_the_run_on_smaller_batches(source, monkeypatch):
    """Chunking itself changes nothing: batches of 32 run in chunks of 8 give, to the last digit,
    what batches of 8 give unchunked (kept tensors, partial runs and accumulators all agree)."""
    a = cached_analysis(source)
    wl = cached_workload(source)
    whole = analyze_layers(wl, a.sim, Config())
    assert whole.chunk_samples >= max(int(x[0].shape[0]) for x, _ in wl.evaluation)  # the default: whole batches
    later = ["recommendation", "recommendation_gain"]  # filled in by outliers.recommend afterwards
    pd.testing.assert_frame_equal(whole.to_frame().drop(columns=later), a.sens.to_frame().drop(columns=later), check_exact=True)
    # the cached runs hold a few activations per sample, not every tensor of both runs (the
    # ViT: 0.10 MB against 2 × 0.29 MB; digits_cnn is too small to tell, one run's live tensors dominate)
    fp = memory.footprint(a.qgraph.program, dict(zip(a.qgraph.input_names, (t[:1] for t in wl.evaluation[0][0]))))
    if source == "sample:digits_vit":
        assert whole.bytes_per_sample < 0.5 * sum(fp.sizes.values())
    assert 0 < whole.kept_output_bytes < 0.1 * memory.DEFAULT_BUDGET
    from qanalysis import sensitivity

    monkeypatch.setattr(sensitivity, "SPILL_FRACTION", 1.0)  # kept outputs stay in memory, counted against the budget
    chunked = analyze_layers(wl, a.sim, Config(), memory_budget=8 * whole.bytes_per_sample + whole.kept_output_bytes)
    assert chunked.chunk_samples == 8
    small = analyze_layers(_rebatched(wl, 8), a.sim, Config())
    pd.testing.assert_frame_equal(chunked.to_frame(), small.to_frame(), check_exact=True)
    assert torch.equal(chunked.fp32_outputs, small.fp32_outputs) and torch.equal(chunked.int8_outputs, small.int8_outputs)
    assert chunked.nodes_run == small.nodes_run


# Chunks of 1 against whole batches are not bitwise equal: oneDNN's convolutions and the GEMMs
# pick kernels (and so the order of float32 sums) by batch size (conv2d on 32 samples vs 32 × 1
# differs by ~1e-6 relative), and a value that sits on a quantization grid's rounding boundary
# then moves by a whole step. So: the task metrics and every non-float column exactly, SQNR,
# MSE, cosine and KL to 1e-3 relative (measured: 6e-5 SQNR, 5e-4 KL on digits_cnn); a wrong
# kept tensor or environment moves them by orders of magnitude more.
@pytest.mark.parametrize("source", ["sample:digits_cnn", "sample:digits_vit"])
def test_chunks_of_one_match_whole_batches(source):
    a = cached_analysis(source)
    wl = limit_samples(cached_workload(source), eval_samples=100)  # chunks of one are slow
    whole = analyze_layers(wl, a.sim, Config())
    tiny = analyze_layers(wl, a.sim, Config(), memory_budget=1)
    assert tiny.chunk_samples == 1 and tiny.bytes_per_sample == whole.bytes_per_sample > 0
    df_w, df_t = whole.to_frame(), tiny.to_frame()
    assert list(df_w.columns) == list(df_t.columns)
    exact = {"metric_only", "metric_drop", "metric_all_but", "metric_drop_all_but", "weight_sqnr_db", "weight_mse"}
    for col in df_w.columns:
        if df_w[col].dtype.kind in "fc" and col not in exact:
            pd.testing.assert_series_equal(df_w[col], df_t[col], check_exact=False, rtol=1e-3, atol=1e-9)
        else:
            pd.testing.assert_series_equal(df_w[col], df_t[col], check_exact=True)
    assert tiny.fp32_metric == whole.fp32_metric and tiny.int8_metric == whole.int8_metric
    torch.testing.assert_close(tiny.fp32_outputs, whole.fp32_outputs, rtol=1e-5, atol=1e-5)


def test_chunked_calibration_is_exactly_calibration_on_smaller_batches():
    """A budget that splits calibration batches into chunks of 8 gives the statistics of batches
    of 8, to the last digit (not those of whole batches: kernels differ by batch size, above)."""
    a = cached_analysis("sample:digits_resnet")
    wl = cached_workload("sample:digits_resnet")
    prog, tensors = a.qgraph.program, a.qgraph.quantized_tensors
    fp = memory.footprint(prog, dict(zip(prog.inputs, (t[:1] for t in wl.calibration[0]))))
    unread = {t for t in tensors if not prog.consumers.get(t)}  # kept to the end; the rest observed as read
    with memory.memory_budget(8 * (fp.kept(unread) + fp.live)):
        chunked = collect_stats(prog, wl.calibration, tensors)
    small = collect_stats(prog, [tuple(t[i : i + 8] for t in x) for x in wl.calibration for i in range(0, len(x[0]), 8)], tensors)
    assert chunked.keys() == small.keys()
    for t, s in small.items():
        u = chunked[t]
        assert (s.min, s.max, s.count) == (u.min, u.max, u.count)
        # moments are float sums: the observers' in-place temporaries may reorder the last bits
        assert (s.mean, s.std, s.kurtosis) == pytest.approx((u.mean, u.std, u.kurtosis), rel=1e-12, abs=1e-15)
        assert torch.equal(s.channel_absmax, u.channel_absmax) and torch.equal(s.hist, u.hist)


def test_limit_samples_takes_the_first_samples():
    wl = cached_workload("sample:digits_cnn")
    b = limit_samples(wl, eval_samples=50, calib_samples=20)
    assert b.n_eval == 50 and b.n_calib == 20
    assert torch.equal(b.targets(), wl.targets()[:50])
    assert torch.equal(torch.cat([x[0] for x, _ in b.evaluation]), torch.cat([x[0] for x, _ in wl.evaluation])[:50])
    assert torch.equal(torch.cat([x[0] for x in b.calibration]), torch.cat([x[0] for x in wl.calibration])[:20])
    assert b.sample_limits == {"eval_samples": 50, "calib_samples": 20}
    assert wl.n_eval == 540  # the original is untouched
    more = limit_samples(wl, eval_samples=10**6)
    assert more.n_eval == wl.n_eval and more.n_calib == wl.n_calib


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_limit_samples_refuses_non_positive_counts(bad):
    with pytest.raises(ConfigError, match="--eval-samples"):
        limit_samples(cached_workload("sample:digits_cnn"), eval_samples=bad)


def test_cli_flags_bound_the_run_and_summary_records_them(run_cli, tmp_path):
    out = tmp_path / "a"
    code, _, err = run_cli("analyze", "sample:digits_cnn", "--out", out, "--quiet",
                           "--eval-samples", "40", "--calib-samples", "30", "--memory-budget", "64MB")  # fmt: skip
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["n_evaluation_samples"] == 40 and s["eval_samples"] == 40
    assert s["n_calibration_samples"] == 30 and s["calib_samples"] == 30
    assert s["memory_budget_bytes"] == 64 * 1024**2
    assert s["peak_rss_bytes"] > 0
    assert len(pd.read_csv(out / "layers.csv")) > 0


def test_summary_without_flags_has_defaults():
    s = cached_analysis("sample:digits_cnn").summary()
    assert s["eval_samples"] is None and s["calib_samples"] is None
    assert s["memory_budget_bytes"] == memory.DEFAULT_BUDGET
    assert s["peak_rss_bytes"] > 0


@pytest.mark.parametrize(
    "flags, words",
    [(["--memory-budget", "lots"], "--memory-budget"), (["--eval-samples", "0"], "--eval-samples"),
     (["--calib-samples", "x"], "--calib-samples")],
)  # fmt: skip
@pytest.mark.parametrize("cmd", ["analyze", "search", "export"])
def test_cli_refuses_bad_bounds_in_one_line(run_cli, tmp_path, cmd, flags, words):
    extra = ["--max-drop", "1"] if cmd == "search" else []
    code, _, err = run_cli(cmd, "sample:digits_cnn", "--out", tmp_path / "o", *extra, *flags)
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "o").exists()


def test_export_layer_checks_and_evaluations_are_chunked_by_the_budget(tmp_path, monkeypatch):
    """export's full-batch passes hold chunks that fit the budget, not whole batches: under a
    budget of one sample's bytes, layer_checks and the simulated evaluation run in chunks of
    one sample (more chunks than batches), layer_checks in groups of layers whose tensors fit,
    and they give the whole-batch numbers."""
    from qanalysis.engine import build_int8_engine
    from qanalysis.export import _metric, layer_checks

    a = cached_analysis("sample:digits_cnn")
    wl, sim = cached_workload("sample:digits_cnn"), a.sim
    plan = sim.plan(Config())
    path = tmp_path / "model_int8.onnx"
    build_int8_engine(a.qgraph, sim, plan, path, wl.calibration[0])
    sizes: list[int] = []
    real_split = memory.split

    def counting_split(x, size):
        parts = real_split(x, size)
        sizes.extend(int(p[0].shape[0]) for p in parts)
        return parts

    monkeypatch.setattr(memory, "split", counting_split)
    whole = layer_checks(wl, sim, plan, path)
    whole_sim = sim.outputs(wl.evaluation, plan)
    whole_fp = _metric(wl, lambda x: sim.output(sim.run(dict(zip(a.qgraph.input_names, x)), sim.fp32_plan())), sim)[1]
    n_batches, n_samples = len(wl.evaluation[:2]), sum(int(x[0].shape[0]) for x, _ in wl.evaluation[:2])
    assert sizes[:n_batches] == [int(x[0].shape[0]) for x, _ in wl.evaluation[:2]]  # the default budget: whole batches
    sizes.clear()
    one = sim.footprint(wl.evaluation[0][0]).live  # less than what layer_checks holds per sample
    with memory.memory_budget(one):
        small = layer_checks(wl, sim, plan, path)
        # chunks of one sample, and the layers in groups (each group runs over every sample)
        assert set(sizes) == {1} and len(sizes) % n_samples == 0 and len(sizes) // n_samples > 1
        sizes.clear()
        small_sim = sim.outputs(wl.evaluation, plan)
        assert len(sizes) > len(wl.evaluation) and max(sizes) < int(wl.evaluation[0][0][0].shape[0])
        small_fp = _metric(wl, lambda x: sim.output(sim.run(dict(zip(a.qgraph.input_names, x)), sim.fp32_plan())), sim)[1]
    assert [(c.layer, c.tensor, c.agrees) for c in small] == [(c.layer, c.tensor, c.agrees) for c in whole] and whole
    for s, w in zip(small, whole):  # per-chunk sums: float rounding of kernels on smaller batches at most
        assert s.sqnr_db == pytest.approx(w.sqnr_db, rel=1e-6, abs=1e-6)
        assert s.max_err_steps == pytest.approx(w.max_err_steps, abs=1e-3)
        assert s.frac_off_by_more_than_1 == pytest.approx(w.frac_off_by_more_than_1, abs=1e-12)
    torch.testing.assert_close(small_sim, whole_sim, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(small_fp, whole_fp, rtol=1e-5, atol=1e-5)
    assert wl.score(small_sim) == wl.score(whole_sim)


def test_fake_quant_in_place_is_the_formula_and_footprint_counts_its_copies():
    """fake_quant computes in place on one copy; the values are the formula's to the bit, with
    or without autograd; a simulated run's live bytes count each node's fake-quantized inputs."""
    from qanalysis.scheme import QParams, QRange
    from qanalysis.simulate import dynamic_fake_quant, fake_quant

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g) * 3
    qr = QRange.for_bits(8, False)
    qp = QParams(torch.tensor([0.02, 0.05, 0.1]), torch.tensor([128, 120, 3]), qr, axis=1)
    s, z = qp.scale.reshape(1, -1, 1, 1), qp.zero_point.reshape(1, -1, 1, 1).float()
    want = (torch.clamp(torch.round(x / s) + z, qr.qmin, qr.qmax) - z) * s
    with torch.inference_mode():
        assert torch.equal(fake_quant(x, qp), want)
    xg = x.clone().requires_grad_(True)
    assert torch.equal(fake_quant(xg, qp).detach(), want)
    before = x.clone()
    with torch.inference_mode():
        d = dynamic_fake_quant(x, 8, False)
    assert torch.equal(x, before) and torch.equal(dynamic_fake_quant(x.clone().requires_grad_(True), 8, False).detach(), d)
    wl = cached_workload("sample:digits_cnn")
    qg = cached_analysis("sample:digits_cnn").qgraph
    fp = memory.footprint(qg.program, dict(zip(qg.input_names, (t[:1] for t in wl.evaluation[0][0]))))
    # each node's fake-quantized input copies
    assert fp.float_live < fp.live <= fp.float_live + 2 * fp.largest


@pytest.mark.parametrize("source", ["sample:digits_cnn", "sample:digits_vit"])
def test_engine_kernels_over_blocks_of_samples_give_the_same_bits(source, monkeypatch):
    """The engine-arithmetic kernels (integer Conv/Gemm/MatMul, QLinearAdd/Mul, act×act MatMul)
    run over blocks of samples so their float64 temporaries do not grow with the batch; blocks of
    one sample give exactly the outputs of one call on the whole batch."""
    from qanalysis import simulate

    a = cached_analysis(source)
    wl = cached_workload(source)
    plan = a.sim.plan(Config())
    kinds = {a.sim.prog.nodes[i].op for i in a.sim.integer_kernels(plan)}
    assert kinds & {"Conv", "Gemm", "MatMul"}
    monkeypatch.setattr(simulate, "KERNEL_BLOCK_BYTES", 10**12)  # one block: the whole batch
    plan.kernels = None
    whole = a.sim.outputs(wl.evaluation, plan)
    monkeypatch.setattr(simulate, "KERNEL_BLOCK_BYTES", 1)  # one sample per block
    plan.kernels = None
    blocked = a.sim.outputs(wl.evaluation, plan)
    assert torch.equal(whole, blocked)


def test_per_layer_outputs_go_to_disk_when_they_exceed_half_the_budget(monkeypatch):
    """A model with large outputs (a detector, a segmenter) keeps 2 × layers per-layer outputs
    to the end; over half the budget they are written to a temporary folder and read back per
    layer, and the analysis' numbers are those of the in-memory run."""
    a = cached_analysis("sample:digits_cnn")
    wl = cached_workload("sample:digits_cnn")
    whole = analyze_layers(wl, a.sim, Config())
    assert isinstance(whole.only_outputs, dict)
    from qanalysis import sensitivity

    monkeypatch.setattr(sensitivity, "SPILL_FRACTION", 0.0)  # any kept outputs go to disk
    spilled = analyze_layers(wl, a.sim, Config())
    assert not isinstance(spilled.only_outputs, dict)
    folder = spilled.only_outputs._dir.name
    assert any(os.scandir(folder))
    later = ["recommendation", "recommendation_gain"]
    pd.testing.assert_frame_equal(whole.to_frame().drop(columns=later), spilled.to_frame().drop(columns=later), check_exact=True)
    for name, o in whole.only_outputs.items():
        assert torch.equal(o, spilled.only_outputs[name])
    del spilled
    import gc

    gc.collect()
    assert not os.path.exists(folder)
