"""Mixed precision: search for the cheapest config under a drop budget (Pareto fronts of metric
vs latency and size), and keep layers in FP16 by hand with the simulated metric and size."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from pages._core import (
    deploy_analysis,
    frames,
    run_search,
    simulate,
    simulate_all_fp32,
    simulate_float,
)
from pages._state import (
    FIXES,
    FLOAT_LAYERS,
    LAYER_PRECISIONS,
    SEARCH,
    analysis_key,
    deploy_config_json,
    float_layers,
    layer_precisions,
)
from pages._widgets import (
    ci_text,
    config_loader,
    human_bytes,
    page_header,
    table,
    verdict_banner,
)
from qanalysis import figures
from qanalysis.analysis import verdict, verdict_drop
from qanalysis.errors import QAnalysisError

OBJECTIVES = ("latency", "size")

ss = st.session_state
a = deploy_analysis()
key = analysis_key(deploy_config_json())
layers = frames(key, a)["layers"]
names = layers["layer"].tolist()
metric_name = a.workload.metric_name
page_header("Mixed precision", a)
if a.config.fixes:
    st.caption(
        f"With the fixes chosen on the Fixes page: **{', '.join(a.config.fixes)}** "
        "(the search, the simulated metrics and the export all include them)."
    )


def _sync() -> None:
    ss[FLOAT_LAYERS] = list(ss["w_float_layers"])


# --------------------------------------------------------------------------- search

st.subheader("Search under a drop budget")
st.caption(
    "Greedy search: layers ranked by metric recovered per unit of cost (kernel times from ONNX Runtime's "
    "profiler, or parameter bytes), the shortest prefix that meets the budget, then each float layer tried "
    "back in INT8. Every evaluated config is simulated on the evaluation data; the chosen engine is built and timed."
)
request = ss.get(SEARCH)
if request and tuple(request["key"]) != key:
    request = None  # a search of another workload, scheme or fixes
ss.setdefault("w_max_drop", float(request["max_drop"]) if request else 1.0)
ss.setdefault("w_objective", request["objective"] if request else "latency")


def _request_search() -> None:
    ss[SEARCH] = {
        "key": list(key),
        "max_drop": float(ss["w_max_drop"]),
        "objective": ss["w_objective"] or "latency",
    }


with st.container(horizontal=True, vertical_alignment="bottom"):
    st.number_input(
        "Max drop (points)",
        min_value=0.0,
        step=0.25,
        format="%.2f",
        key="w_max_drop",
        width=180,
        help=f"the largest {metric_name} drop vs FP32 the chosen config may have",
    )
    st.segmented_control(
        "Minimize",
        OBJECTIVES,
        key="w_objective",
        required=True,
        help="latency: ONNX Runtime kernel times per layer; size: bytes of the engine",
    )
    st.button(
        "Run search",
        type="primary",
        icon=":material/travel_explore:",
        on_click=_request_search,
        key="w_search",
    )

if request and (ss["w_max_drop"], ss["w_objective"]) != (request["max_drop"], request["objective"]):
    st.caption(":orange[Budget changed: press **Run search** to search again.]")
res = None
if request is not None:  # the last search run on this analysis (its result is cached)
    max_drop, objective = float(request["max_drop"]), request["objective"]
    try:
        res = run_search(key, a, max_drop, objective)
    except QAnalysisError as e:
        st.error(str(e))

if res is not None:
    summ = res.summary()
    df = res.frame()
    chosen_row = df[df["chosen"]].iloc[0]
    chosen_layers = res.chosen.float_layers()
    current = frozenset(n for n, p in layer_precisions(a).items() if p in ("fp16", "fp32"))  # by hand or searched
    chosen_formats = summ.get("layer_formats") or {}  # weight-only layers (language models)
    kept = (
        f"{figures.layers_label(';'.join(chosen_layers), sep=', ')} in float (FP32)"
        if chosen_layers
        else "all INT8"
    ) + (f", {len(chosen_formats)} layer(s) weight-only ({', '.join(sorted(set(chosen_formats.values())))})" if chosen_formats else "") + (
        f", with {' + '.join(res.chosen.fixes)}" if res.chosen.fixes else "")
    text = (
        f"**Chosen config:** {kept} — "
        f"{metric_name} {chosen_row['metric']:.2f}, drop {chosen_row['drop']:.2f} points"
        f"{ci_text(chosen_row.get('drop_ci_low'), chosen_row.get('drop_ci_high'))} "
        f"(budget {max_drop:g}), minimizing {objective}."
    )
    if res.met_budget:
        st.success(text, icon=":material/check_circle:")
    else:
        st.warning(
            f"{text} {' '.join(summ['notes']) or 'The budget was not met.'}",
            icon=":material/warning:",
        )

    # the search's float layers are FP32 (what it simulated and what the engine runs)
    searched = {n: p for n, p in res.chosen.layers.items() if n in set(names)}

    def _use() -> None:
        ss[FLOAT_LAYERS] = []
        ss[LAYER_PRECISIONS] = dict(searched)
        if res.chosen.fixes:
            ss[FIXES] = list(res.chosen.fixes)

    with st.container(horizontal=True, vertical_alignment="center"):
        in_use = layer_precisions(a) == searched and set(ss.get(FIXES) or []) >= set(res.chosen.fixes)
        st.button(
            "Use this config",
            icon=":material/check:",
            on_click=_use,
            disabled=in_use,
            key="w_use_search",
            help="keep exactly these layers in float, FP32 as searched (the selection below, exported by the Export page)",
        )
        st.download_button(
            "config.json",
            res.chosen.to_json().encode(),
            file_name="config.json",
            mime="application/json",
            key="download_search_config",
            on_click="ignore",
            icon=":material/download:",
        )
        st.download_button(
            "search.json",
            json.dumps(summ, indent=2, default=str).encode(),
            file_name="search.json",
            mime="application/json",
            key="download_search_json",
            on_click="ignore",
            icon=":material/download:",
        )
        if in_use:
            st.caption("In use: it is your current selection.")

    c = st.columns(4)
    c[0].metric(
        "Configs evaluated",
        f"{summ['n_evaluations']}",
        border=True,
        help=f"full-model simulations for {summ['n_layers']} layers, {summ.get('engine_builds', 0)} engine(s) built "
        f"and timed, in {summ['seconds']:.1f} s (engine profiling and timing included)",
    )
    c[1].metric(
        "Predicted latency",
        f"{summ['predicted_latency_ms']:.3f} ms",
        border=True,
        help="the cost model: per-layer kernel times from ONNX Runtime's profiler, batch 1",
    )
    measured = summ.get("measured_latency_ms")
    err = summ.get("latency_prediction_error_pct")
    c[2].metric(
        "Measured latency",
        "n/a" if measured is None else f"{measured:.3f} ms",
        border=True,
        delta=None if err is None else f"cost model {err:+.0f}%",
        delta_color="off",
        delta_arrow="off",
        help="the chosen config's engine built and timed end to end (batch 1, median of up to 50 runs, "
        "timed together with all-INT8 and FP32)"
        + (
            ""
            if summ.get("measured_latency_iqr_ms") is None
            else f"; IQR {summ['measured_latency_iqr_ms']:.3f} ms"
        )
        + ("; unstable: the machine was busy, small differences are noise" if summ.get("latency_unstable") else ""),
    )
    int8_ms, fp32_ms = summ.get("int8_latency_ms"), summ.get("fp32_latency_ms")
    c[3].metric(
        "All-INT8 engine",
        "n/a" if int8_ms is None else f"{int8_ms:.3f} ms",
        border=True,
        delta=None if fp32_ms is None else f"FP32 {fp32_ms:.3f} ms",
        delta_color="off",
        delta_arrow="off",
        help="measured latency of the fully quantized engine and of the FP32 model in ONNX Runtime (batch 1)",
    )

    fig_args = {
        "metric_name": metric_name,
        "fp32_metric": a.fp32_metric,
        "max_drop": max_drop,
        "higher_is_better": a.workload.higher_is_better,
        "current": current,
    }
    left, right = st.columns(2)
    left.plotly_chart(
        figures.pareto_figure(df, "latency", measured_latency_ms=measured, **fig_args),
        key="pareto_latency_chart",
    )
    right.plotly_chart(figures.pareto_figure(df, "size", **fig_args), key="pareto_size_chart")
    mine = df["float_layers"].map(figures.layer_set) == current
    st.caption(
        "Every evaluated config is a point (hover for its layers, drop and cost); the front is connected; "
        "the star is the chosen config"
        + (
            "; the green ring is your current selection."
            if mine.any()
            else ". Your current selection was not evaluated by the search, so it has no point."
        )
    )
    with st.expander(f"All {len(df)} evaluated configs"):
        table(df, "pareto", height=260)


# --------------------------------------------------------------------------- by hand

st.subheader("Your config: layers kept in FP16")
st.caption(
    "What the Export page builds. Pick layers by hand, use the searched config above, or load a config.json."
)
with st.expander("Load a config.json", icon=":material/upload_file:", expanded=bool(ss.get("_config_message"))):
    config_loader(a)
recommended = layers.loc[layers["recommendation"].str.startswith("keep in FP16"), "layer"].tolist()
ss["w_float_layers"] = float_layers(a)
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
    ss[FLOAT_LAYERS] = [n for n in names if n in set(float_layers(a)) | set(recommended)]
    st.rerun()
if buttons.button("Clear", icon=":material/clear:", disabled=not layer_precisions(a), key="w_clear"):
    ss[FLOAT_LAYERS] = []
    ss[LAYER_PRECISIONS] = {}
    st.rerun()
others = {n: p for n, p in layer_precisions(a).items() if p != "fp16"}
if others:
    st.caption(
        "Also from the loaded config: " + ", ".join(f"`{n}` {p}" for n, p in others.items())
        + " (**Clear** removes them)."
    )

chosen = float_layers(a)
changed = bool(layer_precisions(a))
all_int8 = simulate_float(key, [], a)
res_hand = simulate(key, tuple(sorted(layer_precisions(a).items())), a)
fp32 = simulate_all_fp32(key, a)

verdict_banner(verdict(verdict_drop(a.workload, a.fp32_metric, res_hand.drop)), res_hand.drop, prefix="This config")
c = st.columns(4)
gained = a.workload.drop(res_hand.metric, all_int8.metric)  # > 0: the float layers helped
c[0].metric(
    f"{metric_name}, simulated",
    f"{res_hand.metric:.2f}",
    border=True,
    delta=None if not changed else f"{gained:+.2f} vs all INT8",
)
c[1].metric("Drop vs FP32 (points)", f"{res_hand.drop:.2f}", border=True)
if ci_text(*res_hand.drop_ci95):
    c[1].caption(ci_text(*res_hand.drop_ci95).strip(" ()"))
c[2].metric(
    "Weights",
    human_bytes(res_hand.weight_bytes),
    delta_color="inverse",
    delta=None
    if not changed
    else f"{'+' if res_hand.weight_bytes >= all_int8.weight_bytes else '−'}{human_bytes(abs(res_hand.weight_bytes - all_int8.weight_bytes))} vs all INT8",
    border=True,
    help=f"FP32 weights: {human_bytes(fp32.weight_bytes)}",
)
c[3].metric(
    "Tensors left in float",
    f"{len(res_hand.float_tensors)}",
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
                "metric": res_hand.metric,
                "drop": res_hand.drop,
                "weight_bytes": res_hand.weight_bytes,
                "float_layers": len(res_hand.float_layers),
            },
        ]
    )
    table(compared, "mixed_precision_configs")
with right:
    st.markdown(f"**Tensors that stay float** ({len(res_hand.float_tensors)})")
    if res_hand.float_tensors:
        table(pd.DataFrame({"tensor": res_hand.float_tensors}), "float_tensors", height=180)
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
st.page_link(
    "pages/export.py", label="Build and verify this config", icon=":material/arrow_forward:"
)
