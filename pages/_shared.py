"""What every page shares: session-state keys, the cached core calls, and table helpers.

Not a page itself: ``app.py`` registers the pages explicitly with ``st.navigation``.
Pages call the core only through the cached functions below, so switching pages or
touching a widget never recomputes an analysis.

Caching: ``st.cache_resource`` holds the heavy, shared objects (the workload, the
``Analysis`` keyed on the source string, the data folder and the config JSON, the FP32
baseline keyed on the workload alone, the exported engines keyed on the config and mode);
``st.cache_data`` holds what pages derive from them (frames, simulated configs, searches,
distributions, report files), keyed on the same analysis key.

First load: the analysis runs without the FP32 baseline (PyTorch/ONNX Runtime timings);
the Summary page measures it after the verdict is on screen (``baseline``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import pandas as pd
import streamlit as st

from qanalysis.analysis import Analysis, ConfigResult, analyze, simulate_config
from qanalysis.baseline import Baseline, measure_baseline
from qanalysis.errors import QAnalysisError
from qanalysis.export import ExportReport, export
from qanalysis.outliers import Distribution, distribution
from qanalysis.report import write_analysis, write_json
from qanalysis.scheme import Config
from qanalysis.search import SearchResult, search
from qanalysis.workload import Workload, list_samples, load_workload

# Session-state keys shared across pages (documented in app.py).
SOURCE = "source"
DATA = "data"
CONFIG_JSON = "config_json"
FLOAT_LAYERS = "float_layers"
FOCUS_LAYER = "focus_layer"
FIXES = "fixes"
SEARCH = "search"
EXPORT_MODE = "export_mode"
ROUTED = "_routed"  # set by app.py: this session went through the router
DEEP_LINK = "_deep_link"  # the page a session asked for before it went through the router

Key = tuple[str, "str | None", str, float]

VERDICT_COLOR = {"ship INT8": "green", "mixed precision or QAT": "orange", "keep FP16": "red"}
VERDICT_HELP = {
    "ship INT8": "drop below 1 point: ship INT8.",
    "mixed precision or QAT": "drop of 1–3 points: keep the most sensitive layers in FP16 (Mixed precision page) or fine-tune with QAT.",
    "keep FP16": "drop above 3 points: keep FP16, or fix the layers named on the Layer error page first.",
    "unreliable: the exported graph differs from PyTorch": "the numbers below describe the exported graph, not your model (see the warning).",
}


def default_source() -> str:
    samples = list_samples()
    return f"sample:{samples[0]}" if samples else ""


def init_state() -> None:
    ss = st.session_state
    if not ss.get(ROUTED):
        # Opened straight on a page on a fresh server: Streamlit's legacy ``pages/`` mode runs the
        # page file alone, without app.py's sidebar. Go through the router; it comes back here.
        ss[DEEP_LINK] = urlparse(st.context.url or "").path.rstrip("/").rsplit("/", 1)[-1]
        st.switch_page("app.py")
    ss.setdefault(SOURCE, default_source())
    ss.setdefault(DATA, None)
    ss.setdefault(CONFIG_JSON, Config().to_json())
    ss.setdefault(FLOAT_LAYERS, [])
    ss.setdefault(FOCUS_LAYER, None)
    ss.setdefault(FIXES, [])
    ss.setdefault(SEARCH, None)
    ss.setdefault(EXPORT_MODE, "int8")


def _stamp(source: str) -> float:
    """A spec file's mtime, so that editing the spec and pressing Run reloads it."""
    if source.startswith(("sample:", "torchvision:")):
        return 0.0
    p = Path(source)
    return p.stat().st_mtime if p.is_file() else 0.0


def analysis_key(config_json: str | None = None) -> Key:
    """The cache key of the committed workload under ``config_json`` (default: the committed scheme)."""
    init_state()
    ss = st.session_state
    return (ss[SOURCE], ss[DATA], config_json or ss[CONFIG_JSON], _stamp(ss[SOURCE]))


def current_config() -> Config:
    return Config.from_dict(json.loads(st.session_state[CONFIG_JSON]))


def fixes_config_json(fixes: list[str] | tuple[str, ...]) -> str:
    """The committed scheme with ``fixes`` applied (the committed config itself when there are none)."""
    cj = st.session_state[CONFIG_JSON]
    if not fixes:
        return cj
    return Config.from_dict({**json.loads(cj), "fixes": list(fixes)}).to_json()


