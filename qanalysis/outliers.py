"""Distribution statistics, outlier channels, and a measured recommendation per layer.

A channel is an *outlier* when its absmax is at least ``OUTLIER_RATIO`` times the median
channel absmax of the same tensor: with per-tensor quantization such a channel sets the
scale for all the others, which then keep only a few integer levels.

Recommendations are chosen from what was *measured* on the layer (``preview`` reruns the
only-this-layer simulation with the candidate change) rather than from rules of thumb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch

from .calibrate import TensorStats, calibration_range
from .graph import Layer
from .scheme import ActivationSpec, Config, WeightSpec
from .sensitivity import SensitivityResult, only_plan
from .simulate import Simulator, SimPlan
from .workload import Workload, relative

OUTLIER_RATIO = 8.0
FINE_DROP = 0.1  # metric points below which a layer's own drop is noise


@dataclass
class OutlierRow:
    layer: str
    tensor: str  # "weight" | "activation"
    channel: int
    absmax: float
    ratio: float
    kurtosis: float


@dataclass
class TensorSummary:
    layer: str
    tensor: str
    name: str
    channels: int
    absmax: float
    median_channel_absmax: float
    max_ratio: float
    kurtosis: float
    n_outliers: int


def _kurtosis(x: torch.Tensor) -> float:
    x = x.detach().double().reshape(-1)
    if x.numel() < 4:
        return 0.0
    m = x.mean()
    v = ((x - m) ** 2).mean()
    if v <= 1e-30:
        return 0.0
    return float(((x - m) ** 4).mean() / v**2 - 3.0)


def weight_channel_absmax(w: torch.Tensor, axis: int | None) -> torch.Tensor:
    axis = 0 if axis is None else axis % max(w.dim(), 1)
    if w.dim() < 2:
        return w.abs()
    return w.abs().movedim(axis, 0).reshape(w.shape[axis], -1).amax(1)


def _flag(layer: str, tensor: str, absmax: torch.Tensor, kurt: float) -> tuple[list[OutlierRow], float, float]:
    if absmax.numel() < 2:
        return [], float("nan"), float("nan")
    med = float(absmax.median())
    if med <= 0:
        med = float(absmax[absmax > 0].median()) if (absmax > 0).any() else 0.0
    if med <= 0:
        return [], 0.0, float("nan")
    ratio = absmax / med
    rows = [
        OutlierRow(layer, tensor, int(c), float(absmax[c]), float(ratio[c]), kurt)
        for c in torch.nonzero(ratio >= OUTLIER_RATIO).reshape(-1).tolist()
    ]
    return rows, med, float(ratio.max())


def find_outliers(sim: Simulator, stats: dict[str, TensorStats]) -> tuple[list[OutlierRow], list[TensorSummary]]:
    """Flagged channels of every layer's weight and input activation, plus per-tensor summaries."""
    rows: list[OutlierRow] = []
    summaries: list[TensorSummary] = []
    qg = sim.qg
    for l in qg.layers:
        if l.weights:
            wname = l.weights[0][1]
            w = sim._float_weight(wname)
            if w.dim() >= 2:
                am = weight_channel_absmax(w, qg.weight_axis.get(wname))
                k = _kurtosis(w)
                r, med, mx = _flag(l.name, "weight", am, k)
                rows += r
                summaries.append(TensorSummary(l.name, "weight", wname, am.numel(), float(am.max()), med, mx, k, len(r)))
        for _, t in l.act_inputs[:1]:
            st = stats.get(qg.act_owner.get(t, t)) or stats.get(t)
            if st is None or st.channel_absmax.numel() < 2:
                continue
            r, med, mx = _flag(l.name, "activation", st.channel_absmax, st.kurtosis)
            rows += r
            summaries.append(
                TensorSummary(l.name, "activation", t, st.channel_absmax.numel(), st.absmax, med, mx, st.kurtosis, len(r))
            )
    return rows, summaries


def outliers_frame(rows: list[OutlierRow]) -> pd.DataFrame:
    cols = ["layer", "tensor", "channel", "absmax", "ratio", "kurtosis"]
    return pd.DataFrame([r.__dict__ for r in rows], columns=cols)


# --------------------------------------------------------------------------- previews


def _only_metric(wl: Workload, sim: Simulator, plan: SimPlan) -> float:
    return wl.score(sim.outputs(wl.evaluation, plan))


