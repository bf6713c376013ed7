"""Repeated runs: is the INT8 metric, and the ranking of layers, stable under another draw of
the calibration data? (research plan §8: mean ± variance over repeated runs, fixed seeds)

Repeat 0 uses the workload's own calibration samples; repeat k > 0 draws as many samples
with replacement from them (a bootstrap of the calibration set, seeded by k) and runs the
whole analysis again. Per layer, the mean ± std of its sensitivity and of its rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd
import torch

from .scheme import Config
from .workload import Workload, worse_by

Progress = Callable[[str], None]


def resample_calibration(wl: Workload, seed: int) -> Workload:
    """The workload with its calibration samples redrawn with replacement (seed 0: unchanged)."""
    if seed == 0:
        return wl
    batches = wl.calibration
    n_inputs = len(batches[0])
    flat = [torch.cat([b[i] for b in batches]) for i in range(n_inputs)]
    n = int(flat[0].shape[0])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n,), generator=g)
    sizes = [int(b[0].shape[0]) for b in batches]
    out, start = [], 0
    for s in sizes:
        take = idx[start : start + s]
        out.append(tuple(t[take] for t in flat))
        start += s
    return dataclasses.replace(wl, calibration=out)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Fixes that train (AdaRound, QAT) draw from ``seed``; the global RNG is restored after."""
    from .fixes import adaround, qat

    state = torch.random.get_rng_state()
    saved = (adaround.SEED, qat.SEED)
    adaround.SEED, qat.SEED = seed, seed
    try:
        yield
    finally:
        adaround.SEED, qat.SEED = saved
        torch.random.set_rng_state(state)


@dataclass
class Repeats:
    """K analyses of one workload and config under K calibration draws."""

    int8_metrics: list[float]
    fp32_metric: float
    layers: pd.DataFrame  # layer, metric_drop_mean/std, e2e_sqnr_db_mean/std, rank_mean/std
    rank_stability: float  # mean Spearman correlation of each repeat's layer ranking with repeat 0
    higher_is_better: bool = True

    @property
    def k(self) -> int:
        return len(self.int8_metrics)

    def summary(self) -> dict:
        s = pd.Series(self.int8_metrics)
        return {"k": self.k, "int8_metric_mean": float(s.mean()), "int8_metric_std": float(s.std(ddof=1)) if self.k > 1 else 0.0,
                "int8_metrics": self.int8_metrics, "drop_mean": worse_by(self.fp32_metric, float(s.mean()), self.higher_is_better),
                "rank_stability_spearman": self.rank_stability}  # fmt: skip


def analyze_repeats(wl: Workload, config: Config, k: int, *, progress: Progress | None = None, first=None) -> Repeats:
    """``k`` analyses (repeat 0 may be passed in as ``first``); per-layer mean ± std."""
    from .analysis import analyze
    from .metrics import spearman

    say = progress or (lambda m: None)
    runs = [first] if first is not None else []
    for seed in range(len(runs), k):
        say(f"repeat {seed + 1}/{k}: calibration redrawn (seed {seed})")
        with seeded(seed):
            runs.append(analyze(resample_calibration(wl, seed), config, baseline=False, previews=0))
    frames = []
    for seed, a in enumerate(runs):
        f = a.layers_frame()[["layer", "metric_drop", "e2e_sqnr_db"]].copy()
        # rank 1 = most sensitive: largest drop, ties broken by the lowest end-to-end SQNR
        order = f.sort_values(["metric_drop", "e2e_sqnr_db"], ascending=[False, True])["layer"].tolist()
        f["rank"] = f["layer"].map({n: i + 1 for i, n in enumerate(order)})
        f["repeat"] = seed
        frames.append(f)
    allf = pd.concat(frames)
    g = allf.groupby("layer", sort=False)
    layers = pd.DataFrame({
        "metric_drop_mean": g["metric_drop"].mean(), "metric_drop_std": g["metric_drop"].std(ddof=1),
        "e2e_sqnr_db_mean": g["e2e_sqnr_db"].mean(), "e2e_sqnr_db_std": g["e2e_sqnr_db"].std(ddof=1),
        "rank_mean": g["rank"].mean(), "rank_std": g["rank"].std(ddof=1),
    }).reset_index()  # fmt: skip
    base = frames[0].set_index("layer")["rank"]
    rhos = [spearman(base.tolist(), f.set_index("layer")["rank"].reindex(base.index).tolist()) for f in frames[1:]]
    rhos = [r for r in rhos if math.isfinite(r)]
    return Repeats(int8_metrics=[a.int8_metric for a in runs], fp32_metric=runs[0].fp32_metric, layers=layers,
                   rank_stability=sum(rhos) / len(rhos) if rhos else float("nan"), higher_is_better=wl.higher_is_better)  # fmt: skip
