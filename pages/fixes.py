"""Fixes: which transformations would recover accuracy (the fixes themselves land later)."""

from __future__ import annotations

import streamlit as st

from pages._shared import analysis_key, current_analysis, frames, page_header, table
from qanalysis.fixes import list_fixes

a = current_analysis()
key = analysis_key()
f = frames(key, a)
page_header("Fixes", a)

available = list_fixes()
if not available:
    st.info(
        "Fixes are not available in this version. Cross-layer equalization, bias correction, SmoothQuant, "
        "AdaRound and quantization-aware training will be applied and compared here (FP32 / PTQ / PTQ + fixes / QAT) "
        "once they land in the core.",
        icon=":material/construction:",
    )
else:  # pragma: no cover - once the core registers fixes, this page grows their comparison
    st.write("Available fixes: " + ", ".join(available))

st.subheader("Where a fix would help")
st.caption(
    "Layers whose weights or input activations have outlier channels, with the measured recommendation."
)
tensors, layers = f["tensors"], f["layers"]
hit = tensors[tensors["n_outliers"] > 0][["layer", "tensor", "n_outliers", "max_ratio", "kurtosis"]]
hit = hit.merge(layers[["layer", "metric_drop", "recommendation"]], on="layer", how="left")
if hit.empty:
    st.success(
        "No outlier channels: equalization or SmoothQuant have nothing to spread in this model."
    )
else:
    table(hit, "fix_candidates")
