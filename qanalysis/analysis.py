"""``analyze``: the whole analysis of one workload under one config, as one result object.

workload → graph (export, ORT plan) → calibration statistics → simulator →
per-layer sensitivity → outliers and recommendations → verdict and per-class deltas.
The CLI's ``analyze`` and the dashboard's home page both call ``analyze``; writing the
files is ``report.write_analysis``.
"""

from __future__ import annotations

import functools
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch

from .baseline import Baseline, measure_baseline
from .calibrate import TensorStats
from .errors import ConfigError, WorkloadError
from .graph import QuantGraph, prepare
from .memory import peak_rss_bytes, release
from .quantized import check_config, prepare_simulator  # noqa: F401 - re-exported: analysis' public API
from .outliers import OutlierRow, TensorSummary, find_outliers, outliers_frame, recommend
from .scheme import Config
from .sensitivity import SensitivityResult, analyze_layers
from .simulate import Simulator
from .stats import Interval, Verdict, drop_interval, one_sample_worth, verdict_with_interval
from .workload import Workload, relative, run_model

Progress = Callable[[str], None]

LAYER_COLUMNS = [
    "layer", "op_type", "params", "weight_sqnr_db", "act_sqnr_db", "output_sqnr_db", "e2e_sqnr_db",
    "e2e_kl", "metric_drop", "metric_drop_all_but", "recommendation", "recommendation_gain",
    "metric_only", "metric_all_but", "e2e_cosine", "act_clipping", "weight_mse", "act_mse", "depth_sqnr_db",
]  # fmt: skip


UNRELIABLE = "unreliable: the exported graph differs from PyTorch"

# The exported graph "agrees" with PyTorch when its outputs are within this fraction of the
# outputs' largest magnitude: float32 re-association and BatchNorm folding stay near 1e-6.
EXPORT_RTOL = 1e-3


@dataclass(frozen=True)
class ExportCheck:
    """The exported FP32 graph against the PyTorch model, on the whole evaluation data."""

    torch_metric: float
    graph_metric: float
    max_abs_diff: float
    rel_diff: float  # max |graph − torch| / max |torch|; inf when the shapes differ
    agrees: bool

    def to_dict(self) -> dict[str, Any]:
        return {"torch_metric": self.torch_metric, "graph_metric": self.graph_metric,
                "max_abs_diff": self.max_abs_diff, "rel_diff": self.rel_diff, "agrees": self.agrees}  # fmt: skip

    def message(self, metric_name: str) -> str:
        if self.max_abs_diff != self.max_abs_diff:  # NaN
            diff = "PyTorch's outputs are NaN or infinite where the graph's are not"
        elif self.rel_diff == float("inf"):
            diff = "the outputs differ in shape"
        else:
            diff = f"outputs differ by up to {self.rel_diff:.1%} of their largest value"
        return (
            f"the exported ONNX graph does not compute what the PyTorch model computes on the evaluation data "
            f"(PyTorch {self.torch_metric:.2f} vs exported graph {self.graph_metric:.2f} {metric_name}; {diff}), "
            "so every number of this run describes the exported graph, not your model. The usual cause is control "
            "flow that depends on input values (`if x.sum() > 0:`), which export fixes to the branch the first "
            "calibration batch took: write the branch with torch.cond, make it fixed (a constructor argument "
            "instead of a data test), or compute both branches and select with torch.where"
        )


def check_export(workload: Workload, graph_outputs: torch.Tensor) -> ExportCheck:
    """Run the PyTorch model on the evaluation data and compare with the exported graph's outputs."""
    torch_out = torch.cat([run_model(workload.model, x) for x, _ in workload.evaluation])
    g = graph_outputs.float()
    graph_metric = workload.score(g)
    try:
        torch_metric = workload.score(torch_out)
    except WorkloadError:  # e.g. NaN in PyTorch where the graph has none: they disagree
        return ExportCheck(float("nan"), graph_metric, float("nan"), float("inf"), False)
    if torch_out.shape != g.shape:
        return ExportCheck(torch_metric, graph_metric, float("inf"), float("inf"), False)
    max_abs = float((torch_out - g).abs().max()) if g.numel() else 0.0
    scale = float(torch_out.abs().max()) if g.numel() else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return ExportCheck(torch_metric, graph_metric, max_abs, rel, rel <= EXPORT_RTOL or max_abs <= 1e-6)


def verdict(drop: float) -> str:
    """DESIGN.md step 10: < 1 point ship INT8; 1–3 mixed precision or QAT; > 3 keep FP16.
    ``drop`` is in points, or in % relative increase for lower-is-better metrics (``verdict_drop``)."""
    from .stats import verdict_of

    return verdict_of(drop)


