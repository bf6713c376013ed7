"""Plotly figures from result tables (DataFrames): shared by the HTML report and the dashboard.

Figures take frames, never tensors, so pages can call them directly.
"""

from __future__ import annotations

import math
from typing import Literal

import pandas as pd
import plotly.graph_objects as go

from .graphview import MEASURES

_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=40), height=420)
_LAYER_AXIS = dict(title="layer (execution order)", automargin=True, tickangle=-45)

# Readable names of the result columns, shared by the dashboard's tables and report.html.
COLUMN_LABELS = {
    "layer": "layer", "op_type": "op", "params": "params",
    "weight_sqnr_db": "weight SQNR (dB)", "act_sqnr_db": "act SQNR (dB)", "output_sqnr_db": "output SQNR (dB)",
    "e2e_sqnr_db": "model-output SQNR (dB)", "depth_sqnr_db": "SQNR in full INT8 (dB)", "e2e_kl": "model-output KL",
    "e2e_cosine": "model-output cosine", "metric_drop": "drop, only this layer",
    "metric_drop_ci_low": "drop 95% CI low", "metric_drop_ci_high": "drop 95% CI high",
    "metric_drop_all_but": "recovered in float", "recommendation": "recommendation",
    "recommendation_gain": "measured gain", "metric_only": "metric, only this layer",
    "metric_all_but": "metric, all but this", "act_clipping": "act clipping", "weight_mse": "weight MSE",
    "act_mse": "act MSE", "tensor": "tensor", "channel": "channel", "absmax": "absmax",
    "median_channel_absmax": "median channel absmax", "ratio": "ratio to median", "max_ratio": "max ratio",
    "kurtosis": "kurtosis", "channels": "channels", "n_outliers": "outlier channels", "class": "class", "n": "samples",
    "fp32_accuracy": "FP32 acc.", "int8_accuracy": "INT8 acc.", "delta": "Δ (points)",
}  # fmt: skip


def sensitivity_bars(layers: pd.DataFrame, unit: str = "metric points") -> go.Figure:
    """Metric drop with only this layer quantized, and recovered by keeping only it in float;
    ``unit``: what a drop is in (a lower-is-better metric's rise: "perplexity increase")."""
    fig = go.Figure()
    fig.add_bar(x=layers["layer"], y=layers["metric_drop"], name="drop, only this layer quantized")
    fig.add_bar(x=layers["layer"], y=layers["metric_drop_all_but"], name="recovered by keeping it in float")
    fig.update_layout(title=f"Per-layer sensitivity ({unit})", barmode="group", xaxis=_LAYER_AXIS,
                      yaxis_title=unit, legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"),
                      **_LAYOUT)  # fmt: skip
    return fig


