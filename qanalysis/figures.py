"""Plotly figures from result tables (DataFrames): shared by the HTML report and the dashboard.

Figures take frames, never tensors, so pages can call them directly.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=120), height=420)


def sensitivity_bars(layers: pd.DataFrame) -> go.Figure:
    """Metric drop with only this layer quantized, and recovered by keeping only it in float."""
    fig = go.Figure()
    fig.add_bar(x=layers["layer"], y=layers["metric_drop"], name="drop, only this layer quantized")
    fig.add_bar(x=layers["layer"], y=layers["metric_drop_all_but"], name="recovered by keeping it in float")
    fig.update_layout(title="Per-layer sensitivity (metric points)", barmode="group", xaxis_title="layer (execution order)",
                      yaxis_title="metric points", **_LAYOUT)  # fmt: skip
    return fig


def sqnr_lines(layers: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for col, label in [("weight_sqnr_db", "weights"), ("act_sqnr_db", "input activation"),
                       ("output_sqnr_db", "layer output"), ("e2e_sqnr_db", "model output (end to end)")]:  # fmt: skip
        fig.add_scatter(x=layers["layer"], y=layers[col], mode="lines+markers", name=label)
    fig.update_layout(title="SQNR per layer, only that layer quantized (dB, higher is better)",
                      yaxis_title="SQNR (dB)", **_LAYOUT)  # fmt: skip
    return fig


def depth_growth(depth: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Scatter(x=depth["layer"], y=depth["sqnr_db"], mode="lines+markers", name="SQNR"))
    fig.update_layout(title="Error growth through depth: each layer's output in the fully quantized model vs FP32",
                      yaxis_title="SQNR (dB)", **_LAYOUT)  # fmt: skip
    return fig


def proxy_scatter(layers: pd.DataFrame, proxy: str = "output_sqnr_db") -> go.Figure:
    fig = go.Figure(
        go.Scatter(x=layers[proxy], y=layers["metric_drop"], mode="markers", text=layers["layer"],
                   hovertemplate="%{text}<br>proxy %{x:.2f}<br>drop %{y:.3f}<extra></extra>")  # fmt: skip
    )
    fig.update_layout(title=f"Proxy vs truth: {proxy} against the end-to-end metric drop",
                      xaxis_title=proxy, yaxis_title="metric drop (only this layer)", **{**_LAYOUT, "margin": dict(l=60, r=20, t=50, b=60)})  # fmt: skip
    return fig


def per_class_bars(per_class: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Bar(x=per_class["class"].astype(str), y=per_class["delta"],
                           marker_color=["#d62728" if d < 0 else "#2ca02c" for d in per_class["delta"]]))  # fmt: skip
    fig.update_layout(title="Who pays for the drop: INT8 − FP32 accuracy per class (points)",
                      xaxis_title="class", yaxis_title="Δ accuracy", **{**_LAYOUT, "margin": dict(l=60, r=20, t=50, b=60)})  # fmt: skip
    return fig


def histogram(centers: list[float], counts: list[float], rmin: float | None, rmax: float | None,
              grid: list[float] | None = None, title: str = "") -> go.Figure:  # fmt: skip
    """A distribution with the clipping bounds and (when not too dense) the quantization grid."""
    fig = go.Figure(go.Bar(x=centers, y=counts, name="count", marker_line_width=0))
    if grid and len(grid) <= 64:
        for g in grid:
            fig.add_vline(x=g, line_width=0.5, line_color="rgba(0,0,0,0.25)")
    for v, label in [(rmin, "rmin"), (rmax, "rmax")]:
        if v is not None:
            fig.add_vline(x=v, line_color="#d62728", line_dash="dash", annotation_text=label)
    fig.update_layout(title=title, yaxis_type="log", bargap=0, xaxis_title="value", yaxis_title="count (log)",
                      **{**_LAYOUT, "margin": dict(l=60, r=20, t=50, b=60)})  # fmt: skip
    return fig


def channel_ranges(absmax: list[float], flagged: list[int], title: str = "") -> go.Figure:
    colors = ["#d62728" if i in set(flagged) else "#1f77b4" for i in range(len(absmax))]
    fig = go.Figure(go.Bar(x=list(range(len(absmax))), y=absmax, marker_color=colors))
    fig.update_layout(title=title or "Per-channel absmax (outliers in red)", xaxis_title="channel", yaxis_title="absmax",
                      **{**_LAYOUT, "margin": dict(l=60, r=20, t=50, b=60)})  # fmt: skip
    return fig


def experiment_bars(agg: pd.DataFrame, model: str) -> go.Figure:
    """One model of an experiment: the metric of each (scheme, calibration, fixes) as mean ± std
    over seeds, beside the FP32 metric (the research plan's FP32 vs PTQ vs QAT comparison)."""
    d = agg[agg["model"] == model]
    fig = go.Figure()
    fp32 = float(d["fp32_metric"].iloc[0])
    for fixes, g in d.groupby("fixes", sort=False):
        labels = g["scheme"] + " · " + g["calibration"]
        fig.add_bar(x=labels, y=g["metric_mean"], name=str(fixes),
                    error_y=dict(type="data", array=g["metric_std"], visible=True))  # fmt: skip
    fig.add_hline(y=fp32, line_dash="dash", annotation_text=f"FP32 {fp32:.2f}")
    lo = min(float((d["metric_mean"] - d["metric_std"]).min()), fp32)
    hi = max(float((d["metric_mean"] + d["metric_std"]).max()), fp32)
    pad = max((hi - lo) * 0.15, 0.5)
    fig.update_layout(title=f"{model}: metric by scheme and calibration (mean ± std over seeds)", barmode="group",
                      xaxis_title="scheme · calibration", yaxis_title="metric", yaxis_range=[lo - pad, hi + pad],
                      legend_title="fixes", **_LAYOUT)  # fmt: skip
    return fig
