"""Fixes: apply the core's accuracy fixes (CLE, SmoothQuant, bias correction, AdaRound, QAT) to
the current scheme and compare FP32 / PTQ / PTQ + fixes; preview the fix a layer's
recommendation names. Works whether or not the core has fixes yet."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
import streamlit as st

from pages._core import (
    current_analysis,
    frames,
    summary,
)
from pages._state import (
    FIXES,
    analysis_key,
    fixes_config_json,
)
from pages._widgets import (
    ci_text,
    page_header,
    table,
)
from qanalysis.analysis import Analysis
from qanalysis.errors import QAnalysisError

try:  # the fixes and their comparison land in the core step by step
    from qanalysis import fixes as _fixes
except ImportError:  # pragma: no cover - older core
    _fixes = None
try:
    from qanalysis import compare as _compare
except ImportError:
    _compare = None

preview_fix = getattr(_compare, "preview_fix", None)

# Words in a layer's recommendation that name a fix.
FIX_WORDS = {
    "cle": ("cross-layer equalization", "cle"),
    "smoothquant": ("smoothquant",),
    "bias_correction": ("bias correction",),
    "adaround": ("adaround",),
    "qat": ("quantization-aware training", "qat"),
}


def available_fixes() -> list[str]:
    return list(_fixes.list_fixes()) if _fixes is not None and hasattr(_fixes, "list_fixes") else []


def describe(name: str) -> tuple[str, bool | None]:
    fix = getattr(_fixes, "FIXES", {}).get(name)
    return (fix.description, fix.preserves_fp32) if fix is not None else ("", None)


def suggested(recommendation: str, available: list[str]) -> list[str]:
    text = recommendation.lower()
    return [
        f
        for f in available
        if any(
            re.search(rf"\b{re.escape(w)}\b", text)
            for w in FIX_WORDS.get(f, (f.replace("_", " "),))
        )
    ]


@st.cache_data(show_spinner="measuring the fix on the whole model …", max_entries=32)
def cached_preview(key: tuple, fix: str, _a: Analysis) -> dict[str, Any]:
    return dict(preview_fix(_a.workload, _a.config, fix))


ss = st.session_state
a = current_analysis()
key = analysis_key()
f = frames(key, a)
page_header("Fixes", a)
available = available_fixes()

if not available:
    st.info(
        "Fixes are not available in this version. Cross-layer equalization, bias correction, SmoothQuant, "
        "AdaRound and quantization-aware training will be applied and compared here (FP32 / PTQ / PTQ + fixes) "
        "once they land in the core.",
        icon=":material/construction:",
    )
else:
    st.caption(
        "A fix changes the float weights or the quantization parameters before INT8, and the engine carries "
        "it. The fixes applied here are used by the Mixed precision and Export pages too."
    )
    lines = []
    for n in available:
        text, exact = describe(n)
        lines.append(
            f"- **{n}**: {text}" + ("" if exact is None or exact else " *(changes the FP32 model)*")
        )
    st.markdown("\n".join(lines))
    committed = [n for n in ss.get(FIXES) or [] if n in available]
    ss["w_fixes"] = [n for n in ss.get("w_fixes", committed) if n in available]

    def _apply() -> None:
        chosen = set(ss["w_fixes"])
        ss[FIXES] = [n for n in available if n in chosen]

    def _clear() -> None:
        ss[FIXES] = []
        ss["w_fixes"] = []

    c1, c2 = st.columns([5, 2], vertical_alignment="bottom")
    c1.multiselect("Fixes to apply", available, key="w_fixes", placeholder="none: plain PTQ")
    with c2.container(horizontal=True):
        st.button(
            "Apply", type="primary", icon=":material/build:", on_click=_apply, key="w_apply_fixes"
        )
        st.button(
            "Remove",
            icon=":material/clear:",
            on_click=_clear,
            disabled=not committed,
            key="w_clear_fixes",
        )
    if sorted(ss["w_fixes"]) != sorted(committed):
        st.caption(":orange[Selection changed: press **Apply** to analyze with these fixes.]")

    if committed:
        fa = current_analysis(fixes_config_json(committed))
        fkey = analysis_key(fixes_config_json(committed))
        s0, s1 = summary(key, a), summary(fkey, fa)
        label = "PTQ + " + " + ".join(committed)
        metric_name = a.workload.metric_name

        c = st.columns(4)
        c[0].metric(f"FP32 {metric_name}", f"{a.fp32_metric:.2f}", border=True)
        c[1].metric(
            f"PTQ {metric_name}",
            f"{a.int8_metric:.2f}",
            border=True,
            delta=None if round(a.drop, 2) == 0 else f"{-a.drop:+.2f} points",
            delta_color="normal",
        )
        c[2].metric(
            label,
            f"{fa.int8_metric:.2f}",
            border=True,
            delta=None
            if round(fa.int8_metric - a.int8_metric, 2) == 0
            else f"{fa.int8_metric - a.int8_metric:+.2f} vs PTQ",
        )
        c[3].metric(
            "Drop with the fixes", f"{fa.drop:.2f}", border=True, help=f"verdict: {fa.verdict}"
        )
        if ci_text(fa.drop_interval.low, fa.drop_interval.high):
            c[3].caption(ci_text(fa.drop_interval.low, fa.drop_interval.high).strip(" ()"))

        def row(name: str, metric: float, drop: float, s: dict | None) -> dict[str, Any]:
            """``s`` is the config's summary; None for FP32 (against itself: no drop, no flip)."""
            worst = (s or {}).get("per_class_worst") or {}
            classification = a.per_class is not None
            lost = worst.get("delta", 0.0) < -1e-9  # a class that lost accuracy, else no "worst class"
            return {
                "config": name,
                "metric": metric,
                "drop": drop,
                "verdict": "" if s is None else s["verdict"],
                "worst class": worst.get("class", "") if lost else ("none lost accuracy" if classification and s else ""),
                "worst class Δ": worst.get("delta") if lost else (0.0 if classification else None),
                "flipped": (s or {}).get("n_flipped", 0 if classification else None),
            }

        compared = pd.DataFrame(
            [
                row("FP32", a.fp32_metric, 0.0, None),
                row("PTQ", a.int8_metric, a.drop, s0),
                row(label, fa.int8_metric, fa.drop, s1),
            ]
        )
        if a.per_class is None:  # classes and flips mean nothing for regression or retrieval
            compared = compared.drop(columns=["worst class", "worst class Δ", "flipped"])
        st.markdown("**FP32 / PTQ / PTQ + fixes**")
        table(
            compared,
            "fixes_compared",
            column_config={
                "worst class Δ": st.column_config.NumberColumn(format="%+.2f"),
                "flipped": st.column_config.NumberColumn(format="%d"),
            },
        )
        if fa.fix_notes:
            st.caption("  \n".join(fa.fix_notes))

        st.markdown("**Per layer, before and after**")
        before, after = f["layers"], frames(fkey, fa)["layers"]
        cols = ["layer", "metric_drop", "metric_drop_all_but", "e2e_sqnr_db"]
        per_layer = before[cols].merge(
            after[cols + ["recommendation"]], on="layer", suffixes=("_ptq", "_fixed")
        )
        table(
            per_layer,
            "fixes_per_layer",
            height=280,
            column_config={
                "metric_drop_ptq": st.column_config.NumberColumn("drop alone, PTQ", format="%.3f"),
                "metric_drop_fixed": st.column_config.NumberColumn(
                    "drop alone, fixed", format="%.3f"
                ),
                "metric_drop_all_but_ptq": st.column_config.NumberColumn(
                    "recovered in float, PTQ", format="%.3f"
                ),
                "metric_drop_all_but_fixed": st.column_config.NumberColumn(
                    "recovered in float, fixed", format="%.3f"
                ),
                "e2e_sqnr_db_ptq": st.column_config.NumberColumn(
                    "output SQNR, PTQ (dB)", format="%.1f"
                ),
                "e2e_sqnr_db_fixed": st.column_config.NumberColumn(
                    "output SQNR, fixed (dB)", format="%.1f"
                ),
            },
        )
    else:
        st.caption("Pick fixes and press **Apply** to compare FP32, PTQ and PTQ + fixes.")

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

