"""Who pays for the drop, sample by sample, for tasks that are not classification.

Classification has its per-class deltas and flipped predictions (``analysis.per_class_frame``,
``flips_frame``). The other tasks get what fits them:

- **regression**: each sample's target, FP32 and INT8 predictions and residuals
  (prediction − target), so the error distribution can be drawn;
- **other** (retrieval, ranking, any metric computed on all outputs at once): each sample's
  output error (relative L2 ``‖q − f‖ / ‖f‖`` and cosine between the INT8 and FP32 output
  rows), and for the worst samples the metric's change when that one sample's output is
  restored to FP32: ``metric(q with row i := f_i) − metric(q)``. The spec's own
  ``evaluate`` is called on the whole output, as always, so recall@k or mAP-style metrics
  keep their meaning; a positive value says the sample's quantization error cost metric.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from .errors import WorkloadError


@dataclass(frozen=True)
class TaskView:
    """``samples``: one row per evaluation sample (columns depend on ``task``); ``note``: how to read it."""

    task: str
    metric_name: str
    samples: pd.DataFrame
    note: str = ""


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.detach().double().reshape(x.shape[0], -1)


def regression_frame(outputs_fp32: torch.Tensor, outputs_int8: torch.Tensor, targets: torch.Tensor) -> pd.DataFrame:
    """Per sample: target, predictions and residuals (multi-output rows: the L2 norm of the residual)."""
    f, q, t = _rows(outputs_fp32), _rows(outputs_int8), _rows(targets)
    if f.shape[1] == 1:
        return pd.DataFrame({
            "index": range(f.shape[0]), "target": t[:, 0].tolist(), "fp32_pred": f[:, 0].tolist(),
            "int8_pred": q[:, 0].tolist(), "fp32_residual": (f - t)[:, 0].tolist(),
            "int8_residual": (q - t)[:, 0].tolist(), "int8_minus_fp32": (q - f)[:, 0].tolist(),
        })  # fmt: skip
    return pd.DataFrame({
        "index": range(f.shape[0]), "fp32_residual": (f - t).norm(dim=1).tolist(),
        "int8_residual": (q - t).norm(dim=1).tolist(), "int8_minus_fp32": (q - f).norm(dim=1).tolist(),
    })  # fmt: skip


def sample_errors_frame(
    outputs_fp32: torch.Tensor,
    outputs_int8: torch.Tensor,
    score=None,
    *,
    max_restored: int = 200,
    max_seconds: float = 10.0,
) -> pd.DataFrame:
    """Per sample: INT8-vs-FP32 output error, and (for the ``max_restored`` worst, within
    ``max_seconds``) ``metric_restored``: the metric change when that sample's output is FP32's.
    ``score(outputs) -> float`` is the workload's metric on concatenated outputs."""
    f, q = _rows(outputs_fp32), _rows(outputs_int8)
    rel = (q - f).norm(dim=1) / f.norm(dim=1).clamp_min(1e-12)
    cos = torch.nn.functional.cosine_similarity(q, f, dim=1, eps=1e-12)
    df = pd.DataFrame({"index": range(f.shape[0]), "output_rel_error": rel.tolist(), "output_cosine": cos.tolist()})
    df["metric_restored"] = float("nan")
    if score is None or not len(df):
        return df
    base = score(outputs_int8)
    t0 = time.perf_counter()
    for i in torch.argsort(rel, descending=True)[:max_restored].tolist():
        if time.perf_counter() - t0 > max_seconds:
            break
        swapped = outputs_int8.clone()
        swapped[i] = outputs_fp32[i]
        try:
            df.loc[i, "metric_restored"] = score(swapped) - base
        except WorkloadError:
            break
    return df


def task_view(a) -> TaskView:
    """What the Summary page shows beside the verdict for regression and other tasks."""
    wl = a.workload
    f, q = a.sens.fp32_outputs, a.sens.int8_outputs
    if wl.task == "classification":
        return TaskView(wl.task, wl.metric_name, pd.DataFrame(), "per-class deltas and flipped predictions")
    if wl.task == "regression":
        return TaskView(
            wl.task, wl.metric_name, regression_frame(f, q, wl.targets()),
            "residual = prediction − target; int8_minus_fp32 is what quantization alone changed",
        )  # fmt: skip
    return TaskView(
        wl.task, wl.metric_name, sample_errors_frame(f, q, wl.score),
        f"metric_restored: how much {wl.metric_name} changes when only this sample's output is restored to FP32 "
        "(computed for the samples with the largest output error)",
    )  # fmt: skip
