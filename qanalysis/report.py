"""Writing results: CSV, JSON and a self-contained HTML report. Nothing is computed here.

Every file is written to a temporary name in the target folder, then renamed, so a
failed run never leaves a half-written file.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import figures
from .errors import OutputError


def _clean(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda t: df.to_csv(t, index=False))


def write_json(obj: Any, path: Path) -> Path:
    return atomic_write(path, lambda t: t.write_text(json.dumps(_clean(obj), indent=2, default=str)))


def write_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda t: t.write_text(text))


def _table(df: pd.DataFrame, max_rows: int = 200) -> str:
    """Readable column names (the dashboard's), empty cells for missing values, scrolling when wide."""
    shown = df.head(max_rows).rename(columns=lambda c: figures.COLUMN_LABELS.get(c, str(c).replace("_", " ")))
    body = shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="t", na_rep="")
    return f'<div class="scroll">{body}</div>'



def html_report(title: str, cards: dict[str, str], figs: list, tables: dict[str, pd.DataFrame], notes: list[str] = ()) -> str:
    """One self-contained page: plotly.js inlined once, every figure and table after it."""
    parts = [f"<h1>{html.escape(title)}</h1>", '<div class="cards">']
    for k, v in cards.items():
        parts.append(f'<div class="card"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div></div>')
    parts.append("</div>")
    for n in notes:
        parts.append(f"<p>{html.escape(n)}</p>")
    for i, f in enumerate(figs):
        parts.append(f.to_html(full_html=False, include_plotlyjs=(i == 0)))
    for name, df in tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>{_table(df)}")
    style = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:8px;padding:.6em 1em}
.k{color:#666;font-size:.85em}.v{font-size:1.3em;font-weight:600}
table.t{border-collapse:collapse;font-size:.85em}table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #eee}
.scroll{overflow-x:auto;max-width:100%}table.t td{max-width:32em;overflow-wrap:anywhere}"""
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"


def analysis_cards(summary: dict) -> dict[str, str]:
    ci = summary.get("drop_ci95")
    ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else ""
    c = {
        "FP32 metric": f"{summary['fp32_metric']:.2f}",
        "INT8 metric (simulated)": f"{summary['int8_metric']:.2f}",
    }
    if summary.get("higher_is_better", True):
        c["drop (points)"] = f"{summary['drop']:.2f}{ci_text}"
    else:  # perplexity: a rise is the drop, judged relative to FP32
        c["increase"] = f"{summary['drop']:+.3f}{ci_text} ({summary['drop_relative_pct']:+.2f} %)"
    c["verdict"] = summary["verdict"]
    c["scheme"] = summary["scheme_label"]
    b = summary.get("baseline")
    if b:
        lat = b["ort_latency_b1"]
        c["FP32 ORT latency"] = (f"{lat['median_ms']:.3f} ms median (IQR {lat['iqr_ms']:.3f})"
                                 + (", unstable" if lat.get("unstable") else ""))  # fmt: skip
        c["FP32 size"] = f"{b['onnx_bytes'] / 1e6:.2f} MB"
    return c


def _verdict_note(s: dict) -> str:
    if s.get("higher_is_better", True):
        return f"Verdict: {s['verdict']} (drop {s['drop']:.2f} points; < 1 ship INT8, 1–3 mixed precision or QAT, > 3 keep FP16)."
    return (f"Verdict: {s['verdict']} ({s['metric_name']} {s['fp32_metric']:.3f} → {s['int8_metric']:.3f}, a relative increase of "
            f"{s['drop_relative_pct']:+.2f} %; lower is better: < 1 % ship INT8, 1–3 % mixed precision or QAT, > 3 % keep FP16).")


def write_analysis(a, out: Path, repeats=None) -> list[Path]:
    """layers.csv, outliers.csv, summary.json, report.html (+ per_class.csv, flips.csv, and
    repeats.csv when the analysis was repeated over calibration draws)."""
    layers = a.layers_frame()
    summary = a.summary()
    if repeats is not None:
        summary["repeats"] = repeats.summary()
    blocks = a.blocks_frame()
    written = [
        write_csv(layers, out / "layers.csv"),
        write_csv(blocks, out / "blocks.csv"),
        write_csv(a.outliers_frame(), out / "outliers.csv"),
    ]
    unit = "metric points" if a.workload.higher_is_better else f"{a.workload.metric_name.split(' (')[0]} increase"
    figs = [figures.sensitivity_bars(layers, unit), figures.sqnr_lines(layers), figures.depth_growth(a.depth_frame()),
            figures.proxy_scatter(layers)]  # fmt: skip
    tables = {"Layers": layers, "Blocks (layers grouped by their block)": blocks, "Outlier channels": a.outliers_frame(),
              "Tensors": a.tensors_frame()}  # fmt: skip
    if a.per_class is not None:
        written.append(write_csv(a.per_class, out / "per_class.csv"))
        written.append(write_csv(a.flips, out / "flips.csv"))
        figs.append(figures.per_class_bars(a.per_class))
        tables["Per class"] = a.per_class
    if repeats is not None:
        written.append(write_csv(repeats.layers, out / "repeats.csv"))
        tables["Layers over repeated calibration draws (mean, std)"] = repeats.layers
    corr = summary["proxy_rank_correlation"]
    fmt = lambda d: ", ".join(f"{k} {v:.2f}" if math.isfinite(v) else f"{k} n/a (no variance)" for k, v in d.items())  # noqa: E731
    notes = [*(f"Warning: {w}" for w in summary.get("warnings", [])),
        "How well each cheap proxy predicted the end-to-end ranking (Spearman, +1 = perfect). "
        f"Against the metric drop: {fmt(corr['vs_metric_drop'])}. Against the model-output SQNR: {fmt(corr['vs_e2e_sqnr'])}.",
        _verdict_note(summary),
    ]
    page = html_report(f"qanalysis — {summary['model']}", analysis_cards(summary), figs, tables, notes)
    written.append(write_text(page, out / "report.html"))
    written.append(write_json(summary, out / "summary.json"))
    return written


def write_search(res, a, out: Path) -> list[Path]:
    """pareto.csv, search.json, config.json and report.html (the dashboard's Pareto figures) of a
    mixed-precision search ``res`` on the analysis ``a``."""
    df = res.frame()
    s = res.summary()
    written = [write_csv(df, out / "pareto.csv"), write_json(s, out / "search.json"),
               write_json(res.chosen.to_dict(), out / "config.json")]  # fmt: skip
    args = {"metric_name": a.workload.metric_name, "fp32_metric": a.fp32_metric, "max_drop": s.get("max_drop", 0.0),
            "higher_is_better": a.workload.higher_is_better}
    figs = [figures.pareto_figure(df, "latency", measured_latency_ms=s.get("measured_latency_ms"), **args),
            figures.pareto_figure(df, "size", **args)]  # fmt: skip
    chosen = res.chosen.float_layers()
    cards = {"FP32 metric": f"{a.fp32_metric:.2f}", "all-INT8 drop": f"{a.drop:.2f}",
             "chosen: float layers": str(len(chosen)), "configs evaluated": str(len(df))}  # fmt: skip
    notes = [f"Chosen config keeps {', '.join(chosen) or 'no layer'} in float.", *s.get("notes", [])]
    page = html_report(f"qanalysis search — {a.workload.name}", cards, figs, {"Evaluated configs": df}, notes)
    written.append(write_text(page, out / "report.html"))
    return written