def deploy_config_json() -> str:
    """Scheme + the fixes chosen on the Fixes page: what Mixed precision and Export work on."""
    return fixes_config_json(st.session_state.get(FIXES) or [])


# --------------------------------------------------------------------------- heavy, shared


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_workload(source: str, data: str | None, stamp: float) -> Workload:
    return load_workload(source, data)


@st.cache_resource(show_spinner=False, max_entries=6)
def cached_analysis(
    source: str, data: str | None, config_json: str, stamp: float, _progress=None
) -> Analysis:
    wl = cached_workload(source, data, stamp)
    # No FP32 baseline here: it is timed afterwards (``baseline``), so the verdict shows sooner.
    return analyze(
        wl, Config.from_dict(json.loads(config_json)), progress=_progress, baseline=False
    )


@st.cache_resource(show_spinner=False)
def _computed() -> set:
    """Keys of slow results already computed in this server process (their status box is skipped)."""
    return set()


T = TypeVar("T")


def with_progress(key: Any, what: str, call: Callable[[Callable[[str], None] | None], T]) -> T:
    """``call(progress)``, a cached computation, inside a status box that shows its progress
    the first time ``key`` is computed in this process (a cache hit shows nothing).
    A QAnalysisError marks the box as failed and propagates."""
    # The box's slot exists on every run, hit or miss: elements after it keep their positions, so
    # a rerun never shows the previous run's elements shifted by one (greyed, until it ends).
    slot = st.container()
    if key in _computed():
        return call(None)
    t0 = time.perf_counter()
    with slot, st.status(f"{what} …", expanded=False) as box:
        # ``status.update`` enqueues its message directly, so it is safe inside a cached call
        # (nothing is recorded for replay on a cache hit).
        def progress(msg: str) -> None:
            box.update(label=f"{what}: {msg} ({time.perf_counter() - t0:.0f} s)")

        try:
            result = call(progress)
        except QAnalysisError:
            box.update(label=f"{what}: failed", state="error")
            raise
        box.update(label=f"{what}: done in {time.perf_counter() - t0:.1f} s", state="complete")
    _computed().add(key)
    return result


def current_analysis(config_json: str | None = None) -> Analysis:
    """The analysis of the committed workload under ``config_json`` (default: the committed
    scheme), computed with progress on a miss.

    A user-facing error (bad path, unknown layer, ...) is shown with ``st.error`` and stops the page.
    """
    key = analysis_key(config_json)
    source, data, config_json, stamp = key
    fixes = Config.from_dict(json.loads(config_json)).fixes
    what = f"Analyzing {source}" + (f" with {', '.join(fixes)}" if fixes else "")
    try:
        return with_progress(
            key, what, lambda p: cached_analysis(source, data, config_json, stamp, _progress=p)
        )
    except QAnalysisError as e:
        st.error(str(e))
        st.stop()


def deploy_analysis() -> Analysis:
    """The analysis of the committed scheme with the fixes chosen on the Fixes page."""
    return current_analysis(deploy_config_json())


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_baseline(source: str, data: str | None, stamp: float, _a: Analysis) -> Baseline:
    """The FP32 model's metric, size and latency in PyTorch and ONNX Runtime (scheme-independent)."""
    return measure_baseline(_a.workload, _a.qgraph.float_path)


def baseline(key: Key, a: Analysis) -> Baseline | None:
    """The FP32 baseline of an analysis without fixes (a fixed model's float graph is not the FP32
    reference); None when it cannot be measured."""
    if a.config.fixes:
        return None
    source, data, _, stamp = key
    try:
        return cached_baseline(source, data, stamp, a)
    except QAnalysisError:
        return None


def with_baseline(key: Key, a: Analysis) -> Analysis:
    """The analysis as ``qanalysis analyze`` returns it, the FP32 baseline included (a shallow copy)."""
    return a if a.baseline is not None else dataclasses.replace(a, baseline=baseline(key, a))


# --------------------------------------------------------------------------- light, derived


@st.cache_data(show_spinner=False, max_entries=16)
def frames(key: Key, _a: Analysis) -> dict[str, pd.DataFrame | None]:
    return {
        "layers": _a.layers_frame(),
        "outliers": _a.outliers_frame(),
        "tensors": _a.tensors_frame(),
        "depth": _a.depth_frame(),
        "per_class": _a.per_class,
        "flips": _a.flips,
    }


@st.cache_data(show_spinner=False, max_entries=16)
def summary(key: Key, _a: Analysis) -> dict[str, Any]:
    """``Analysis.summary()`` (without the baseline, which ``baseline`` measures lazily)."""
    return _a.summary()