def verdict_drop(wl: Workload, fp32_metric: float, drop: float) -> float:
    """The number the verdict thresholds apply to: the drop in points, or for lower-is-better
    metrics (perplexity) the relative increase in % of the FP32 metric."""
    return relative(drop, fp32_metric) if wl.relative_verdict else drop


def per_class_frame(wl: Workload, fp: torch.Tensor, q: torch.Tensor) -> pd.DataFrame | None:
    if wl.task != "classification":
        return None
    y = wl.targets().reshape(-1).long()
    pf, pq = fp.argmax(1), q.argmax(1)
    rows = []
    for c in sorted(set(y.tolist())):
        m = y == c
        n = int(m.sum())
        a_f = float((pf[m] == c).float().mean() * 100)
        a_q = float((pq[m] == c).float().mean() * 100)
        name = wl.class_names[c] if wl.class_names and c < len(wl.class_names) else str(c)
        rows.append({"class": name, "n": n, "fp32_accuracy": a_f, "int8_accuracy": a_q, "delta": a_q - a_f})
    return pd.DataFrame(rows)


def flips_frame(wl: Workload, fp: torch.Tensor, q: torch.Tensor) -> pd.DataFrame | None:
    if wl.task != "classification":
        return None
    y = wl.targets().reshape(-1).long()
    pf, pq = fp.argmax(1), q.argmax(1)
    idx = torch.nonzero(pf != pq).reshape(-1).tolist()
    return pd.DataFrame(
        [
            {"index": i, "target": int(y[i]), "fp32_pred": int(pf[i]), "int8_pred": int(pq[i]),
             "fp32_correct": bool(pf[i] == y[i]), "int8_correct": bool(pq[i] == y[i])}
            for i in idx
        ],  # fmt: skip
        columns=["index", "target", "fp32_pred", "int8_pred", "fp32_correct", "int8_correct"],
    )