def preview(
    wl: Workload, sim: Simulator, config: Config, layer: Layer, fix: str, stats: dict[str, TensorStats]
) -> float:
    """Metric with only ``layer`` quantized *and* ``fix`` applied to it (simulated)."""
    if fix == "per_channel":
        other = Simulator(sim.qg, stats, _with_weights(sim.scheme, WeightSpec(bits=sim.scheme.weights.bits,
                          symmetric=sim.scheme.weights.symmetric, granularity="per_channel")))  # fmt: skip
        return _only_metric(wl, other, only_plan(other, config, layer))
    if fix == "percentile":
        other = Simulator(sim.qg, stats, sim.scheme)
        spec = ActivationSpec(**{**sim.scheme.act.__dict__, "calibration": "percentile"})
        for _, t in layer.act_inputs:
            owner = sim.qg.act_owner.get(t, t)
            if owner in stats and stats[owner].hist is not None:
                other.overrides[owner] = calibration_range(stats[owner], spec)
        return _only_metric(wl, other, only_plan(other, config, layer))
    raise ValueError(f"no preview for {fix!r}")


def _with_weights(scheme, w: WeightSpec):
    from .scheme import Scheme

    return Scheme(weights=w, activations=scheme.activations)


FIX_LABELS = {"cle": "cross-layer equalization (fixes: [\"cle\"])", "smoothquant": "SmoothQuant (fixes: [\"smoothquant\"])"}


def _with_fix_metric(wl: Workload, config: Config, fix: str, progress: Callable[[str], None] | None) -> float | None:
    """The simulated metric of ``config`` plus ``fix`` (None when the fix is unavailable or fails)."""
    from .quantized import simulate_outputs
    from .errors import QAnalysisError
    from .fixes import FIXES, list_fixes

    list_fixes()
    if fix not in FIXES:
        return None
    if progress:
        progress(f"measuring what {fix} would gain")
    try:
        out, _ = simulate_outputs(wl, Config(scheme=config.scheme, layers=config.layers, fixes=(*config.fixes, fix)), progress or (lambda m: None))
    except QAnalysisError:
        return None
    return wl.score(out)


def quantized_label(sim: Simulator, config: Config, layer: Layer) -> str:
    """What quantizing ``layer`` means under ``config``, as the only-this-layer run does it:
    "int8" for 8-bit weights and activations, otherwise e.g. "W3A8"."""
    w = sim.weight_bits(config, layer) or sim.scheme.weights.bits
    a = sim.scheme.act
    a_bits = a.bits if a is not None else None
    if w == 8 and a_bits == 8:
        return "int8"
    return f"W{w}" + (f"A{a_bits}" if a_bits else "")


def _points(gain: float) -> str:
    """A measured gain as the recommendation prints it: 2 decimals, signed, no "-0.00"."""
    v = round(gain, 2) + 0.0
    return f"{v:+.2f}" if v else "0.00"


def _amount(wl: Workload, value: float, reference: float, *, signed: bool = False) -> str:
    """A drop or gain as a recommendation says it: metric points, or for lower-is-better metrics
    (perplexity) % of the FP32 metric ("1.20 % of FP32 perplexity"), never "points"."""
    if not wl.relative_verdict:
        return f"{_points(value) if signed else format(value, '.2f')} points"
    v = relative(value, reference)
    v = round(v, 2) + 0.0
    name = wl.metric_name.split(" (")[0]
    return f"{(f'{v:+.2f}' if v else '0.00') if signed else format(v, '.2f')} % of FP32 {name}"


# McNemar's exact test cannot reach p < 0.05 with fewer than 6 discordant samples (2·½⁶ = 0.031),
# so a classification gain of fewer than 6 net samples is never beyond the noise of the data.
MIN_SIGNIFICANT_FLIPS = 6


def noise_floor(wl: Workload) -> float:
    """The smallest gain (metric points) a recommendation may claim as measured."""
    if wl.task == "classification" and wl.n_eval:
        return (MIN_SIGNIFICANT_FLIPS - 0.5) * 100.0 / wl.n_eval
    return 0.005


def _helps(gain: float, floor: float = 0.005) -> bool:
    """A remedy helps when its measured gain is beyond the noise floor and positive at the
    precision printed (≥ 0.01 point)."""
    return round(gain, 2) > 0 and gain > floor