@st.cache_data(show_spinner="simulating the config …", max_entries=64)
def simulate(key: Key, layers: tuple[tuple[str, str], ...], _a: Analysis) -> ConfigResult:
    """``simulate_config`` for the analysis' scheme with per-layer precisions ``layers``."""
    return simulate_config(_a, _a.config.with_layers(dict(layers)))


def simulate_float(key: Key, float_layers: list[str], a: Analysis) -> ConfigResult:
    """The analysis' config with ``float_layers`` kept in FP16."""
    return simulate(key, tuple((name, "fp16") for name in sorted(float_layers)), a)


def simulate_all_fp32(key: Key, a: Analysis) -> ConfigResult:
    """Every layer in float: the FP32 reference for weight bytes."""
    return simulate(key, tuple((layer.name, "fp32") for layer in a.qgraph.layers), a)


@st.cache_data(show_spinner=False, max_entries=64)
def tensor_distribution(key: Key, layer: str, tensor: str, _a: Analysis) -> Distribution:
    return distribution(_a.sim, _a.stats, layer, tensor)


@st.cache_data(show_spinner="writing the report …", max_entries=4)
def artifacts(key: Key, _a: Analysis) -> dict[str, bytes]:
    """The files ``qanalysis analyze`` writes (layers.csv, outliers.csv, summary.json, report.html, ...)."""
    with tempfile.TemporaryDirectory(prefix="qanalysis-app-") as d:
        paths = write_analysis(with_baseline(key, _a), Path(d))
        return {p.name: p.read_bytes() for p in paths}


# --------------------------------------------------------------------------- search and export


@st.cache_data(show_spinner=False, max_entries=16)
def cached_search(
    key: Key, max_drop: float, objective: str, _a: Analysis, _progress=None
) -> SearchResult:
    """``qanalysis.search.search`` (engines profiled in a temporary folder, removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="qanalysis-search-") as d:
        return search(_a, max_drop, objective=objective, progress=_progress, workdir=Path(d))


def run_search(key: Key, a: Analysis, max_drop: float, objective: str) -> SearchResult:
    """The search with a progress box on a miss; a QAnalysisError propagates."""
    return with_progress(
        ("search", key, max_drop, objective),
        f"Searching mixed precision (drop ≤ {max_drop:g}, {objective})",
        lambda p: cached_search(key, max_drop, objective, a, _progress=p),
    )


@dataclasses.dataclass(frozen=True)
class Built:
    """An export: the verification report and the folder holding the files it wrote."""

    report: ExportReport
    folder: Path

    def files(self) -> dict[str, Path]:
        return {p.name: p for p in sorted(self.folder.iterdir()) if not p.name.startswith(".")}


def _release_export(built: Built) -> None:
    shutil.rmtree(built.folder, ignore_errors=True)


@st.cache_resource(show_spinner=False)
def _export_root() -> tempfile.TemporaryDirectory:
    """One temporary folder per server process for the exports (removed at exit)."""
    return tempfile.TemporaryDirectory(prefix="qanalysis-app-export-")


@st.cache_resource(show_spinner=False, max_entries=6, on_release=_release_export)
def cached_export(
    source: str, data: str | None, stamp: float, config_json: str, mode: str, _progress=None
) -> Built:
    """``qanalysis export`` of ``config_json`` into a fresh folder: the engines, config.json, export.json."""
    wl = cached_workload(source, data, stamp)
    folder = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=_export_root().name))
    try:
        rep = export(
            wl, Config.from_dict(json.loads(config_json)), folder, mode=mode, progress=_progress
        )
        write_json(rep.config, folder / "config.json")
        write_json(rep.to_dict(), folder / "export.json")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Built(rep, folder)


def export_key(config_json: str, mode: str) -> tuple:
    source, data, _, stamp = analysis_key()
    return ("export", source, data, stamp, config_json, mode)


def exported(config_json: str, mode: str) -> bool:
    """Whether this config was built in this server process (its result is cached)."""
    return export_key(config_json, mode) in _computed()


def build_export(config_json: str, mode: str) -> Built:
    """Build (or fetch) the engines of ``config_json``; a QAnalysisError (e.g. ExportError) propagates."""
    _, source, data, stamp, _, _ = key = export_key(config_json, mode)
    return with_progress(
        key,
        f"Building the {mode} engine",
        lambda p: cached_export(source, data, stamp, config_json, mode, _progress=p),
    )


def ranked_layers(layers: pd.DataFrame) -> pd.DataFrame:
    """Most sensitive first: the larger of the two measured drops, then the lowest model-output SQNR."""
    worst = layers[["metric_drop", "metric_drop_all_but"]].max(axis=1)
    ranked = layers.assign(_worst=worst).sort_values(
        ["_worst", "e2e_sqnr_db"], ascending=[False, True]
    )
    return ranked.drop(columns="_worst")


def float_layers(a: Analysis) -> list[str]:
    """The layers kept in FP16 (shared across pages), restricted to this analysis' layers."""
    names = {layer.name for layer in a.qgraph.layers}
    return [n for n in st.session_state.get(FLOAT_LAYERS, []) if n in names]


