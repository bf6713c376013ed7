"""Pareto figures of a mixed-precision search: metric against latency or size, every
evaluated config hoverable, the front connected, the chosen config and the user's own
selection marked. Built from ``SearchResult.frame()`` (a DataFrame), never from tensors."""

from __future__ import annotations

from typing import Literal

import pandas as pd
import plotly.graph_objects as go

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
            "Metric vs predicted latency",
            "predicted latency, batch 1 (ms)",
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