def recommend(
    wl: Workload,
    sim: Simulator,
    config: Config,
    sens: SensitivityResult,
    summaries: list[TensorSummary],
    stats: dict[str, TensorStats],
    *,
    max_previews: int = 6,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Fill ``recommendation`` and ``recommendation_gain`` (metric points, measured) per row.

    A previewed layer is recommended the measured remedy with the largest gain, and only when
    that gain is positive; when none is, the text says so with the FP16 measurement and the
    gain stays NaN. A remedy a note suggests is dropped from the note once measured not to help."""
    by_layer: dict[tuple[str, str], TensorSummary] = {(s.layer, s.tensor): s for s in summaries}
    # One flipped sample is noise, not a finding: the threshold is at least 1.5 samples' worth.
    fine = max(FINE_DROP, 150.0 / wl.n_eval) if wl.task == "classification" else FINE_DROP
    ranked = sorted(sens.rows, key=lambda r: -max(r.metric_drop, r.metric_drop_all_but))
    previewed = {r.layer for r in ranked[:max_previews] if max(r.metric_drop, r.metric_drop_all_but) > fine}
    fix_metric: dict[str, float | None] = {}
    floor = noise_floor(wl)
    for r in sens.rows:
        layer = sim.qg.by_name[r.layer]
        act = by_layer.get((r.layer, "activation"))
        wsum = by_layer.get((r.layer, "weight"))
        notes: list[tuple[str, str, str]] = []  # (observation, remedy, key of its measured gain)
        if act and act.n_outliers:
            fix = "smoothquant" if layer.op_type in ("MatMul", "Gemm") else "cle"
            kind = "SmoothQuant" if fix == "smoothquant" else "cross-layer equalization"
            notes.append((f"input has {act.n_outliers} outlier channel(s) up to {act.max_ratio:.0f}× the median",
                          f"{kind} would spread them", FIX_LABELS[fix]))  # fmt: skip
        if wsum and wsum.n_outliers and sim.scheme.weights.granularity == "per_tensor":
            remedy = "per-channel weights"
            notes.append((f"weight has {wsum.n_outliers} outlier channel(s)", remedy, remedy))
        worst = max(r.metric_drop, r.metric_drop_all_but)
        if r.layer not in previewed:
            texts = [f"{obs}: {remedy}" for obs, remedy, _ in notes]
            if worst <= fine:
                r.recommendation = f"{quantized_label(sim, config, layer)} is fine" + (f" ({texts[0]})" if texts else "")
            elif texts:
                r.recommendation = "; ".join(texts)
            elif worst < 1.0:
                r.recommendation = f"small effect ({_amount(wl, worst, sens.fp32_metric)})"
            else:
                r.recommendation = f"costs {_amount(wl, worst, sens.fp32_metric)}; fixes not previewed for this layer"
            continue
        if progress:
            progress(f"previewing fixes for {r.layer}")
        gains: dict[str, float] = {"keep in FP16": r.metric_drop_all_but}
        if act and act.n_outliers:  # the equalizing fix, measured on the whole model
            fix = "smoothquant" if layer.op_type in ("MatMul", "Gemm") else "cle"
            if fix not in config.fixes:
                if fix not in fix_metric:
                    fix_metric[fix] = _with_fix_metric(wl, config, fix, progress)
                if fix_metric[fix] is not None:
                    gains[FIX_LABELS[fix]] = wl.drop(fix_metric[fix], sens.int8_metric)  # how much worse without it
        if sim.scheme.weights.granularity == "per_tensor" and layer.weights:
            gains["per-channel weights"] = wl.drop(preview(wl, sim, config, layer, "per_channel", stats), r.metric_only)
        if layer.act_inputs and not sim.scheme.act.dynamic:
            gains["percentile clipping of its input"] = wl.drop(preview(wl, sim, config, layer, "percentile", stats), r.metric_only)
        best = max(gains, key=lambda k: gains[k])
        if _helps(gains[best], floor):
            r.recommendation_gain = gains[best]
            text = f"{best} (+{_amount(wl, gains[best], sens.fp32_metric)} measured)"
        else:
            r.recommendation_gain = float("nan")
            others = [g for k, g in gains.items() if k != "keep in FP16"]
            text = f"no measured fix helps (FP16 {_amount(wl, gains['keep in FP16'], sens.fp32_metric, signed=True)}"
            if others:
                best_other = max(others)
                text += f", other measured fixes at most {_amount(wl, best_other, sens.fp32_metric, signed=True) if wl.relative_verdict else _points(best_other)}"
            if _helps(gains[best]) and wl.task == "classification":  # a gain, but within the noise
                text += (f"; gains under {MIN_SIGNIFICANT_FLIPS} samples ({floor:.2f} points at {wl.n_eval} samples, "
                         f"one sample = {100.0 / wl.n_eval:.2f}) are noise")  # fmt: skip
            text += ")"
        texts = [obs if key in gains and not _helps(gains[key], floor) else f"{obs}: {remedy}" for obs, remedy, key in notes]
        if texts:
            text += "; " + "; ".join(texts)
        r.recommendation = text


# --------------------------------------------------------------------------- distributions


@dataclass
class Distribution:
    """A tensor's histogram with its quantization grid: what the Distributions page draws."""

    layer: str
    tensor: str  # "weight" | "activation"
    name: str
    centers: list[float]
    counts: list[float]
    rmin: float | None  # clipping bounds of the quantizer (per-tensor; None when per-channel)
    rmax: float | None
    grid: list[float]  # representable values inside the range (per-tensor only)
    channel_absmax: list[float]
    flagged: list[int]
    note: str = ""


def distribution(sim: Simulator, stats: dict[str, TensorStats], layer_name: str, tensor: str, bins: int = 128) -> Distribution:
    from .errors import ConfigError

    layer = sim.qg.layer(layer_name)
    if tensor == "weight":
        if not layer.weights:
            raise ConfigError(f"layer {layer_name!r} has no weights")
        wname = layer.weights[0][1]
        w = sim._float_weight(wname)
        lo, hi = float(w.min()), float(w.max())
        h = torch.histc(w.reshape(-1), bins=bins, min=lo, max=hi if hi > lo else lo + 1e-12)
        edges = torch.linspace(lo, hi, bins + 1)
        am = weight_channel_absmax(w, sim.qg.weight_axis.get(wname))
        qp = sim.weight_qparams(wname, sim.scheme.weights.bits)
        rmin = rmax = None
        grid: list[float] = []
        note = f"{sim.scheme.weights.bits}-bit weights, {sim.scheme.weights.granularity}"
        if qp.scale.numel() == 1:
            s, z = float(qp.scale), int(qp.zero_point)
            rmin, rmax = (qp.qrange.qmin - z) * s, (qp.qrange.qmax - z) * s
            grid = [(q - z) * s for q in range(qp.qrange.qmin, qp.qrange.qmax + 1)]
        name = wname
    else:
        if not layer.act_inputs:
            raise ConfigError(f"layer {layer_name!r} has no quantized input activation")
        t = layer.act_inputs[0][1]
        st = stats.get(sim.qg.act_owner.get(t, t))
        if st is None or st.hist is None:
            raise ConfigError(f"no calibration statistics for {t!r}")
        step = max(1, len(st.hist) // bins)
        counts = st.hist.reshape(-1, step).sum(1) if len(st.hist) % step == 0 else st.hist
        edges = torch.linspace(st.min, st.max, len(counts) + 1)
        h = counts
        am = st.channel_absmax
        qp = sim.act_qparams(t)
        s, z = float(qp.scale), int(qp.zero_point)
        rmin, rmax = (qp.qrange.qmin - z) * s, (qp.qrange.qmax - z) * s
        grid = [(q - z) * s for q in range(qp.qrange.qmin, qp.qrange.qmax + 1)]
        note = f"{sim.scheme.act.bits}-bit, {sim.scheme.act.calibration} calibration, scale {s:.4g}, zero point {z}"
        name = t
    _, med, _ = _flag(layer_name, tensor, am, 0.0) if am.numel() > 1 else ([], 0.0, 0.0)
    flagged = [int(i) for i in torch.nonzero(am / med >= OUTLIER_RATIO).reshape(-1).tolist()] if med else []
    centers = ((edges[:-1] + edges[1:]) / 2).tolist()
    return Distribution(layer_name, tensor, name, centers, [float(c) for c in h.tolist()], rmin, rmax, grid,
                        [float(v) for v in am.tolist()], flagged, note)  # fmt: skip
