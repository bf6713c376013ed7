"""Formats: FP32 / FP16 / INT8 / W8 / W4 side by side, each built as a real ONNX Runtime
engine and measured (``qanalysis compare`` over ``compare.FORMATS``): the metric (simulated
and engine), its relative change, the engine file, batch-1 latency and, for a language model,
tokens/s; and the size-vs-metric figure. The seed's "how far to quantize an LLM" table."""

from __future__ import annotations

import streamlit as st

from pages._core import current_workload, run_formats
from pages._widgets import table
from qanalysis import figures
from qanalysis.compare import FORMATS
from qanalysis.errors import QAnalysisError

COLUMNS = ["config", "engine", "simulated_metric", "engine_metric", "drop_pct", "engine_size_bytes",
           "latency_median_ms", "latency_iqr_ms", "tokens_per_s", "note"]  # fmt: skip
DEFAULT = ("fp16", "int8", "w8", "w4g128", "w4g32")

wl = current_workload()  # no analysis needed: every format is built and measured here
lm = wl.task == "language_model"
st.title("Formats")
st.caption(f"**{wl.name}** · {wl.task} · {wl.n_eval} evaluation samples · {wl.metric_name}")
st.caption(
    "Each format becomes a real engine (FP16: float16 compute; INT8: the static QDQ engine; W8/W4: "
    "weight-only MatMulNBits, the group size after *g*) and is measured on the evaluation data. "
    "The same table as `qanalysis compare MODEL --configs examples/lm/*.json`."
)
if not lm:
    st.info(
        "Weight-only formats (W8, W4) quantize MatMul/Gemm weights only: they are made for language "
        "models; on this workload the other layers stay float.",
        icon=":material/info:",
    )

with st.container(horizontal=True, vertical_alignment="bottom"):
    labels = st.multiselect("Formats", list(FORMATS), default=list(DEFAULT), key="w_formats")
    clicked = st.button("Compare formats", type="primary", icon=":material/compare_arrows:", key="w_formats_run")

res = None
if clicked and labels:
    try:
        res = run_formats(tuple(labels))
    except QAnalysisError as e:
        st.error(str(e))
if res is None:
    if not clicked:
        st.caption("Press **Compare formats** (each engine is built and timed: about ten seconds a format on the samples).")
    st.stop()

df = res.to_frame()
change = "increase (%)" if res.lower_is_better else "drop (%)"
shown = df[[c for c in COLUMNS if c in df.columns and (lm or c != "tokens_per_s")]]
table(
    shown,
    "formats",
    column_config={
        "simulated_metric": st.column_config.NumberColumn(f"{res.metric_name}, simulated", format="%.3f"),
        "engine_metric": st.column_config.NumberColumn(f"{res.metric_name}, engine", format="%.3f"),
        "drop_pct": st.column_config.NumberColumn(change, format="%+.1f"),
        "engine_size_bytes": st.column_config.NumberColumn("engine file (bytes)", format="%d"),
        "latency_median_ms": st.column_config.NumberColumn("latency b1, median (ms)", format="%.3f"),
        "latency_iqr_ms": st.column_config.NumberColumn("IQR (ms)", format="%.3f"),
        "tokens_per_s": st.column_config.NumberColumn("tokens/s", format="%.0f"),
    },
)
if df["latency_unstable"].fillna(False).astype(bool).any():
    st.caption("Some timings are flagged unstable (IQR above 25 % of the median): the machine was busy; compare medians only.")
st.plotly_chart(
    figures.size_vs_metric(df, metric_name=res.metric_name, higher_is_better=not res.lower_is_better),
    key="formats_chart",
)
