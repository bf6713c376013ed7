"""Distributions: a tensor's histogram against its quantization grid, per-channel ranges, outliers."""

from __future__ import annotations

import streamlit as st

from pages._core import (
    channel,
    current_analysis,
    frames,
    tensor_distribution,
)
from pages._state import (
    FOCUS_LAYER,
    analysis_key,
)
from pages._widgets import (
    page_header,
    ranked_layers,
    table,
)
from qanalysis import figures
from qanalysis.errors import QAnalysisError

a = current_analysis()
key = analysis_key()
f = frames(key, a)
layers, tensors, outliers = f["layers"], f["tensors"], f["outliers"]
names = layers["layer"].tolist()
page_header("Distributions and outliers", a)

ss = st.session_state
focus = ss.get(FOCUS_LAYER)  # shared with the Layer error page and the graph
if focus not in names:  # open on the most sensitive layer, as the Layer error page does
    focus = ranked_layers(layers)["layer"].iloc[0]
ss["w_dist_layer"] = focus


def _focus() -> None:
    ss[FOCUS_LAYER] = ss["w_dist_layer"]
    ss.pop("w_dist_tensor", None)
    ss.pop("w_dist_channel", None)


c1, c2 = st.columns([3, 2])
name = c1.selectbox("Layer", names, key="w_dist_layer", on_change=_focus)
ss[FOCUS_LAYER] = name
has = set(tensors.loc[tensors["layer"] == name, "tensor"])
options = [t for t in ("weight", "activation") if t in has] or ["weight", "activation"]
if st.session_state.get("w_dist_tensor") not in options:  # the tensor with outliers first
    counts = tensors[tensors["layer"] == name].set_index("tensor")["n_outliers"]
    st.session_state["w_dist_tensor"] = max(options, key=lambda t: counts.get(t, 0))
tensor = c2.radio(
    "Tensor",
    options,
    key="w_dist_tensor",
    on_change=lambda: ss.pop("w_dist_channel", None),
    horizontal=True,
    format_func=lambda t: "weight" if t == "weight" else "input activation",
)

row = layers.set_index("layer").loc[name]
# The core's text carries the measured gain ("+x points measured") when a fix was previewed.
st.info(f"**{name}:** {row['recommendation']}", icon=":material/lightbulb:")

try:
    d = tensor_distribution(key, name, tensor, a)
except QAnalysisError as e:
    st.info(str(e))
    st.stop()

summ = tensors[(tensors["layer"] == name) & (tensors["tensor"] == tensor)]
if len(summ):
    r = summ.iloc[0]
    c = st.columns(5)
    c[0].metric("Channels", f"{int(r['channels'])}", border=True)
    c[1].metric("absmax", f"{r['absmax']:.4g}", border=True)
    c[2].metric(
        "Max ratio",
        f"{r['max_ratio']:.1f}×",
        border=True,
        help="a channel at ≥ 8× the median channel absmax is an outlier",
    )
    c[3].metric(
        "Kurtosis", f"{r['kurtosis']:.2f}", border=True, help="excess kurtosis; 0 for a Gaussian"
    )
    c[4].metric("Outlier channels", f"{int(r['n_outliers'])}", border=True)

left, right = st.columns(2)
with left:
    st.plotly_chart(
        figures.histogram(
            d.centers,
            d.counts,
            d.rmin,
            d.rmax,
            d.grid,
            title=f"{name} · {tensor}: histogram and quantization grid",
        ),
        key="histogram_chart",
    )
    grid_note = (
        f"clipping range [{d.rmin:.4g}, {d.rmax:.4g}], {len(d.grid)} levels"
        if d.rmin is not None
        else "per-channel scales: each channel has its own range (see the channel ranges)"
    )
    st.caption(f"Tensor `{d.name}` · {d.note}; {grid_note}.")
n_channels = len(d.channel_absmax)
if ss.get("w_dist_channel") is None or not 0 <= ss["w_dist_channel"] < max(n_channels, 1):
    # open on the tensor's most extreme channel
    ss["w_dist_channel"] = max(range(n_channels), key=lambda i: d.channel_absmax[i]) if n_channels else 0
with right:
    flagged = f"{len(d.flagged)} outlier channel(s) in red" if d.flagged else "no outlier channels"
    st.plotly_chart(
        figures.channel_ranges(
            d.channel_absmax,
            d.flagged,
            title=f"Per-channel absmax ({flagged}; the picked channel black)",
            selected=ss["w_dist_channel"],
        ),
        key="channels_chart",
    )

st.subheader("One channel, with its own grid")
st.caption(
    "Per-channel scales give every output channel its own grid and clipping bounds: here is one channel's "
    "histogram against them. Pick a channel, or click a row of the outlier table below."
)
if n_channels:
    cc1, cc2 = st.columns([1, 4], vertical_alignment="bottom")
    ch = cc1.number_input(
        "Channel", min_value=0, max_value=n_channels - 1, step=1, key="w_dist_channel"
    )
    try:
        cv = channel(key, name, tensor, int(ch), a)
    except QAnalysisError as e:
        cc2.info(str(e))
    else:
        mc = st.columns(4)
        mc[0].metric("Channel absmax", f"{cv.absmax:.4g}", border=True)
        bounds = "n/a" if cv.rmin is None else f"[{cv.rmin:.3g}, {cv.rmax:.3g}]"
        mc[1].metric("Clipping bounds", bounds, border=True, help=cv.note)
        mc[2].metric("Scale", "n/a" if cv.scale is None else f"{cv.scale:.3g}", border=True,
                     help=None if cv.zero_point is None else f"zero point {cv.zero_point}")  # fmt: skip
        if cv.sqnr_db is not None:
            mc[3].metric("Channel SQNR", f"{cv.sqnr_db:.1f} dB", border=True,
                         help="this channel's weights after fake quantization vs FP32")  # fmt: skip
        elif cv.rmax:
            used = cv.absmax / max(abs(cv.rmin or 0.0), abs(cv.rmax))
            mc[3].metric("Share of the range used", f"{used:.1%}", border=True,
                         help="this channel's absmax over the tensor's clipping bound: a small share means "
                         "few grid steps for this channel")  # fmt: skip
        if cv.counts:
            st.plotly_chart(figures.channel_histogram(cv), key="channel_chart")
        st.caption(f"`{cv.name}` channel {cv.channel} of {cv.n_channels} · {cv.note}.")

st.subheader("Outlier channels, all layers")


def _pick_outlier() -> None:
    rows = ss["outliers_table"].selection.rows
    if rows:
        r = outliers.iloc[rows[0]]
        ss[FOCUS_LAYER] = str(r["layer"])
        ss["w_dist_tensor"] = str(r["tensor"])
        ss["w_dist_channel"] = int(r["channel"])


if outliers.empty:
    st.caption("No channel reaches 8× its tensor's median channel absmax.")
else:
    st.caption("Click a row to see that channel against its grid.")
    table(outliers, "outliers", height=240, key="outliers_table", on_select=_pick_outlier,
          selection_mode="single-row")  # fmt: skip
with st.expander("Tensor statistics, all layers"):
    table(tensors, "tensors")
