"""Reusable widgets and presentation: tables with their downloads, banners, headers, formats.

Figures themselves live in ``qanalysis.figures`` (shared with report.html); this module only
places them and the tables on a page.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from qanalysis import figures

VERDICT_COLOR = {"ship INT8": "green", "mixed precision or QAT": "orange", "keep FP16": "red"}
VERDICT_HELP = {
    "ship INT8": "drop below 1 point: ship INT8.",
    "mixed precision or QAT": "drop of 1–3 points: keep the most sensitive layers in FP16 (Mixed precision page) or fine-tune with QAT.",
    "keep FP16": "drop above 3 points: keep FP16, or fix the layers named on the Layer error page first.",
    "unreliable: the exported graph differs from PyTorch": "the numbers below describe the exported graph, not your model (see the warning).",
}


def ranked_layers(layers: pd.DataFrame) -> pd.DataFrame:
    """Most sensitive first: the larger of the two measured drops, then the lowest model-output SQNR."""
    worst = layers[["metric_drop", "metric_drop_all_but"]].max(axis=1)
    ranked = layers.assign(_worst=worst).sort_values(
        ["_worst", "e2e_sqnr_db"], ascending=[False, True]
    )
    return ranked.drop(columns="_worst")


# --------------------------------------------------------------------------- presentation

L = figures.COLUMN_LABELS
_FORMATS = {
    "params": "%d", "weight_sqnr_db": "%.1f", "act_sqnr_db": "%.1f", "output_sqnr_db": "%.1f", "e2e_sqnr_db": "%.1f",
    "depth_sqnr_db": "%.1f", "e2e_kl": "%.2e", "e2e_cosine": "%.5f", "metric_drop": "%.3f",
    "metric_drop_all_but": "%.3f", "metric_drop_ci_low": "%.3f", "metric_drop_ci_high": "%.3f", "recommendation_gain": "%.2f", "metric_only": "%.2f", "metric_all_but": "%.2f",
    "act_clipping": "%.2e", "weight_mse": "%.2e", "act_mse": "%.2e", "absmax": "%.4g",
    "median_channel_absmax": "%.4g", "ratio": "%.1f", "max_ratio": "%.1f", "kurtosis": "%.2f",
    "fp32_accuracy": "%.2f", "int8_accuracy": "%.2f", "delta": "%+.2f", "n_outliers": "%d", "channels": "%d",
}  # fmt: skip
COLUMNS = {
    **{c: st.column_config.NumberColumn(L[c], format=f) for c, f in _FORMATS.items()},
    "recommendation": st.column_config.TextColumn("recommendation", width="large"),
    "op_type": st.column_config.TextColumn("op"),
    "metric": st.column_config.NumberColumn("metric", format="%.2f"),
    "drop": st.column_config.NumberColumn("drop", format="%.2f"),
    "weight_bytes": st.column_config.NumberColumn("weight bytes", format="%d"),
    "fp32_pred": st.column_config.TextColumn("FP32 pred."),
    "int8_pred": st.column_config.TextColumn("INT8 pred."),
    "fp32_correct": st.column_config.TextColumn("FP32 correct"),
    "int8_correct": st.column_config.TextColumn("INT8 correct"),
    "target": st.column_config.TextColumn("target"),
}
# Columns holding names: sized to their longest value so "blocks.0:add" and "blocks.0:add_1" stay apart.
NAME_COLUMNS = ("layer", "tensor", "config", "class")


def _name_width(values: pd.Series, header: str) -> int:
    longest = max([len(str(v)) for v in values] + [len(header)])
    return min(8 * longest + 28, 420)


def table(
    df: pd.DataFrame,
    name: str,
    *,
    height: int | str = "auto",
    column_config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A sortable table and its CSV download (every table in the app offers one).
    ``height`` caps tall tables; short ones take only the rows they have; ``column_config``
    adds to (or overrides) the shared column formats."""
    if isinstance(height, int) and len(df) <= 8:
        height = "auto"
    shown = st.dataframe(
        df,
        hide_index=True,
        column_config={
            **{c: COLUMNS[c] for c in df.columns if c in COLUMNS},
            **{
                c: st.column_config.TextColumn(c, width=_name_width(df[c], c))
                for c in NAME_COLUMNS
                if c in df.columns and not pd.api.types.is_numeric_dtype(df[c])
            },
            **(column_config or {}),
        },
        height=height,
        **kwargs,
    )
    st.download_button(
        f"{name}.csv",
        df.to_csv(index=False).encode(),
        file_name=f"{name}.csv",
        mime="text/csv",
        key=f"download_{name}",
        on_click="ignore",
        icon=":material/download:",
        type="tertiary",
    )
    return shown