def sqnr_lines(layers: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for col, label in [("weight_sqnr_db", "weights"), ("act_sqnr_db", "input activation"),
                       ("output_sqnr_db", "layer output"), ("e2e_sqnr_db", "model output (end to end)")]:  # fmt: skip
        fig.add_scatter(x=layers["layer"], y=layers[col], mode="lines+markers", name=label)
    fig.update_layout(title="SQNR per layer, only that layer quantized (dB, higher is better)",
                      yaxis_title="SQNR (dB)", xaxis=_LAYER_AXIS, **_LAYOUT)  # fmt: skip
    return fig


def depth_growth(depth: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Scatter(x=depth["layer"], y=depth["sqnr_db"], mode="lines+markers", name="SQNR"))
    fig.update_layout(title="Error growth through depth: each layer's output in the fully quantized model vs FP32",
                      yaxis_title="SQNR (dB)", xaxis=_LAYER_AXIS, **_LAYOUT)  # fmt: skip
    return fig


def proxy_scatter(layers: pd.DataFrame, proxy: str = "output_sqnr_db", label: str | None = None) -> go.Figure:
    label = label or COLUMN_LABELS.get(proxy, proxy)
    fig = go.Figure(
        go.Scatter(x=layers[proxy], y=layers["metric_drop"], mode="markers", text=layers["layer"],
                   hovertemplate="%{text}<br>" + label + " %{x:.2f}<br>drop %{y:.3f}<extra></extra>")  # fmt: skip
    )
    fig.update_layout(title=f"Proxy vs truth: {label} against the end-to-end metric drop",
                      xaxis_title=label, yaxis_title="metric drop (only this layer)", **{**_LAYOUT, "margin": dict(l=60, r=20, t=50, b=60)})  # fmt: skip
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


def channel_ranges(absmax: list[float], flagged: list[int], title: str = "", selected: int | None = None) -> go.Figure:
    """Per-channel absmax bars: outlier channels in red, the ``selected`` channel in black."""
    colors = ["#111111" if i == selected else "#d62728" if i in set(flagged) else "#1f77b4" for i in range(len(absmax))]
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


# --------------------------------------------------------------------------- mixed-precision search
# Pareto figures of a search: metric against latency or size, every evaluated config hoverable,
# the front connected, the chosen config and the user's own selection marked. Built from
# ``SearchResult.frame()``.

Axis = Literal["latency", "size"]

FRONT = "#1f77b4"
CHOSEN = "#d62728"
CURRENT = "#2ca02c"
OTHER = "#9aa5b1"
MAX_NAMES = 4


def layers_label(joined: str, sep: str = "<br>") -> str:
    """``"a;b;c"`` → the layers kept in float, one per line (at most MAX_NAMES, then "+k more")."""
    names = [n for n in str(joined or "").split(";") if n]
    if not names:
        return "none (all INT8)"
    shown = names[:MAX_NAMES] + (
        [f"+{len(names) - MAX_NAMES} more"] if len(names) > MAX_NAMES else []
    )
    return sep.join(shown)


def layer_set(joined: str) -> frozenset[str]:
    return frozenset(n for n in str(joined or "").split(";") if n)


def _size_unit(max_bytes: float) -> tuple[float, str]:
    if max_bytes >= 2e6:
        return 1e6, "MB"
    return 1e3, "KB"


def size_vs_metric(df: pd.DataFrame, *, metric_name: str, higher_is_better: bool = True) -> go.Figure:
    """Each format's engine: file size against its metric (``Comparison.to_frame()``); the
    simulated metric beside it, and the FP32 engine as the reference line."""
    d = df[df["engine_size_bytes"].notna()].copy()
    scale, unit = _size_unit(float(d["engine_size_bytes"].max()) if len(d) else 0.0)
    d["_x"] = d["engine_size_bytes"].astype(float) / scale
    fig = go.Figure()
    fig.add_scatter(x=d["_x"], y=d["engine_metric"], mode="markers+text", text=d["config"], textposition="top center",
                    name="engine", marker=dict(size=11),
                    hovertemplate="<b>%{text}</b><br>" + f"%{{x:.1f}} {unit}<br>{metric_name} %{{y:.3f}}<extra>engine</extra>")  # fmt: skip
    fig.add_scatter(x=d["_x"], y=d["simulated_metric"], mode="markers", name="simulated", text=d["config"],
                    marker=dict(symbol="x", size=9),
                    hovertemplate="<b>%{text}</b><br>" + f"{metric_name} %{{y:.3f}}<extra>simulated</extra>")  # fmt: skip
    fp = d[d["config"] == "FP32"]
    if len(fp):
        fig.add_hline(y=float(fp["engine_metric"].iloc[0]), line_dash="dot", annotation_text="FP32")
    better = "higher" if higher_is_better else "lower"
    fig.update_layout(title=f"Engine size vs {metric_name} ({better} is better)", xaxis_title=f"engine file ({unit})",
                      yaxis_title=metric_name, **_LAYOUT)  # fmt: skip
    return fig


def pareto_figure(
    df: pd.DataFrame,
    axis: Axis,
    *,
    metric_name: str,
    fp32_metric: float,
    max_drop: float,
    higher_is_better: bool = True,
    current: frozenset[str] | None = None,
    measured_latency_ms: float | None = None,
) -> go.Figure:
    """``df`` is ``SearchResult.frame()``; ``current`` the user's FP16 selection (marked if evaluated)."""
    if axis == "latency":
        x = df["latency_ms"].astype(float)
        title, x_title, cost_fmt = (
            "Metric vs latency",
            "latency, batch 1 (ms): measured where the engine was built, else predicted",
            "%{x:.3f} ms",
        )
        front_col = "pareto_latency"
    else:
        scale, unit = _size_unit(float(df["size_bytes"].max()))
        x = df["size_bytes"].astype(float) / scale
        title, x_title, cost_fmt = "Metric vs size", f"engine size ({unit})", f"%{{x:.1f}} {unit}"
        front_col = "pareto_size"
    d = df.assign(_x=x, _label=df["float_layers"].map(layers_label))
    custom = ["config_id", "_label", "drop", "n_float_layers", "phase"]
    hover = (
        "<b>config %{customdata[0]}</b> (%{customdata[4]})<br>"
        "float layers (%{customdata[3]}):<br>%{customdata[1]}<br>"
        f"{metric_name} %{{y:.2f}}, drop %{{customdata[2]:.2f}}<br>"
        f"cost {cost_fmt}<extra></extra>"
    )

    fig = go.Figure()
    others = d[~d[front_col]]
    if len(others):
        fig.add_scatter(
            x=others["_x"],
            y=others["metric"],
            customdata=others[custom].to_numpy(),
            mode="markers",
            name="evaluated",
            marker={"color": OTHER, "size": 9, "line": {"width": 1, "color": "white"}},
            hovertemplate=hover,
        )
    front = d[d[front_col]].sort_values("_x")
    fig.add_scatter(
        x=front["_x"],
        y=front["metric"],
        customdata=front[custom].to_numpy(),
        mode="lines+markers",
        name="Pareto front",
        line={"color": FRONT, "width": 2, "shape": "hv"},
        marker={"color": FRONT, "size": 10},
        hovertemplate=hover,
    )
    chosen = d[d["chosen"]]
    if len(chosen):
        fig.add_scatter(
            x=chosen["_x"],
            y=chosen["metric"],
            customdata=chosen[custom].to_numpy(),
            mode="markers",
            name="chosen",
            marker={
                "color": CHOSEN,
                "size": 20,
                "symbol": "star",
                "line": {"width": 1, "color": "white"},
            },
            hovertemplate=hover,
        )
        if axis == "latency" and measured_latency_ms is not None:
            fig.add_scatter(
                x=[measured_latency_ms],
                y=chosen["metric"].iloc[:1],
                mode="markers",
                name="chosen, measured",
                marker={"color": CHOSEN, "size": 12, "symbol": "x-thin-open", "line": {"width": 2}},
                hovertemplate="chosen config's engine, measured: %{x:.3f} ms<extra></extra>",
            )
    if current is not None:
        mine = d[d["float_layers"].map(layer_set) == current]
        if len(mine):
            fig.add_scatter(
                x=mine["_x"].iloc[:1],
                y=mine["metric"].iloc[:1],
                customdata=mine[custom].to_numpy()[:1],
                mode="markers",
                name="your selection",
                marker={
                    "color": "rgba(0,0,0,0)",
                    "size": 26,
                    "symbol": "circle",
                    "line": {"width": 2.5, "color": CURRENT},
                },
                hovertemplate=hover,
            )
    fig.add_hline(
        y=fp32_metric,
        line={"color": "#555", "width": 1, "dash": "dot"},
        annotation_text="FP32",
        annotation_position="top left",
    )
    fig.add_hline(
        y=fp32_metric - max_drop if higher_is_better else fp32_metric + max_drop,  # a drop is a rise of perplexity
        line={"color": CHOSEN, "width": 1, "dash": "dash"},
        annotation_text=f"budget: drop ≤ {max_drop:g}",
        annotation_position="bottom left",
    )
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=metric_name,
        template="plotly_white",
        height=420,
        margin={"l": 60, "r": 20, "t": 50, "b": 60},
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
        hoverlabel={"align": "left"},
    )
    return fig


