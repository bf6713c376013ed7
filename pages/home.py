"""Summary: will INT8 hurt this model? The verdict, the cards, who pays for the drop."""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages._core import (
    baseline,
    current_analysis,
    frames,
    simulate_all_fp32,
    simulate_float,
    summary,
    task,
)
from pages._state import (
    analysis_key,
)
from pages._widgets import (
    fmt_ms,
    human_bytes,
    page_header,
    ranked_layers,
    short_name,
    table,
    verdict_banner,
    warnings_banner,
)
from qanalysis import figures

MAX_IMAGES = 6


def to_uint8_image(x: np.ndarray, size: int = 96) -> np.ndarray:
    """[C, H, W] or [H, W] floats → [H, W] or [H, W, 3] uint8, min-max scaled for display;
    small images are enlarged by pixel repetition so 8×8 digits stay crisp."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    img = np.round(x * 255).astype(np.uint8)
    k = max(1, size // max(img.shape[0], 1))
    return img.repeat(k, axis=0).repeat(k, axis=1)


def eval_input(wl, index: int) -> np.ndarray:
    """The first model input of evaluation sample ``index`` (batches concatenated in order)."""
    for inputs, _ in wl.evaluation:
        n = int(inputs[0].shape[0])
        if index < n:
            return inputs[0][index].numpy()
        index -= n
    raise IndexError(index)


def is_image_workload(wl) -> bool:
    return bool(wl.images) or wl.evaluation[0][0][0].dim() == 4


a = current_analysis()
key = analysis_key()
f = frames(key, a)
wl = a.workload
page_header(f"Will INT8 hurt {short_name(wl.name)}?", a)
if wl.description:
    st.caption(wl.description)

# The headline straight from the analysis: ``summary()`` also collects library versions, whose
# imports cost seconds on a cold start, so it waits for the "Run details" at the end.
warnings_banner(a.warnings)
verdict_banner(a.verdict, a.drop)

c = st.columns(4)
c[0].metric(f"FP32 {wl.metric_name}", f"{a.fp32_metric:.2f}", border=True)
c[1].metric(
    f"INT8 {wl.metric_name}, simulated",
    f"{a.int8_metric:.2f}",
    border=True,
    delta=None if round(a.drop, 2) == 0 else f"{-a.drop:+.2f} points",
)
iv = a.drop_interval
c[2].metric(
    "Drop (points)",
    f"{a.drop:.2f}",
    border=True,
    help="FP32 metric minus the fully quantized metric",
)
if iv.n_boot:
    c[2].caption(
        f"95% CI {iv.low:.2f} to {iv.high:.2f}"
        + (f" · one sample = {100 / wl.n_eval:.2f}" if wl.task == "classification" else "")
    )
if wl.task == "classification":
    flipped = 0 if f["flips"] is None else len(f["flips"])
    c[3].metric(
        "Flipped predictions",
        f"{flipped} / {wl.n_eval}",
        border=True,
        help="evaluation samples whose predicted class changes under INT8",
    )
else:
    tv = task(key, a)
    if wl.task == "regression":
        moved = tv.samples["int8_minus_fp32"].abs()
        c[3].metric(
            "Mean |INT8 − FP32| prediction",
            f"{moved.mean():.3g}",
            border=True,
            help=f"over the {wl.n_eval} evaluation samples; largest {moved.max():.3g}",
        )
    else:
        err = tv.samples["output_rel_error"]
        c[3].metric(
            "Median output error",
            f"{err.median():.2%}",
            border=True,
            help="‖INT8 − FP32‖ / ‖FP32‖ per sample (output row); "
            f"worst sample {err.max():.2%}",
        )

# Sizes and latencies come from the FP32 baseline, timed after the rest of the page is on
# screen (first load): this row is filled at the end of the script.
costs_row = st.container()

st.subheader("Most sensitive layers")
layers = f["layers"]
top = ranked_layers(layers).head(5)
table(
    top[
        ["layer", "op_type", "metric_drop", "metric_drop_all_but", "e2e_sqnr_db", "recommendation"]
    ],
    "top_layers",
)
st.page_link(
    "pages/layers.py", label="All layers, SQNR and proxies", icon=":material/arrow_forward:"
)

st.subheader("Who pays for the drop")
per_class, flips = f["per_class"], f["flips"]
if wl.task == "regression":
    tv = task(key, a)
    left, right = st.columns(2)
    scalar = "target" in tv.samples.columns
    if scalar:
        left.plotly_chart(figures.prediction_scatter(tv.samples, wl.metric_name), key="prediction_chart")
    right.plotly_chart(figures.error_histogram(tv.samples), key="residual_chart")
    st.caption(f"{tv.note}. {wl.metric_name}: FP32 {a.fp32_metric:.3f}, INT8 {a.int8_metric:.3f}.")
    worst = tv.samples.reindex(tv.samples["int8_minus_fp32"].abs().sort_values(ascending=False).index)
    with st.expander("Samples, most changed by quantization first"):
        table(worst, "samples", height=260)
elif wl.task != "classification" or per_class is None:
    tv = task(key, a)
    st.caption(
        f"This workload's metric is its own ({wl.metric_name}, computed on all outputs at once), so there are "
        "no classes or flipped predictions: each evaluation sample's output is compared with FP32 instead."
    )
    left, right = st.columns([3, 2])
    left.plotly_chart(figures.sample_errors(tv.samples, wl.metric_name), key="sample_errors_chart")
    with right:
        restored = tv.samples["metric_restored"]
        hurt = int((restored > 0).sum())
        st.markdown(
            f"**{hurt} sample(s) cost {wl.metric_name}**: restoring that one sample's output to FP32 raises the "
            "metric." if hurt else f"**No single sample's error costs {wl.metric_name}** (among the worst "
            f"{int(restored.notna().sum())} checked)."
        )
        worst = tv.samples.sort_values(["metric_restored", "output_rel_error"], ascending=False)
        table(
            worst,
            "samples",
            height=260,
            column_config={
                "output_rel_error": st.column_config.NumberColumn("output error", format="%.2e"),
                "output_cosine": st.column_config.NumberColumn("cosine to FP32", format="%.5f"),
                "metric_restored": st.column_config.NumberColumn(f"{wl.metric_name} restored", format="%+.3f"),
            },
        )
    st.caption(tv.note + ".")
else:
    left, right = st.columns([3, 2])
    with left:
        if (per_class["delta"].abs() < 1e-9).all():
            st.success(
                f"Every class keeps its FP32 accuracy under INT8 ({len(per_class)} classes).",
                icon=":material/check_circle:",
            )
        else:
            st.plotly_chart(figures.per_class_bars(per_class), key="per_class_chart")
        with st.expander("Per-class table"):
            table(per_class, "per_class")
    with right:

        def label(i: int) -> str:
            names = wl.class_names
            return names[i] if names and 0 <= i < len(names) else str(i)

        if flips is None or flips.empty:
            st.success(
                f"No flipped predictions: FP32 and INT8 agree on all {wl.n_eval} evaluation samples."
            )
        else:
            st.markdown(f"**{len(flips)} flipped predictions** (FP32 → INT8)")
            mark = {True: "✓", False: "✗"}
            shown = flips.assign(
                target=flips["target"].map(label),
                fp32_pred=flips["fp32_pred"].map(label),
                int8_pred=flips["int8_pred"].map(label),
                fp32_correct=flips["fp32_correct"].map(mark),
                int8_correct=flips["int8_correct"].map(mark),
            )
            table(shown, "flips", height=260)
            if is_image_workload(wl):
                sample = flips.head(MAX_IMAGES)
                st.image(
                    [to_uint8_image(eval_input(wl, int(i))) for i in sample["index"]],
                    caption=[
                        f"#{i}: {label(int(p))} → {label(int(q))}"
                        for i, p, q in zip(
                            sample["index"], sample["fp32_pred"], sample["int8_pred"]
                        )
                    ],
                    width=96,
                )


def cost_cards(b: dict) -> None:
    int8 = simulate_float(key, [], a)
    fp32 = simulate_all_fp32(key, a)
    c = st.columns(4)
    c[0].metric("FP32 model, ONNX file", human_bytes(b.get("onnx_bytes")), border=True)
    c[1].metric(
        "INT8 weights, simulated",
        human_bytes(int8.weight_bytes),
        border=True,
        delta_color="off",
        delta=f"{fp32.weight_bytes / max(int8.weight_bytes, 1):.1f}× smaller than FP32",
        delta_arrow="off",
        help=f"the quantizable layers' weights: {human_bytes(fp32.weight_bytes)} in FP32, INT8 packed",
    )
    for col, name, lat in [
        (c[2], "ONNX Runtime", b.get("ort_latency_b1")),
        (c[3], "PyTorch", b.get("torch_latency_b1")),
    ]:
        col.metric(
            f"FP32 latency, {name}",
            fmt_ms(lat),
            border=True,
            delta_color="off",
            delta_arrow="off",
            delta=f"IQR {lat.get('iqr_ms', lat['std_ms']):.2g} ms over {lat['repeats']} runs" if lat else None,
            help="ms per sample at batch 1: median and interquartile range after a warm-up, the protocol every page, "
            "the search and the export use; '(unstable)' when IQR / median > 25 % (a busy machine)",
        )


with costs_row:
    with st.spinner("timing the FP32 model in PyTorch and ONNX Runtime …"):
        bl = baseline(key, a)
    b = bl.to_dict() if bl is not None else {}
    cost_cards(b)

with st.expander("Run details"):
    s = summary(key, a)
    t = s.get("timings_s", {})
    st.caption(" · ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in t.items()))
    if b:
        st.caption(
            f"FP32 metric in PyTorch {b['torch_metric']:.2f}, in ONNX Runtime {b['onnx_metric']:.2f} "
            f"(max |Δ output| {b['onnx_max_abs_diff']:.1e}); batch {b['ort_latency_batch']['batch']}: "
            f"ORT {fmt_ms(b['ort_latency_batch'])}, PyTorch {fmt_ms(b['torch_latency_batch'])} per sample"
        )
    st.caption(" · ".join(f"{k} {v}" for k, v in s.get("versions", {}).items()))
