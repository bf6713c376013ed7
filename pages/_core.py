"""Cached calls into the core: every page reaches the core through these functions only.

Switching pages or touching a widget never recomputes an analysis.

Caching: ``st.cache_resource`` holds the heavy, shared objects (the workload, the
``Analysis`` keyed on the source string, the data folder and the config JSON, the FP32
baseline keyed on the workload alone, the exported engines keyed on the config and mode);
``st.cache_data`` holds what pages derive from them (frames, simulated configs, searches,
distributions, graph views, report files), keyed on the same analysis key.

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

import pandas as pd
import streamlit as st

from pages._state import Key, analysis_key, deploy_config_json
from qanalysis.analysis import Analysis, ConfigResult, analyze, simulate_config
from qanalysis.baseline import Baseline, measure_baseline
from qanalysis.channels import ChannelView, channel_view
from qanalysis.compare import FORMATS, Comparison, compare
from qanalysis.errors import QAnalysisError
from qanalysis.export import ExportReport, export
from qanalysis.graphview import GraphView, graph_view
from qanalysis.outliers import Distribution, distribution
from qanalysis.per_sample import TaskView, task_view
from qanalysis.report import write_analysis, write_json
from qanalysis.scheme import Config
from qanalysis.search import SearchResult, search
from qanalysis.workload import Workload, load_workload

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


def current_workload() -> Workload:
    """The committed workload alone (no analysis: pages that only build engines start sooner);
    a user-facing error is shown with ``st.error`` and stops the page."""
    source, data, _, stamp = analysis_key()
    try:
        return cached_workload(source, data, stamp)
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
    """``qanalysis.search.search`` (engines profiled in a temporary folder, removed afterwards).
    No whole-model fixes: here they are the Fixes page's choice, already in the analysis' config."""
    with tempfile.TemporaryDirectory(prefix="qanalysis-search-") as d:
        return search(_a, max_drop, objective=objective, progress=_progress, workdir=Path(d), try_fixes=False)


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


@st.cache_data(show_spinner=False, max_entries=8)
def cached_formats(source: str, data: str | None, stamp: float, labels: tuple[str, ...], _progress=None) -> Comparison:
    """``qanalysis compare`` of the formats ``labels`` (``compare.FORMATS``): each built as a
    real engine in a temporary folder (removed afterwards) and measured; the table stays."""
    wl = cached_workload(source, data, stamp)
    with tempfile.TemporaryDirectory(prefix="qanalysis-formats-") as d:
        return compare(wl, {label: FORMATS[label] for label in labels}, Path(d), progress=_progress, repeats=10)


def run_formats(labels: tuple[str, ...]) -> Comparison:
    """The formats side by side with a progress box on a miss; a QAnalysisError propagates."""
    source, data, _, stamp = analysis_key()
    return with_progress(
        ("formats", source, data, stamp, labels),
        f"Building and measuring {len(labels)} format(s)",
        lambda p: cached_formats(source, data, stamp, labels, _progress=p),
    )


# --------------------------------------------------------------------------- views for the pages


@st.cache_data(show_spinner=False, max_entries=16)
def graph(key: Key, _a: Analysis) -> GraphView:
    """The layers and the data flow between them (``qanalysis.graphview.graph_view``)."""
    return graph_view(_a)


@st.cache_data(show_spinner=False, max_entries=64)
def channel(key: Key, layer: str, tensor: str, index: int, _a: Analysis) -> ChannelView:
    """One channel against its own quantization grid (``qanalysis.channels.channel_view``)."""
    return channel_view(_a.sim, _a.stats, layer, tensor, index)


@st.cache_data(show_spinner="scoring each sample …", max_entries=16)
def task(key: Key, _a: Analysis) -> TaskView:
    """Per-sample results for regression and other tasks (``qanalysis.per_sample.task_view``)."""
    return task_view(_a)
