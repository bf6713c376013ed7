"""Error bars: paired bootstrap intervals, McNemar's test, and verdicts that say "uncertain".

A drop measured on N evaluation samples is one draw: with N = 540 one flipped prediction is
0.19 points. The paired bootstrap resamples the *samples* (the same indices for both models),
recomputes the metric of each model on the resample, and takes the 2.5 / 97.5 percentiles of
the difference:

    Δ*_b = metric(ref[I_b], y[I_b]) − metric(q[I_b], y[I_b]),   I_b ~ Uniform{0..N−1}^N

(sign flipped for lower-is-better metrics such as perplexity, so that Δ > 0 always means the
candidate is worse: ``workload.worse_by``). Language-model outputs [N, S, V] resample whole
sequences (dim 0), the unit whose tokens are not independent.

McNemar's exact test asks whether the two models' errors differ more than chance:
b = ref right & q wrong, c = ref wrong & q right, p = min(1, 2·BinomCDF(min(b, c); b + c, ½)).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .workload import relative, worse_by

Metric = Callable[[torch.Tensor, torch.Tensor], float]

# DESIGN.md step 10: < 1 point ship INT8; 1–3 mixed precision or QAT; > 3 keep FP16. For
# lower-is-better metrics (perplexity) the same thresholds apply to the relative increase in %.
THRESHOLDS = (1.0, 3.0)
VERDICTS = ("ship INT8", "mixed precision or QAT", "keep FP16")


@dataclass(frozen=True)
class Interval:
    """A paired difference (reference − candidate) with its 95 % bootstrap interval."""

    delta: float
    low: float
    high: float
    n: int
    n_boot: int
    level: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self, unit: str = "points") -> str:
        return f"{self.delta:.2f} {unit} (95% CI {self.low:.2f} to {self.high:.2f})"

    def relative_to(self, reference: float) -> Interval:
        """The same interval in % of ``reference`` (a relative increase of perplexity)."""
        return Interval(relative(self.delta, reference), relative(self.low, reference), relative(self.high, reference),
                        self.n, self.n_boot, self.level)  # fmt: skip

    def straddles(self, threshold: float) -> bool:
        return self.low < threshold < self.high


def _resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def paired_bootstrap(
    metric: Metric,
    ref: torch.Tensor,
    cand: torch.Tensor,
    targets: torch.Tensor,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    max_seconds: float = 20.0,
    per_sample: tuple[np.ndarray, np.ndarray] | None = None,
    higher_is_better: bool = True,
) -> Interval:
    """Δ = metric(ref) − metric(cand) with its 95 % paired-bootstrap interval (candidate − reference
    when ``higher_is_better`` is False: Δ > 0 always means worse).

    ``per_sample``: when the metric is a mean of per-sample scores (top-1 accuracy: 100·correct),
    those scores, so each resample is one array mean instead of a metric call. Otherwise the
    metric is called on each resample (at least 200 resamples, more while ``max_seconds`` lasts)."""
    n = int(targets.shape[0])
    if per_sample is not None:
        a, b = (np.asarray(v, dtype=np.float64) for v in per_sample)
        n = len(a)
        delta = float(worse_by(a.mean(), b.mean(), higher_is_better))
        idx = _resample_indices(n, n_boot, seed)
        d = worse_by(a[idx].mean(axis=1), b[idx].mean(axis=1), higher_is_better)
    else:
        delta = float(worse_by(metric(ref, targets), metric(cand, targets), higher_is_better))
        idx = _resample_indices(n, n_boot, seed)
        d_list = []
        t0 = time.perf_counter()
        for i, ix in enumerate(idx):
            ti = torch.from_numpy(ix)
            d_list.append(worse_by(metric(ref[ti], targets[ti]), metric(cand[ti], targets[ti]), higher_is_better))
            if i >= 199 and time.perf_counter() - t0 > max_seconds:
                break
        d = np.asarray(d_list, dtype=np.float64)
    lo, hi = np.percentile(d, [2.5, 97.5]) if len(d) else (math.nan, math.nan)
    return Interval(delta=delta, low=float(min(lo, delta)), high=float(max(hi, delta)), n=n, n_boot=int(len(d)))


def correct_vector(outputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """100·(argmax == target) per sample: top-1 accuracy in % is its mean."""
    return (outputs.argmax(dim=1) == targets.reshape(-1).long()).double().numpy() * 100.0


def mcnemar(ref_correct: np.ndarray, cand_correct: np.ndarray) -> dict:
    """Exact McNemar test on paired right/wrong outcomes."""
    from scipy.stats import binom

    r, c = np.asarray(ref_correct) > 0, np.asarray(cand_correct) > 0
    b, cc = int((r & ~c).sum()), int((~r & c).sum())
    p = 1.0 if b + cc == 0 else float(min(1.0, 2 * binom.cdf(min(b, cc), b + cc, 0.5)))
    return {"ref_right_cand_wrong": b, "ref_wrong_cand_right": cc, "p_value": p}


def verdict_of(drop: float) -> str:
    if drop < THRESHOLDS[0]:
        return VERDICTS[0]
    if drop <= THRESHOLDS[1]:
        return VERDICTS[1]
    return VERDICTS[2]


@dataclass(frozen=True)
class Verdict:
    """The verdict of a drop and whether its interval settles it."""

    verdict: str
    certain: bool
    text: str
    samples_to_settle: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def verdict_with_interval(iv: Interval, relative_to: float | None = None) -> Verdict:
    """"ship INT8" etc. when the whole interval lies on one side of every threshold; otherwise
    "uncertain: A or B", with how many samples would shrink the interval (∝ 1/√N) enough.

    ``relative_to``: judge the drop in % of this reference metric (perplexity: < 1 % relative
    increase ship, 1–3 % mixed precision, > 3 % keep FP16), and say so in the text."""
    unit = "points"
    if relative_to is not None:
        iv, unit = iv.relative_to(relative_to), "%"
    v = verdict_of(iv.delta)
    straddled = [t for t in THRESHOLDS if iv.straddles(t)]
    if not straddled or not math.isfinite(iv.low):
        return Verdict(v, True, v)
    half = (iv.high - iv.low) / 2
    need = None
    gaps = [abs(iv.delta - t) for t in straddled]
    if min(gaps) > 0 and half > 0:
        need = int(math.ceil(iv.n * (half / min(gaps)) ** 2))
    lo_v, hi_v = verdict_of(iv.low), verdict_of(iv.high)
    text = f"uncertain: {lo_v} or {hi_v} (the 95% interval {iv.low:.2f}..{iv.high:.2f} straddles {straddled[0]:g} {unit}"
    text += f"; about {need} samples would settle it)" if need else ")"
    return Verdict(v, False, text, need)


def one_sample_worth(n: int) -> float:
    """Points of a % metric that one flipped sample is worth."""
    return 100.0 / n if n else math.nan


def behaves_as_top1(evaluate: Metric, outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """True when ``evaluate`` is top-1 accuracy in % (the default, or a spec's own that gives the
    same number on these outputs): then per-sample correctness decomposes it exactly."""
    from .workload import top1_accuracy

    if evaluate is top1_accuracy:
        return True
    if outputs.dim() != 2 or targets.reshape(-1).shape[0] != outputs.shape[0] or targets.is_floating_point():
        return False
    try:
        return abs(float(evaluate(outputs, targets)) - top1_accuracy(outputs, targets)) < 1e-4  # float32 vs float64 means
    except Exception:  # noqa: BLE001 - a user metric
        return False


def drop_interval(evaluate: Metric, ref: torch.Tensor, cand: torch.Tensor, targets: torch.Tensor, *,
                  seed: int = 0, max_seconds: float = 20.0, higher_is_better: bool = True) -> Interval:  # fmt: skip
    """The drop (``worse_by``) with its interval; the default top-1 metric goes the fast way."""
    from .workload import top1_accuracy

    if evaluate is top1_accuracy and ref.dim() == 2:
        return paired_bootstrap(evaluate, ref, cand, targets, seed=seed, higher_is_better=higher_is_better,
                                per_sample=(correct_vector(ref, targets), correct_vector(cand, targets)))  # fmt: skip
    try:
        return paired_bootstrap(evaluate, ref, cand, targets, seed=seed, max_seconds=max_seconds,
                                higher_is_better=higher_is_better)  # fmt: skip
    except Exception:  # noqa: BLE001 - a user metric that cannot score a resample (e.g. needs unique ids)
        delta = float(worse_by(evaluate(ref, targets), evaluate(cand, targets), higher_is_better))
        return Interval(delta=delta, low=math.nan, high=math.nan, n=int(targets.shape[0]), n_boot=0)
