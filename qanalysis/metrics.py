"""Error metrics between a reference tensor and its quantized counterpart: pure functions.

All take ``ref`` (FP32) and ``x`` (quantized) of the same shape and return Python floats.
"""

from __future__ import annotations

import math

import torch

SQNR_CAP_DB = 150.0  # identical tensors: report this instead of +inf (CSV- and rank-friendly)


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    """SQNR = 10·log10(Σ ref² / Σ (ref − x)²) in dB; capped at SQNR_CAP_DB when x == ref."""
    ref, x = ref.detach().double(), x.detach().double()
    noise = float(((ref - x) ** 2).sum())
    signal = float((ref**2).sum())
    if noise <= 0:
        return SQNR_CAP_DB
    if signal <= 0:
        return -SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise))


def mse(ref: torch.Tensor, x: torch.Tensor) -> float:
    """mean (ref − x)²."""
    return float(((ref.detach().double() - x.detach().double()) ** 2).mean())


def cosine(ref: torch.Tensor, x: torch.Tensor) -> float:
    """cos∠(ref, x) over the flattened tensors (1.0 when both are zero)."""
    a, b = ref.detach().double().reshape(-1), x.detach().double().reshape(-1)
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b) / (na * nb)


def kl_divergence(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """mean over samples of KL(softmax(ref) ‖ softmax(x)) along the last dim, in nats."""
    if ref_logits.dim() < 2 or ref_logits.shape[-1] < 2:
        return float("nan")
    p = torch.log_softmax(ref_logits.detach().double(), dim=-1)
    q = torch.log_softmax(logits.detach().double(), dim=-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def clipping_ratio(x: torch.Tensor, rmin: float, rmax: float) -> float:
    """Fraction of values outside [rmin, rmax] (what the quantizer clips)."""
    x = x.detach()
    if x.numel() == 0:
        return 0.0
    return float(((x < rmin) | (x > rmax)).double().mean())


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 finite pairs."""
    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return float("nan")

    def ranks(v: list[float]) -> torch.Tensor:
        t = torch.tensor(v, dtype=torch.float64)
        order = torch.argsort(t)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for val in torch.unique(t):  # average ties
            m = t == val
            if int(m.sum()) > 1:
                r[m] = r[m].mean()
        return r

    ra, rb = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float(ra @ rb) / den if den > 0 else float("nan")
