"""Distributions: a tensor's histogram against its quantization grid, per-channel ranges, outliers."""

from __future__ import annotations

import streamlit as st

from pages._core import (
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

focus = st.session_state.get(FOCUS_LAYER)
if focus not in names:  # open on the most sensitive layer, as the Layer error page does
    focus = ranked_layers(layers)["layer"].iloc[0]
if st.session_state.get("w_dist_layer") not in names:
    st.session_state["w_dist_layer"] = focus
c1, c2 = st.columns([3, 2])
name = c1.selectbox("Layer", names, key="w_dist_layer")
st.session_state[FOCUS_LAYER] = name
has = set(tensors.loc[tensors["layer"] == name, "tensor"])
options = [t for t in ("weight", "activation") if t in has] or ["weight", "activation"]
if st.session_state.get("w_dist_tensor") not in options:  # the tensor with outliers first
    counts = tensors[tensors["layer"] == name].set_index("tensor")["n_outliers"]
    st.session_state["w_dist_tensor"] = max(options, key=lambda t: counts.get(t, 0))
tensor = c2.radio(
    "Tensor",
    options,
    key="w_dist_tensor",
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
with right:
    flagged = f"{len(d.flagged)} outlier channel(s) in red" if d.flagged else "no outlier channels"
    st.plotly_chart(
        figures.channel_ranges(
            d.channel_absmax, d.flagged, title=f"Per-channel absmax ({flagged})"
        ),
        key="channels_chart",
    )

st.subheader("Outlier channels, all layers")
if outliers.empty:
    st.caption("No channel reaches 8× its tensor's median channel absmax.")
else:
    table(outliers, "outliers", height=240)
with st.expander("Tensor statistics, all layers"):
    table(tensors, "tensors")