def human_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def fmt_ms(latency: dict | None) -> str:
    if not latency:
        return "n/a"
    ms = latency.get("median_ms", latency["mean_ms"])  # results saved before the median was the number
    return f"{ms:.3g} ms" + (" (unstable)" if latency.get("unstable") else "")


def warnings_banner(warnings: list[str]) -> None:
    """What the run itself flagged (export mismatch, random weights): shown above every result."""
    for w in warnings:
        st.warning(w, icon=":material/report:")


def verdict_banner(verdict: str, drop: float, *, prefix: str = "Verdict") -> None:
    text = f"**{prefix}: {verdict}** — drop {drop:.2f} points; {VERDICT_HELP.get(verdict, '')}"
    color = VERDICT_COLOR.get(verdict) or ("orange" if verdict.startswith("uncertain") else None)
    if color == "green":
        st.success(text, icon=":material/check_circle:")
    elif color == "orange":
        st.warning(text, icon=":material/warning:")
    else:
        st.error(text, icon=":material/block:")


def short_name(source: str) -> str:
    """``sample:digits_cnn`` → digits_cnn; ``torchvision:resnet18@w.pt`` → resnet18; ``a/b/spec.py`` → spec."""
    if source.startswith("sample:"):
        return source.removeprefix("sample:")
    if source.startswith("torchvision:"):
        return source.removeprefix("torchvision:").partition("@")[0]
    return Path(source).stem


def page_header(title: str, a: Any) -> None:
    st.title(title)
    wl = a.workload
    st.caption(
        f"**{wl.name}** · {wl.task} · {wl.n_eval} evaluation samples · {wl.metric_name} · "
        f"scheme {a.config.scheme.label()}"
    )


@functools.cache
def favicon() -> Any:
    """The tab icon, drawn here (three bars, the last one short) so no page load fetches it from
    the internet (Streamlit resolves emoji and material-icon favicons through a CDN)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rounded_rectangle((0, 0, 63, 63), radius=12, fill=(255, 75, 75, 255))
    for i, h in enumerate((34, 46, 20)):
        x = 10 + i * 16
        d.rectangle((x, 54 - h, x + 11, 54), fill=(255, 255, 255, 255))
    return im


def download_json(label: str, text: str, key: str, file_name: str = "config.json") -> None:
    st.download_button(label, text.encode(), file_name=file_name, mime="application/json", key=key,
                       on_click="ignore", icon=":material/download:")  # fmt: skip


def _load_config(a: Any) -> None:
    from pages._state import apply_config, parse_config
    from qanalysis.errors import QAnalysisError

    ss = st.session_state
    f = ss.get("w_config_file")
    ss.pop("_config_message", None)
    if f is None:
        return
    try:
        config = parse_config(f.getvalue(), f.name)
        unknown = apply_config(config, f.name, a)
    except QAnalysisError as e:
        ss["_config_message"] = ("error", f"{f.name} was not loaded: {e}")
        return
    kept = [n for n, p in config.layers.items() if n not in unknown]
    text = (
        f"Loaded **{f.name}**: scheme {config.scheme.label()}, "
        + (f"{len(kept)} per-layer precision(s)" if kept else "every layer at the scheme's precision")
        + (f", fixes {', '.join(config.fixes)}" if config.fixes else ", no fixes")
        + "."
    )
    if unknown:
        text += f" Ignored: {', '.join(unknown)} (no such layer or module in this model)."
    ss["_config_message"] = ("warning" if unknown else "success", text)


def config_loader(a: Any) -> None:
    """Load a config.json (from ``qanalysis search``, a colleague or an export): its scheme, fixes
    and per-layer precisions become the dashboard's choice on every page."""
    st.file_uploader(
        "Load a config.json",
        type=["json"],
        key="w_config_file",
        on_change=_load_config,
        args=(a,),
        help="the scheme, the per-layer precisions and the fixes of a config written by "
        "`qanalysis search` or `export`, or downloaded here",
    )
    msg = st.session_state.get("_config_message")
    if msg:
        kind, text = msg
        {"error": st.error, "warning": st.warning, "success": st.success}[kind](text)


def ci_text(low: float | None, high: float | None) -> str:
    """" (95% CI a to b)" for a drop's paired-bootstrap interval; nothing when it is unknown."""
    import math

    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f" (95% CI {low:.2f} to {high:.2f})"