# --------------------------------------------------------------------------- the model as a graph

GRAPH_MEASURES = MEASURES
FLOAT_RING = "#2ca02c"
MAX_LABELS = 70


def graph_figure(units: pd.DataFrame, edges: pd.DataFrame, pos: dict[str, tuple[float, float]], measure: str,
                 *, focus: str | None = None, height: int = 520) -> go.Figure:  # fmt: skip
    """Units (``graphview.collapse``) at ``pos`` (``graphview.layout``), coloured by ``measure``
    (red = worse), module groups as squares, layers kept in float ringed in green, the focused
    unit ringed in black. The node trace is named "nodes"; its ``customdata[0]`` is the unit id."""
    label, worse = GRAPH_MEASURES[measure]
    ex, ey = [], []
    for s, d in zip(edges["src"], edges["dst"]):
        if s in pos and d in pos:
            (x0, y0), (x1, y1) = pos[s], pos[d]
            ex += [x0, x1, None]
            ey += [y0, y1, None]
    fig = go.Figure()
    fig.add_scatter(x=ex, y=ey, mode="lines", line={"color": "#b8c0c8", "width": 1}, hoverinfo="skip", name="data flow")
    u = units.assign(_x=units["unit"].map(lambda k: pos[k][0]), _y=units["unit"].map(lambda k: pos[k][1]))
    vals = u[measure].astype(float)
    finite = vals[vals.map(math.isfinite)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-9
    scale = "RdYlGn_r" if worse == "high" else "RdYlGn"
    symbols = u["kind"].map({"layer": "circle", "module": "square", "io": "diamond"})
    line_color = [FLOAT_RING if n else "white" for n in u["n_float"]]
    line_width = [3.5 if n else 1 for n in u["n_float"]]
    if focus is not None:
        for i, k in enumerate(u["unit"]):
            if k == focus:
                line_color[i], line_width[i] = "black", 3.5
    size = [12 if k == "io" else (22 if k == "module" else 16) for k in u["kind"]]
    colors = [v if math.isfinite(v) else None for v in vals]
    text = u["label"].map(lambda s: s if len(s) <= 18 else "…" + s[-17:]) if len(u) <= MAX_LABELS else None
    custom = u[["unit", "kind", "op_type", "n_layers", "n_float"]].assign(_v=vals.map(lambda v: f"{v:.3g}" if math.isfinite(v) else "n/a"))
    fig.add_scatter(
        x=u["_x"], y=u["_y"], mode="markers+text" if text is not None else "markers", name="nodes",
        text=text, textposition="top center", textfont={"size": 10},
        customdata=custom.to_numpy(), selected={"marker": {"opacity": 1}}, unselected={"marker": {"opacity": 1}},
        marker={"symbol": symbols, "size": size, "color": [c if c is not None else lo for c in colors],
                "colorscale": scale, "cmin": lo, "cmax": hi, "showscale": True,
                "colorbar": {"title": {"text": label, "side": "right"}, "thickness": 12},
                "line": {"color": line_color, "width": line_width}},
        hovertemplate="<b>%{customdata[0]}</b><br>%{customdata[2]} · %{customdata[3]} layer(s), %{customdata[4]} in float"
                      f"<br>{label}: " + "%{customdata[5]}<extra></extra>",
    )  # fmt: skip
    # nodes without the measure (input, output, a layer the analysis could not measure) in grey
    grey = [i for i, c in enumerate(colors) if c is None]
    if grey:
        fig.add_scatter(x=u["_x"].iloc[grey], y=u["_y"].iloc[grey], mode="markers", hoverinfo="skip", name="no measure",
                        marker={"symbol": symbols.iloc[grey], "size": [size[i] for i in grey], "color": "#d0d5da",
                                "line": {"color": [line_color[i] for i in grey], "width": [line_width[i] for i in grey]}})  # fmt: skip
    fig.update_layout(
        template="plotly_white", height=height, showlegend=False, clickmode="event+select", dragmode="pan",
        margin={"l": 10, "r": 10, "t": 30, "b": 10}, title={"text": f"coloured by {label}", "font": {"size": 13}},
        xaxis={"visible": False}, yaxis={"visible": False}, hoverlabel={"align": "left"},
    )  # fmt: skip
    return fig


# --------------------------------------------------------------------------- one channel


def channel_histogram(view, title: str = "") -> go.Figure:
    """A weight channel's histogram with its own clipping bounds and grid (``channels.ChannelView``)."""
    return histogram(view.centers, view.counts, view.rmin, view.rmax, view.grid,
                     title=title or f"{view.layer} · weight channel {view.channel}: its own grid")  # fmt: skip


# --------------------------------------------------------------------------- regression and other tasks


def prediction_scatter(samples: pd.DataFrame, metric_name: str = "") -> go.Figure:
    """Regression: prediction against target for FP32 and INT8, with the y = x line."""
    fig = go.Figure()
    for col, name, color in [("fp32_pred", "FP32", "#1f77b4"), ("int8_pred", "INT8", "#d62728")]:
        fig.add_scatter(x=samples["target"], y=samples[col], mode="markers", name=name, customdata=samples["index"],
                        marker={"color": color, "size": 6, "opacity": 0.6},
                        hovertemplate="sample %{customdata}<br>target %{x:.3g}<br>" + name + " %{y:.3g}<extra></extra>")  # fmt: skip
    lo = float(min(samples["target"].min(), samples["fp32_pred"].min(), samples["int8_pred"].min()))
    hi = float(max(samples["target"].max(), samples["fp32_pred"].max(), samples["int8_pred"].max()))
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="prediction = target", line={"color": "#888", "dash": "dot"})
    fig.update_layout(title="Predictions against targets", xaxis_title="target", yaxis_title="prediction",
                      legend={"orientation": "h", "y": -0.2}, **{**_LAYOUT, "margin": dict(l=60, r=20, t=50, b=60)})  # fmt: skip
    return fig