def config_with_float_layers(a: Analysis) -> Config:
    """The analysis' config (scheme and fixes) with the shared FP16 selection."""
    return a.config.with_layers({n: "fp16" for n in float_layers(a)})


# --------------------------------------------------------------------------- presentation

COLUMNS = {
    "params": st.column_config.NumberColumn("params", format="%d"),
    "weight_sqnr_db": st.column_config.NumberColumn("weight SQNR (dB)", format="%.1f"),
    "act_sqnr_db": st.column_config.NumberColumn("act SQNR (dB)", format="%.1f"),
    "output_sqnr_db": st.column_config.NumberColumn("output SQNR (dB)", format="%.1f"),
    "e2e_sqnr_db": st.column_config.NumberColumn("model-output SQNR (dB)", format="%.1f"),
    "depth_sqnr_db": st.column_config.NumberColumn("SQNR in full INT8 (dB)", format="%.1f"),
    "e2e_kl": st.column_config.NumberColumn("model-output KL", format="%.2e"),
    "e2e_cosine": st.column_config.NumberColumn("model-output cosine", format="%.5f"),
    "metric_drop": st.column_config.NumberColumn("drop, only this layer", format="%.3f"),
    "metric_drop_all_but": st.column_config.NumberColumn("recovered in float", format="%.3f"),
    "recommendation_gain": st.column_config.NumberColumn("measured gain", format="%.2f"),
    "metric_only": st.column_config.NumberColumn("metric, only this layer", format="%.2f"),
    "metric_all_but": st.column_config.NumberColumn("metric, all but this", format="%.2f"),
    "act_clipping": st.column_config.NumberColumn("act clipping", format="%.2e"),
    "weight_mse": st.column_config.NumberColumn("weight MSE", format="%.2e"),
    "act_mse": st.column_config.NumberColumn("act MSE", format="%.2e"),
    "recommendation": st.column_config.TextColumn("recommendation", width="large"),
    "absmax": st.column_config.NumberColumn("absmax", format="%.4g"),
    "median_channel_absmax": st.column_config.NumberColumn("median channel absmax", format="%.4g"),
    "ratio": st.column_config.NumberColumn("ratio to median", format="%.1f"),
    "max_ratio": st.column_config.NumberColumn("max ratio", format="%.1f"),
    "kurtosis": st.column_config.NumberColumn("kurtosis", format="%.2f"),
    "fp32_accuracy": st.column_config.NumberColumn("FP32 acc.", format="%.2f"),
    "int8_accuracy": st.column_config.NumberColumn("INT8 acc.", format="%.2f"),
    "delta": st.column_config.NumberColumn("Δ (points)", format="%+.2f"),
    "n_outliers": st.column_config.NumberColumn("outlier channels", format="%d"),
    "metric": st.column_config.NumberColumn("metric", format="%.2f"),
    "drop": st.column_config.NumberColumn("drop", format="%.2f"),
    "weight_bytes": st.column_config.NumberColumn("weight bytes", format="%d"),
    "fp32_pred": st.column_config.TextColumn("FP32 pred."),
    "int8_pred": st.column_config.TextColumn("INT8 pred."),
    "fp32_correct": st.column_config.CheckboxColumn("FP32 ✓"),
    "int8_correct": st.column_config.CheckboxColumn("INT8 ✓"),
}


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
    return f"{latency['mean_ms']:.3g} ms"


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


def page_header(title: str, a: Analysis) -> None:
    st.title(title)
    wl = a.workload
    st.caption(
        f"**{wl.name}** · {wl.task} · {wl.n_eval} evaluation samples · {wl.metric_name} · "
        f"scheme {a.config.scheme.label()}"
    )