def library_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (importing torchvision costs seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"qanalysis": __version__, "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "onnx", "onnxruntime", "numpy", "streamlit"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass
class Analysis:
    workload: Workload
    config: Config
    qgraph: QuantGraph
    stats: dict[str, TensorStats]
    sim: Simulator
    sens: SensitivityResult
    outliers: list[OutlierRow]
    tensor_summaries: list[TensorSummary]
    baseline: Baseline | None
    per_class: pd.DataFrame | None
    flips: pd.DataFrame | None
    timings: dict[str, float] = field(default_factory=dict)
    fix_notes: list[str] = field(default_factory=list)
    export_check: ExportCheck | None = None

    @property
    def export_mismatch(self) -> bool:
        """True when the exported graph disagrees with PyTorch: no number of this run is about the model."""
        return self.export_check is not None and not self.export_check.agrees

    @property
    def warnings(self) -> list[str]:
        """What a user must read before trusting the numbers, most serious first (one sentence each)."""
        out = []
        if self.export_mismatch:
            out.append(self.export_check.message(self.workload.metric_name))
        return out + list(self.workload.warnings)

    @property
    def fp32_metric(self) -> float:
        return self.sens.fp32_metric

    @property
    def int8_metric(self) -> float:
        return self.sens.int8_metric

    @property
    def drop(self) -> float:
        return self.sens.drop

    @functools.cached_property
    def drop_interval(self) -> Interval:
        """The drop with its 95 % paired-bootstrap interval over the evaluation samples."""
        wl = self.workload
        return drop_interval(wl.evaluate, self.sens.fp32_outputs, self.sens.int8_outputs, wl.targets(),
                             higher_is_better=wl.higher_is_better)  # fmt: skip

    @property
    def verdict_detail(self) -> Verdict:
        """Judged on points, or on the relative increase in % for lower-is-better metrics."""
        return verdict_with_interval(self.drop_interval, self.fp32_metric if self.workload.relative_verdict else None)

    @property
    def drop_relative_pct(self) -> float:
        """The drop in % of the FP32 metric (for perplexity: its relative increase)."""
        return relative(self.drop, self.fp32_metric)

    @property
    def verdict(self) -> str:
        """"ship INT8" etc.; "uncertain: A or B (...)" when the interval straddles a threshold."""
        if self.export_mismatch:
            return UNRELIABLE
        return self.verdict_detail.text

    def layers_frame(self) -> pd.DataFrame:
        df = self.sens.to_frame()[LAYER_COLUMNS].copy()
        lo_hi = self.layer_drop_intervals
        df["metric_drop_ci_low"] = [lo_hi.get(n, (float("nan"),) * 2)[0] for n in df["layer"]]
        df["metric_drop_ci_high"] = [lo_hi.get(n, (float("nan"),) * 2)[1] for n in df["layer"]]
        return df

    @functools.cached_property
    def layer_drop_intervals(self) -> dict[str, tuple[float, float]]:
        """Each layer's only-this-layer drop with its 95 % paired-bootstrap interval. Computed for
        the default top-1 metric (per-sample correctness: milliseconds per layer); a spec's own
        metric would cost hundreds of metric calls per layer, so its layers get none (NaN) and the
        model-level interval stands for them."""
        from .stats import behaves_as_top1
        from .workload import top1_accuracy

        wl, sens = self.workload, self.sens
        out = {}
        if not behaves_as_top1(wl.evaluate, sens.fp32_outputs, wl.targets()):
            return out
        for name, o in sens.only_outputs.items():
            iv = drop_interval(top1_accuracy, sens.fp32_outputs, o.float(), wl.targets(), higher_is_better=wl.higher_is_better)
            out[name] = (iv.low, iv.high)
        return out

    def outliers_frame(self) -> pd.DataFrame:
        return outliers_frame(self.outliers)

    def blocks_frame(self) -> pd.DataFrame:
        """Per-layer sensitivity aggregated per block (``model.layers.3``), see ``SensitivityResult.blocks_frame``."""
        return self.sens.blocks_frame()

    def tensors_frame(self) -> pd.DataFrame:
        return pd.DataFrame([s.__dict__ for s in self.tensor_summaries])

    def depth_frame(self) -> pd.DataFrame:
        df = self.sens.to_frame()
        return pd.DataFrame({"order": range(len(df)), "layer": df["layer"], "sqnr_db": df["depth_sqnr_db"]})

    def summary(self) -> dict[str, Any]:
        wl = self.workload
        s: dict[str, Any] = {
            "model": wl.name,
            "description": wl.description,
            "task": wl.task,
            "metric_name": wl.metric_name,
            "fp32_metric": self.fp32_metric,
            "int8_metric": self.int8_metric,
            "drop": self.drop,
            "drop_ci95": [self.drop_interval.low, self.drop_interval.high],
            "higher_is_better": wl.higher_is_better,
            "drop_relative_pct": self.drop_relative_pct,
            "verdict_basis": "relative increase (%)" if wl.relative_verdict else "drop (points)",
            "one_sample_worth": one_sample_worth(wl.n_eval) if wl.task == "classification" else None,
            "verdict": self.verdict,
            "verdict_detail": self.verdict_detail.to_dict(),
            "warnings": self.warnings,
            "export_mismatch": self.export_mismatch,
            "export_check": self.export_check.to_dict() if self.export_check else None,
            "random_weights": wl.random_weights,
            "scheme": self.config.scheme.to_dict(),
            "scheme_label": self.config.scheme.label(),
            "config": self.config.to_dict(),
            "n_layers": len(self.qgraph.layers),
            "n_calibration_samples": wl.n_calib,
            "n_evaluation_samples": wl.n_eval,
            "eval_samples": wl.sample_limits.get("eval_samples"),  # --eval-samples (None: all)
            "calib_samples": wl.sample_limits.get("calib_samples"),  # --calib-samples (None: all)
            "memory_budget_bytes": self.sens.memory_budget,
            "sensitivity_bytes_per_sample": self.sens.bytes_per_sample,
            "sensitivity_chunk_samples": self.sens.chunk_samples,
            "sensitivity_kept_output_bytes": self.sens.kept_output_bytes,
            # the process' peak so far (ru_maxrss): everything the run did, the baseline's engines included
            "peak_rss_bytes": peak_rss_bytes(),
            "proxy_rank_correlation": self.sens.proxy_correlation,
            "sensitivity_node_runs": self.sens.nodes_run,
            "sensitivity_node_runs_naive": self.sens.nodes_naive,
            "n_outlier_channels": len(self.outliers),
            "float_tensors": self.sim.plan(self.config).float_tensors(self.qgraph),
            "fixes": list(self.config.fixes),
            "fix_notes": self.fix_notes,
            "timings_s": self.timings,
            "versions": library_versions(),
        }
        if self.baseline is not None:
            s["baseline"] = self.baseline.to_dict()
        blocks = self.blocks_frame()
        if (blocks["n_layers"] > 1).any():  # a model with repeated blocks: the most sensitive one
            top = blocks.sort_values(["metric_drop_sum", "min_e2e_sqnr_db"], ascending=[False, True]).iloc[0]
            s["most_sensitive_block"] = {"block": str(top["block"]), "metric_drop_sum": float(top["metric_drop_sum"]),
                                         "worst_layer": str(top["worst_layer"])}  # fmt: skip
        if self.per_class is not None and len(self.per_class):
            worst = self.per_class.sort_values("delta").iloc[0]
            s["per_class_worst"] = {"class": str(worst["class"]), "delta": float(worst["delta"])}
            s["n_flipped"] = int(len(self.flips)) if self.flips is not None else 0
        return s


def analyze(
    workload: Workload,
    config: Config | None = None,
    *,
    progress: Progress | None = None,
    baseline: bool = True,
    previews: int = 6,
) -> Analysis:
    config = config or Config()
    say = progress or (lambda m: None)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    say("exporting to ONNX and reading ONNX Runtime's quantization plan")
    qg = prepare(workload, config.scheme, progress=say)
    check_config(config, qg)
    timings["export_and_plan"] = time.perf_counter() - t
    bl = None
    if baseline:
        t = time.perf_counter()
        say("measuring the FP32 baseline (PyTorch and ONNX Runtime)")
        bl = measure_baseline(workload, qg.float_path)
        release(0)  # the engines' and the batch forwards' freed memory
        timings["baseline"] = time.perf_counter() - t
    t = time.perf_counter()
    say(f"calibrating {len(qg.quantized_tensors)} tensors on {workload.n_calib} samples ({config.scheme.act.calibration})")
    sim, stats, fix_notes, reference = prepare_simulator(workload, qg, config, progress=say)
    qg = sim.qg
    timings["calibration_and_fixes"] = time.perf_counter() - t
    t = time.perf_counter()
    say(f"simulating {len(qg.layers)} layers on {workload.n_eval} evaluation samples")
    sens = analyze_layers(workload, sim, config, progress=say)
    if reference is not None:  # fixes changed the float weights: FP32 means the original model
        sens.rebase(workload.score(reference), reference)
    timings["sensitivity"] = time.perf_counter() - t
    t = time.perf_counter()
    export_check = check_export(workload, sens.fp32_outputs)
    if not export_check.agrees:
        say("warning: " + export_check.message(workload.metric_name))
    timings["export_check"] = time.perf_counter() - t
    t = time.perf_counter()
    outl, summaries = find_outliers(sim, stats)
    recommend(workload, sim, config, sens, summaries, stats, max_previews=previews, progress=say)
    timings["outliers_and_recommendations"] = time.perf_counter() - t
    return Analysis(
        fix_notes=fix_notes,
        workload=workload,
        config=config,
        qgraph=qg,
        stats=stats,
        sim=sim,
        sens=sens,
        outliers=outl,
        tensor_summaries=summaries,
        baseline=bl,
        per_class=per_class_frame(workload, sens.fp32_outputs, sens.int8_outputs),
        flips=flips_frame(workload, sens.fp32_outputs, sens.int8_outputs),
        timings=timings,
        export_check=export_check,
    )


@dataclass(frozen=True)
class ConfigResult:
    """A config's simulated metric on the evaluation data (same calibration as the analysis)."""

    config: Config
    metric: float
    drop: float
    float_layers: list[str]
    float_tensors: list[str]
    weight_bytes: int  # int8/int4 weights packed, float layers at 2 or 4 bytes per parameter
    drop_ci95: tuple[float, float] = (float("nan"), float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "drop": self.drop, "drop_ci95": list(self.drop_ci95), "float_layers": self.float_layers,
                "float_tensors": self.float_tensors, "weight_bytes": self.weight_bytes,
                "config": self.config.to_dict()}  # fmt: skip


def simulate_config(a: Analysis, config: Config) -> ConfigResult:
    """Metric of ``config`` (e.g. some layers kept in FP16) under the analysis' calibration."""
    check_config(config, a.qgraph)
    if config.scheme != a.config.scheme:
        raise ConfigError("simulate_config needs the analysis' scheme; run analyze() again for another scheme")
    sim = a.sim
    plan = sim.plan(config)
    q = sim.outputs(a.workload.evaluation, plan)
    metric = a.workload.score(q)
    iv = drop_interval(a.workload.evaluate, a.sens.fp32_outputs, q, a.workload.targets(), max_seconds=5.0,
                       higher_is_better=a.workload.higher_is_better)  # fmt: skip
    nbytes = 0
    for l in a.qgraph.layers:
        bits = sim.weight_bits(config, l)
        p = config.layers.get(l.name) or config.layers.get(l.module)
        per = bits / 8 if bits else (2 if p == "fp16" else 4)
        nbytes += int(l.params * per)
    return ConfigResult(
        config=config,
        metric=metric,
        drop=a.workload.drop(a.fp32_metric, metric),
        float_layers=[l.name for l in a.qgraph.layers if sim.weight_bits(config, l) is None],
        float_tensors=plan.float_tensors(a.qgraph),
        weight_bytes=nbytes,
        drop_ci95=(iv.low, iv.high),
    )