def error_histogram(samples: pd.DataFrame) -> go.Figure:
    """Regression: the residual distributions of FP32 and INT8, overlaid."""
    fig = go.Figure()
    for col, name, color in [("fp32_residual", "FP32", "#1f77b4"), ("int8_residual", "INT8", "#d62728")]:
        fig.add_histogram(x=samples[col], name=name, opacity=0.55, marker_color=color, nbinsx=40)
    fig.update_layout(title="Error distribution: residual = prediction − target", barmode="overlay",
                      xaxis_title="residual", yaxis_title="samples", legend={"orientation": "h", "y": -0.2},
                      **{**_LAYOUT, "margin": dict(l=60, r=20, t=50, b=60)})  # fmt: skip
    return fig


def sample_errors(samples: pd.DataFrame, metric_name: str = "metric") -> go.Figure:
    """Other tasks: each sample's INT8-vs-FP32 output error, worst first, coloured by the metric
    it recovers when restored to FP32 (grey where that was not computed)."""
    d = samples.sort_values("output_rel_error", ascending=False).reset_index(drop=True)
    restored = d["metric_restored"]
    known = restored.notna()
    fig = go.Figure()
    fig.add_bar(x=list(range(len(d))), y=d["output_rel_error"], customdata=d[["index", "metric_restored"]].to_numpy(),
                marker={"color": [float(v) if k else 0.0 for v, k in zip(restored, known)], "colorscale": "Reds",
                        "cmin": 0.0, "showscale": bool(known.any()),
                        "colorbar": {"title": {"text": f"{metric_name} restored", "side": "right"}, "thickness": 12},
                        "line": {"width": 0}},
                hovertemplate="sample %{customdata[0]}<br>output error %{y:.3g}<br>"
                              f"{metric_name} restored " + "%{customdata[1]:.3g}<extra></extra>")  # fmt: skip
    fig.update_layout(title="Per-sample output error, INT8 vs FP32 (worst first)", xaxis_title="samples, worst first",
                      yaxis_title="‖INT8 − FP32‖ / ‖FP32‖", bargap=0,
                      **{**_LAYOUT, "margin": dict(l=60, r=20, t=50, b=60)})  # fmt: skip
    return fig
