"""Graph: the model's quantizable layers as a graph, coloured by error; click a node for its details."""

from __future__ import annotations

import math
from collections import Counter

import streamlit as st

from pages._core import current_analysis, graph, tensor_distribution
from pages._state import FLOAT_LAYERS, FOCUS_LAYER, analysis_key, float_layers
from pages._widgets import page_header, ranked_layers
from qanalysis import figures
from qanalysis.errors import QAnalysisError
from qanalysis.graphview import INPUT, MEASURES, OUTPUT, auto_depth, collapse, group_of, layout

ss = st.session_state
a = current_analysis()
key = analysis_key()
view = graph(key, a)
names = view.nodes["layer"].tolist()
page_header("Model graph", a)
st.caption(
    "Each node is a quantizable layer of the ONNX graph ONNX Runtime quantizes, named by its PyTorch "
    "module; edges are the data flow through the ops that are not quantized themselves (ReLU, pooling, "
    "reshapes). Squares are modules drawn as one box (their worst layer's colour); green rings are layers "
    "kept in float. **Click a node** for its details (a module box opens into its layers); drag to pan, "
    "scroll to zoom."
)

depths = sorted({len([p for p in m.split(".") if p]) for m in view.nodes["module"]} | {0})
auto = auto_depth(view)
DEPTH_LABELS = {0: "every layer", **{d: f"modules at depth {d}" for d in depths if d}}
ss.setdefault("w_graph_depth", auto)
if ss["w_graph_depth"] not in depths:
    ss["w_graph_depth"] = auto
if ss.get("w_graph_expand") is None:
    ss["w_graph_expand"] = []

SHORT = {
    "metric_drop": "drop, this layer alone",
    "metric_drop_all_but": "recovered in float",
    "output_sqnr_db": "layer-output SQNR",
    "e2e_sqnr_db": "model-output SQNR",
    "depth_sqnr_db": "error growth (SQNR in full INT8)",
}
c1, c2, c3 = st.columns([2, 2, 3])
measure = c1.selectbox(
    "Colour by",
    list(MEASURES),
    format_func=lambda m: SHORT.get(m, m),
    key="w_graph_measure",
    help="red is worse: a larger drop, or a lower SQNR",
)
depth = c2.selectbox(
    "Group layers by",
    depths,
    format_func=DEPTH_LABELS.get,
    key="w_graph_depth",
    help=f"{len(names)} layers; grouping by module keeps a large network readable "
    f"(opened on {DEPTH_LABELS[auto]})",
)
groups = sorted({g for m in view.nodes["module"] if (g := group_of(m, depth))})
ss["w_graph_expand"] = [g for g in ss["w_graph_expand"] if g in groups]
c3.multiselect(
    "Open modules",
    groups,
    key="w_graph_expand",
    disabled=not groups,
    placeholder="click a module box, or pick it here",
)
kept = float_layers(a)
units, edges = collapse(view, depth, frozenset(ss["w_graph_expand"]), frozenset(kept))
pos = layout(units, edges)
unit_ids = units["unit"].tolist()
kinds = dict(zip(units["unit"], units["kind"]))
focus = ss.get(FOCUS_LAYER)
if focus not in names:
    focus = ranked_layers(a.layers_frame())["layer"].iloc[0]
focus_unit = next(
    (u for u, ls in zip(units["unit"], units["layers"]) if focus in str(ls).split(";")), None
)


def _clicked() -> None:
    """A node was clicked: a layer becomes the focus; a module box opens into its layers."""
    points = ss["graph_chart"].selection.get("points", [])
    if not points:
        return
    p = points[0]
    custom = p.get("customdata")
    unit = custom[0] if custom else None
    if unit is None and p.get("curve_number") == 1:
        i = p.get("point_index", p.get("point_number"))
        unit = unit_ids[i] if i is not None and i < len(unit_ids) else None
    if unit in (None, INPUT, OUTPUT):
        return
    if kinds.get(unit) == "module":
        ss["w_graph_expand"] = sorted(set(ss.get("w_graph_expand") or []) | {unit})
    else:
        ss[FOCUS_LAYER] = unit


# as tall as the widest generation needs: a plain chain is one row, not half a screen
widest = max(Counter(round(x, 6) for x, _ in pos.values()).values())
fig = figures.graph_figure(units, edges, pos, measure, focus=focus_unit, height=min(680, 200 + 55 * widest))
st.plotly_chart(
    fig,
    key="graph_chart",
    on_select=_clicked,
    selection_mode="points",
    config={"scrollZoom": True, "displaylogo": False},
)
st.caption(f"{len(names)} layers drawn as {len(unit_ids) - 2} nodes. Or pick the layer here:")


def _pick() -> None:
    ss[FOCUS_LAYER] = ss["w_graph_focus"]


ss["w_graph_focus"] = focus
st.selectbox("Focus layer", names, key="w_graph_focus", on_change=_pick)
ss[FOCUS_LAYER] = focus

# --------------------------------------------------------------------------- the focused layer

row = view.nodes.set_index("layer").loc[focus]
layers = a.layers_frame().set_index("layer")
st.subheader(f"{focus}")
st.caption(f"{row['op_type']} · module `{row['module'] or '(top level)'}` · {int(row['params']):,} parameters")


def _num(v: float, fmt: str) -> str:
    return "n/a" if not math.isfinite(v) else format(v, fmt)


c = st.columns(4)
c[0].metric("Drop, only this layer", _num(row["metric_drop"], ".3f"), border=True)
c[1].metric("Recovered by keeping it in float", _num(row["metric_drop_all_but"], ".3f"), border=True)
c[2].metric("Layer-output SQNR", _num(row["output_sqnr_db"], ".1f") + " dB", border=True)
c[3].metric(
    "SQNR in full INT8",
    _num(row["depth_sqnr_db"], ".1f") + " dB",
    border=True,
    help="this layer's output in the fully quantized model vs FP32: how the error has grown by here",
)
st.info(f"**Recommendation:** {layers.at[focus, 'recommendation']}", icon=":material/lightbulb:")

chosen = list(ss.get(FLOAT_LAYERS, []))
b1, b2, _ = st.columns([1, 1, 2], vertical_alignment="center")
if focus in chosen:
    if b1.button("Back to INT8", icon=":material/undo:", key="w_graph_unkeep"):
        ss[FLOAT_LAYERS] = [n for n in chosen if n != focus]
        st.rerun()
elif b1.button(
    "Keep in FP16",
    icon=":material/add:",
    key="w_graph_keep",
    help="adds the layer to the Mixed precision page's selection (and the Export page's config)",
):
    ss[FLOAT_LAYERS] = chosen + [focus]
    st.rerun()
b2.page_link("pages/distributions.py", label="Its distributions", icon=":material/bar_chart:")

left, right = st.columns(2)
for col, tensor, label in [(left, "weight", "weight"), (right, "activation", "input activation")]:
    with col:
        try:
            d = tensor_distribution(key, focus, tensor, a)
        except QAnalysisError as e:
            st.caption(f"No {label} histogram: {e}.")
            continue
        st.plotly_chart(
            figures.histogram(
                d.centers, d.counts, d.rmin, d.rmax, d.grid, title=f"{label}: histogram and grid"
            ),
            key=f"graph_{tensor}_histogram",
        )
