"""Observers and calibration ranges: min-max, percentile, entropy (KL) and MSE.

``collect_stats`` runs the float graph over the calibration batches twice: the first
pass records min, max, moments and per-channel absmax of every tensor ORT quantizes;
the second fills a fixed-range histogram (2048 bins over [min, max]) from which the
percentile, entropy and MSE ranges are computed. ``calibration_range`` turns a tensor's
statistics into the [rmin, rmax] that ``scheme.compute_scale_zp`` then maps to (s, z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .interpreter import Program
from .memory import Footprints, chunk_size, release, split
from .scheme import ActivationSpec, QRange, compute_scale_zp
from .workload import Inputs

BINS = 2048


@dataclass
class TensorStats:
    """Statistics of one activation tensor over the calibration data."""

    name: str
    min: float
    max: float
    count: int
    mean: float
    std: float
    kurtosis: float  # excess kurtosis (0 for a Gaussian)
    channel_axis: int
    channel_absmax: torch.Tensor  # [C]
    hist: torch.Tensor | None = None  # [BINS] counts over [min, max]

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))

    def bin_centers(self) -> torch.Tensor:
        edges = torch.linspace(self.min, self.max, BINS + 1, dtype=torch.float64)
        return (edges[:-1] + edges[1:]) / 2


def channel_axis(t: torch.Tensor) -> int:
    """NCHW / NC → 1; [B, T, C] token tensors → last."""
    if t.dim() == 3:
        return 2
    return 1 if t.dim() >= 2 else 0


# Attention masks fill scores with −inf or float32's lowest value (Hugging Face: torch.finfo.min)
# before the softmax. Such values are masks, not signal: a range that held them would leave no
# resolution for the scores. Observers skip them; quantization saturates them to the range's
# minimum, as ONNX Runtime's QuantizeLinear does, which still masks after the softmax.
MASK_ABS = 1e30


def _signal(t: torch.Tensor) -> torch.Tensor:
    """``t`` without mask values (|x| ≥ MASK_ABS, ±inf), flattened when any were present."""
    keep = t.abs() < MASK_ABS
    return t if bool(keep.all()) else t[keep]


# An observer's temporaries, in float32 copies of the tensor it observes: ``_Acc.first`` holds a
# float64 copy and a float64 power of it at once (4) and the |t| < MASK_ABS mask (1 byte per value).
OBSERVER_COPIES = 5


class _Acc:
    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.n = 0
        self.s1 = self.s2 = self.s3 = self.s4 = 0.0
        self.ch: torch.Tensor | None = None
        self.axis = 1
        self.hist: torch.Tensor | None = None

    def first(self, t: torch.Tensor) -> None:
        t = t.detach().float()
        if t.numel() == 0:
            return
        sig = _signal(t)
        if sig.numel() == 0:
            return
        if sig.numel() != t.numel():  # per-channel maxima without the mask values
            t = t.masked_fill(t.abs() >= MASK_ABS, 0.0)
        self.min = min(self.min, float(sig.min()))
        self.max = max(self.max, float(sig.max()))
        d = sig.double().reshape(-1)
        self.n += d.numel()
        self.s1 += float(d.sum())
        self.s2 += float((d * d).sum())
        self.s3 += float((d**3).sum())
        self.s4 += float((d**4).sum())
        self.axis = channel_axis(t)
        dims = [i for i in range(t.dim()) if i != self.axis]
        cm = t.abs().amax(dim=dims) if dims else t.abs()
        if self.ch is None or self.ch.shape != cm.shape:
            self.ch = cm if self.ch is None or self.ch.shape != cm.shape else torch.maximum(self.ch, cm)
        else:
            self.ch = torch.maximum(self.ch, cm)

    def second(self, t: torch.Tensor) -> None:
        lo, hi = self.min, self.max
        if hi <= lo:
            hi = lo + 1e-12
        h = torch.histc(_signal(t.detach().float()).reshape(-1), bins=BINS, min=lo, max=hi)
        self.hist = h if self.hist is None else self.hist + h

    def stats(self, name: str) -> TensorStats:
        n = max(self.n, 1)
        mean = self.s1 / n
        var = max(self.s2 / n - mean**2, 0.0)
        m4 = self.s4 / n - 4 * mean * self.s3 / n + 6 * mean**2 * self.s2 / n - 3 * mean**4
        kurt = m4 / var**2 - 3.0 if var > 1e-20 else 0.0
        return TensorStats(
            name=name, min=self.min, max=self.max, count=self.n, mean=mean, std=math.sqrt(var),
            kurtosis=kurt, channel_axis=self.axis,
            channel_absmax=self.ch if self.ch is not None else torch.zeros(1), hist=self.hist,
        )  # fmt: skip


def collect_stats(
    program: Program,
    batches: list[Inputs],
    tensors: Iterable[str],
    *,
    histograms: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, TensorStats]:
    """Run the float graph over ``batches`` and observe ``tensors``.

    Each tensor is observed when a node first reads it (through the run's edge hook), so a run
    holds only its live tensors, not every observed tensor of the batch; tensors no node reads
    (graph outputs) are kept to the end of the run. A batch bigger than the memory budget
    allows (``memory.current_budget()``) runs in chunks; a batch that fits runs whole."""
    wanted = set(tensors)
    accs = {t: _Acc() for t in wanted}
    unread = {t for t in wanted if not program.consumers.get(t)}
    footprints = Footprints(program, program.inputs)

    def chunks(b: Inputs) -> list[dict[str, torch.Tensor]]:
        fp = footprints(b)
        size = chunk_size(fp.kept(unread) + fp.float_live + OBSERVER_COPIES * fp.largest, int(b[0].shape[0]))
        return [dict(zip(program.inputs, c)) for c in split(b, size)]

    def observe(feeds: dict[str, torch.Tensor], fn: Callable[[_Acc, torch.Tensor], None]) -> None:
        seen: set[str] = set()

        def edge(i: int, pos: int, v: torch.Tensor) -> torch.Tensor:
            t = program.nodes[i].inputs[pos]
            if t in wanted and t not in seen:
                seen.add(t)
                fn(accs[t], v)
            return v

        env = program.run(feeds, edge=edge, keep=unread)
        for t in unread:
            if t in env and t not in seen:
                fn(accs[t], env[t])

    with torch.inference_mode():
        for b in batches:
            for f in chunks(b):
                observe(f, _Acc.first)
                release()
        if histograms:
            for b in batches:
                for f in chunks(b):
                    observe(f, _Acc.second)
                    release()
    return {t: a.stats(t) for t, a in accs.items() if a.n}


# --------------------------------------------------------------------------- ranges


def _fake_quant_values(x: torch.Tensor, lo: float, hi: float, qr: QRange, symmetric: bool) -> torch.Tensor:
    s, z = compute_scale_zp(torch.tensor(lo), torch.tensor(hi), qr, symmetric)
    s64 = s.double()
    return (torch.clamp(torch.round(x / s64) + z, qr.qmin, qr.qmax) - z) * s64


def _percentile_range(st: TensorStats, p: float) -> tuple[float, float]:
    h = st.hist.double()
    cdf = torch.cumsum(h, 0) / h.sum()
    centers = st.bin_centers()
    tail = (100.0 - p) / 100.0
    if st.min >= 0:  # one-sided (post-ReLU): clip only the top
        hi = float(centers[int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=torch.float64)).clamp(max=BINS - 1))])
        return 0.0, min(hi, st.max)
    lo_i = int(torch.searchsorted(cdf, torch.tensor(tail / 2, dtype=torch.float64)).clamp(max=BINS - 1))
    hi_i = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail / 2, dtype=torch.float64)).clamp(max=BINS - 1))
    return max(float(centers[lo_i]), st.min), min(float(centers[hi_i]), st.max)


def _candidates(st: TensorStats, n: int = 96) -> list[tuple[float, float]]:
    """Clipping candidates: the min-max range shrunk by factors in (0.05, 1]."""
    return [(st.min * f, st.max * f) for f in torch.linspace(0.05, 1.0, n).tolist()]


def _mse_range(st: TensorStats, qr: QRange, symmetric: bool) -> tuple[float, float]:
    """argmin over clipping candidates of E[(x − x̂)²], estimated from the histogram."""
    x, w = st.bin_centers(), st.hist.double()
    best, best_err = (st.min, st.max), math.inf
    for lo, hi in _candidates(st):
        err = float((w * (x - _fake_quant_values(x, lo, hi, qr, symmetric)) ** 2).sum())
        if err < best_err - 1e-18:
            best, best_err = (lo, hi), err
    return best


def _kl_threshold(side: torch.Tensor, n_levels: int) -> int:
    """TensorRT's entropy calibration on a one-sided histogram (bin 0 at zero): the number of
    bins ``i`` minimizing KL(P ‖ Q), P = side[:i] with the clipped mass folded into its last
    bin, Q = side[:i] (unclipped) merged into ``n_levels`` groups, each group's mass spread
    evenly over its non-empty bins."""
    n_bins = len(side)
    side = side.clone()
    side[0] = 0.0  # the spike of exact zeros (ReLU) would drown every other bin's contribution
    if n_bins <= n_levels or side.sum() <= 0:
        return n_bins
    best_i, best_kl = n_bins, math.inf
    tail = torch.flip(torch.cumsum(torch.flip(side, [0]), 0), [0])  # tail[i] = side[i:].sum()
    for i in range(n_levels, n_bins + 1, max(1, (n_bins - n_levels) // 256)):
        ref = side[:i]
        p = ref.clone()
        if i < n_bins:
            p[-1] += tail[i]
        gidx = torch.div(torch.arange(i) * n_levels, i, rounding_mode="floor")
        nz = (ref > 0).double()
        mass = torch.zeros(n_levels, dtype=torch.float64).index_add_(0, gidx, ref)
        count = torch.zeros(n_levels, dtype=torch.float64).index_add_(0, gidx, nz)
        q = torch.where(ref > 0, mass[gidx] / count[gidx].clamp(min=1), torch.zeros_like(ref))
        pn, qn = p / p.sum(), q / q.sum().clamp(min=1e-30)
        m = pn > 0
        kl = float((pn[m] * torch.log(pn[m] / qn[m].clamp(min=1e-12))).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


def _entropy_range(st: TensorStats, qr: QRange, symmetric: bool) -> tuple[float, float]:
    """Entropy (KL) calibration, each side of zero searched on its own (an outlier on one side
    must not clip the other); a side gets the share of the grid's levels it would use."""
    h = st.hist.double()
    if h.sum() <= 0 or st.max <= st.min:
        return st.min, st.max
    width = (st.max - st.min) / BINS
    zero_bin = min(BINS, max(0, int(round(-st.min / width))))
    n_levels = qr.qmax - qr.qmin + 1
    lo, hi = st.min, st.max
    if zero_bin < BINS and st.max > 0:
        pos = h[zero_bin:]
        levels = n_levels if st.min >= 0 else n_levels // 2
        hi = min(st.max, _kl_threshold(pos, levels) * width)
    if zero_bin > 0 and st.min < 0:
        neg = torch.flip(h[:zero_bin], [0])
        levels = n_levels if st.max <= 0 else n_levels // 2
        lo = max(st.min, -_kl_threshold(neg, levels) * width)
    return lo, hi


CALIBRATORS: dict[str, Callable[..., tuple[float, float]]] = {
    "minmax": lambda st, spec, qr: (st.min, st.max),
    "percentile": lambda st, spec, qr: _percentile_range(st, float(spec.percentile)),
    "entropy": lambda st, spec, qr: _entropy_range(st, qr, spec.symmetric),
    "mse": lambda st, spec, qr: _mse_range(st, qr, spec.symmetric),
}


def list_calibrations() -> list[str]:
    return list(CALIBRATORS)


def calibration_range(st: TensorStats, spec: ActivationSpec, bits: int | None = None) -> tuple[float, float]:
    """[rmin, rmax] of a tensor for the activation spec (``bits`` overrides spec.bits)."""
    qr = QRange.for_bits(bits or spec.bits, spec.symmetric)
    if spec.calibration != "minmax" and st.hist is None:
        raise ValueError(f"{spec.calibration} calibration needs histograms")
    return CALIBRATORS[spec.calibration](st, spec, qr)
