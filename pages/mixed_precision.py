"""Mixed precision: keep some layers in FP16 by hand and see the metric, size and float tensors."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._shared import (
    FLOAT_LAYERS,
    analysis_key,
    current_analysis,
    float_layers,
    frames,
    human_bytes,
    page_header,
    simulate_all_fp32,
    simulate_float,
    table,
    verdict_banner,
)
from qanalysis.analysis import verdict

a = current_analysis()
key = analysis_key()
layers = frames(key, a)["layers"]
names = layers["layer"].tolist()
page_header("Mixed precision", a)
st.info(
    "The automatic search (`qanalysis search`: greedy under a drop budget, Pareto front of metric vs latency "
    "and size) is not available in this version. Pick the layers to keep in FP16 by hand; the Export page "
    "offers the resulting config.",
    icon=":material/construction:",
)


def _sync() -> None:
    st.session_state[FLOAT_LAYERS] = list(st.session_state["w_float_layers"])


recommended = layers.loc[layers["recommendation"].str.startswith("keep in FP16"), "layer"].tolist()
st.session_state["w_float_layers"] = float_layers(a)
c1, c2 = st.columns([5, 2], vertical_alignment="bottom")
c1.multiselect(
    "Layers kept in FP16",
    names,
    key="w_float_layers",
    on_change=_sync,
    placeholder="all layers in INT8",
)
buttons = c2.container(horizontal=True)
if buttons.button(
    "Recommended",
    icon=":material/add:",
    disabled=not recommended,
    key="w_add_recommended",
    help="the layers whose measured recommendation is 'keep in FP16'",
):
    st.session_state[FLOAT_LAYERS] = [
        n for n in names if n in set(float_layers(a)) | set(recommended)
    ]
    st.rerun()
if buttons.button("Clear", icon=":material/clear:", disabled=not float_layers(a), key="w_clear"):
    st.session_state[FLOAT_LAYERS] = []
    st.rerun()

chosen = float_layers(a)
all_int8 = simulate_float(key, [], a)
res = simulate_float(key, chosen, a)
fp32 = simulate_all_fp32(key, a)

verdict_banner(verdict(res.drop), res.drop, prefix="This config")
c = st.columns(4)
gained = res.metric - all_int8.metric
c[0].metric(
    f"{a.workload.metric_name}, simulated",
    f"{res.metric:.2f}",
    border=True,
    delta=None if not chosen else f"{gained:+.2f} vs all INT8",
)
c[1].metric("Drop vs FP32 (points)", f"{res.drop:.2f}", border=True)
c[2].metric(
    "Weights",
    human_bytes(res.weight_bytes),
    delta_color="inverse",
    delta=None
    if not chosen
    else f"+{human_bytes(res.weight_bytes - all_int8.weight_bytes)} vs all INT8",
    border=True,
    help=f"FP32 weights: {human_bytes(fp32.weight_bytes)}",
)
c[3].metric(
    "Tensors left in float",
    f"{len(res.float_tensors)}",
    border=True,
    help="activations no longer quantized because the layers around them stay in float",
)

left, right = st.columns([3, 2])
with left:
    st.markdown("**Configs compared**")
    compared = pd.DataFrame(
        [
            {
                "config": "FP32",
                "metric": a.fp32_metric,
                "drop": 0.0,
                "weight_bytes": fp32.weight_bytes,
                "float_layers": len(names),
            },
            {
                "config": "all INT8",
                "metric": all_int8.metric,
                "drop": all_int8.drop,
                "weight_bytes": all_int8.weight_bytes,
                "float_layers": 0,
            },
            {
                "config": "this config",
                "metric": res.metric,
                "drop": res.drop,
                "weight_bytes": res.weight_bytes,
                "float_layers": len(res.float_layers),
            },
        ]
    )
    table(compared, "mixed_precision_configs")
with right:
    st.markdown(f"**Tensors that stay float** ({len(res.float_tensors)})")
    if res.float_tensors:
        table(pd.DataFrame({"tensor": res.float_tensors}), "float_tensors", height=180)
    else:
        st.caption("None: every quantizable tensor gets Q/DQ.")

st.subheader("What keeping each layer in float recovers")
st.caption(
    "Sorted by the points recovered when only that layer stays in float (measured on the fully quantized model)."
)
guide = layers[
    ["layer", "op_type", "params", "metric_drop_all_but", "metric_drop", "recommendation"]
]
guide = guide.assign(fp16=guide["layer"].isin(chosen)).sort_values(
    "metric_drop_all_but", ascending=False
)
table(guide, "layer_float_gains", height=300)
st.page_link("pages/export.py", label="Export this config", icon=":material/arrow_forward:")
