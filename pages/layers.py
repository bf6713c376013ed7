"""Layer error: which layer breaks it, how the error grows through depth, how good the proxies are."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from pages._core import (
    current_analysis,
    frames,
)
from pages._state import (
    FLOAT_LAYERS,
    FOCUS_LAYER,
    analysis_key,
)
from pages._widgets import (
    page_header,
    ranked_layers,
    table,
)
from qanalysis import figures

PROXIES = {
    "output_sqnr_db": "layer-output SQNR",
    "act_sqnr_db": "input-activation SQNR",
    "weight_sqnr_db": "weight SQNR",
    "e2e_sqnr_db": "model-output SQNR",
    "e2e_kl": "model-output KL",
}

a = current_analysis()
key = analysis_key()
layers = frames(key, a)["layers"]
names = layers["layer"].tolist()
page_header("Layer error", a)
st.caption(
    "Each layer quantized alone (its weights and input activations, as ONNX Runtime quantizes them) "
    "against FP32, and the fully quantized model with only that layer kept in float."
)

tabs = st.tabs(["Sensitivity", "SQNR", "Error through depth", "Proxy vs truth"])
with tabs[0]:
    moved = layers[["metric_drop", "metric_drop_all_but"]].abs().max().max()
    if not moved > 1e-9:  # an all-zero bar chart reads as a broken chart
        st.success(
            f"No layer changes the metric: quantizing any one layer alone, or keeping any one layer in float, "
            f"leaves {a.workload.metric_name} unchanged on the {a.workload.n_eval} evaluation samples. "
            "The SQNR and depth tabs show where the (harmless) error is.",
            icon=":material/check_circle:",
        )
    else:
        wl = a.workload
        unit = "metric points" if wl.higher_is_better else f"{wl.metric_name.split(' (')[0]} increase"
        st.plotly_chart(figures.sensitivity_bars(layers, unit), key="sensitivity_chart")
with tabs[1]:
    st.plotly_chart(figures.sqnr_lines(layers), key="sqnr_chart")
    st.caption(
        "A tensor SQNR can look fine while the model breaks: compare with the model-output SQNR and the drop."
    )
with tabs[2]:
    st.plotly_chart(figures.depth_growth(frames(key, a)["depth"]), key="depth_chart")
with tabs[3]:
    left, right = st.columns([3, 2])
    proxy = right.selectbox("Proxy", list(PROXIES), format_func=PROXIES.get, key="w_proxy")
    left.plotly_chart(figures.proxy_scatter(layers, proxy, PROXIES[proxy]), key="proxy_chart")
    corr = a.sens.proxy_correlation  # what summary() reports, without its library-version imports
    rows = [
        {
            "proxy": PROXIES.get(p, p),
            "vs metric drop": corr["vs_metric_drop"].get(p),
            "vs model-output SQNR": corr["vs_e2e_sqnr"].get(p),
        }
        for p in PROXIES
    ]
    with right:
        st.markdown(
            "**Rank correlation with the truth** (Spearman, +1 = ranks layers exactly as measured)"
        )
        shown = pd.DataFrame(rows)
        for col in ("vs metric drop", "vs model-output SQNR"):
            shown[col] = [
                ("n/a" if v is None or not math.isfinite(v) else f"{v:+.2f}") for v in shown[col]
            ]
        table(shown, "proxy_correlation")
        st.caption(
            "n/a: the truth has no variance (e.g. every layer alone costs 0 points) or the proxy is the truth itself."
        )

st.subheader("All layers")
st.caption("Click a row (or pick below) to see a layer's details.")


def _pick_row() -> None:
    rows = st.session_state["layers_table"].selection.rows
    if rows:
        st.session_state["w_layer"] = st.session_state[FOCUS_LAYER] = names[rows[0]]


def _focus() -> None:
    st.session_state[FOCUS_LAYER] = st.session_state["w_layer"]


table(
    layers,
    "layers",
    key="layers_table",
    on_select=_pick_row,
    selection_mode="single-row",
    height=320,
)

st.subheader("Layer details")
focus = st.session_state.get(FOCUS_LAYER)  # shared with the graph and the Distributions page
st.session_state["w_layer"] = focus if focus in names else ranked_layers(layers)["layer"].iloc[0]
name = st.selectbox("Layer", names, key="w_layer", on_change=_focus)
st.session_state[FOCUS_LAYER] = name
row = layers.set_index("layer").loc[name]

c = st.columns(4)
c[0].metric("Drop, only this layer", f"{row['metric_drop']:.3f}", border=True)
c[1].metric("Recovered by keeping it in float", f"{row['metric_drop_all_but']:.3f}", border=True)
c[2].metric("Model-output SQNR", f"{row['e2e_sqnr_db']:.1f} dB", border=True)
c[3].metric("Layer-output SQNR", f"{row['output_sqnr_db']:.1f} dB", border=True)
st.info(f"**Recommendation:** {row['recommendation']}", icon=":material/lightbulb:")

kept = list(st.session_state.get(FLOAT_LAYERS, []))
b1, b2, _ = st.columns([1, 1, 2], vertical_alignment="center")
if name in kept:
    if b1.button("Back to INT8", icon=":material/undo:", key="w_unkeep"):
        st.session_state[FLOAT_LAYERS] = [n for n in kept if n != name]
        st.rerun()
elif b1.button(
    "Keep in FP16",
    icon=":material/add:",
    key="w_keep",
    help="adds the layer to the Mixed precision page's selection",
):
    st.session_state[FLOAT_LAYERS] = kept + [name]
    st.rerun()
b2.page_link("pages/distributions.py", label="Its distributions", icon=":material/bar_chart:")
if name in kept:
    st.caption(f"{name} is kept in FP16 on the Mixed precision page.")

with st.expander("All columns"):
    detail = pd.DataFrame(
        {
            "column": row.index,
            "value": [v if isinstance(v, str) else f"{v:.6g}" for v in row.to_list()],
        }
    )
    table(detail, f"layer_{name.replace('/', '_').replace(':', '_')}")