candidates = {
    r.layer: fx for r in layers.itertuples() if (fx := suggested(str(r.recommendation), available))
}
if preview_fix is not None and candidates:
    st.markdown("**Preview a recommendation**")
    c1, c2, c3 = st.columns([3, 2, 2], vertical_alignment="bottom")
    layer = c1.selectbox("Layer", list(candidates), key="w_preview_layer")
    fix = c2.selectbox("Fix it names", candidates[layer], key="w_preview_fix")
    if c3.button("Preview", icon=":material/science:", key="w_preview"):
        ss["_previewed"] = (key, fix)
    st.caption(f"**{layer}:** {layers.set_index('layer').loc[layer, 'recommendation']}")
    if ss.get("_previewed") == (key, fix):
        try:
            p = cached_preview(key, fix, a)
        except QAnalysisError as e:
            st.error(str(e))
        else:
            c = st.columns(3)
            c[0].metric("Metric before", f"{p['metric_before']:.2f}", border=True)
            c[1].metric(f"With {fix}", f"{p['metric_after']:.2f}", border=True)
            c[2].metric("Gain (points)", f"{p['gain']:+.2f}", border=True)
elif available and candidates:
    st.caption(
        "Previewing a single fix from here needs `qanalysis.compare.preview_fix` (not in this version): "
        "apply it above instead."
    )
