"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction").

For two linear layers joined by positively homogeneous ops (f(s·x) = s·f(x) for s > 0: ReLU,
LeakyReLU, max/average pooling, a flatten), y = W₂ f(W₁x + b₁) equals
W₂S f(S⁻¹W₁x + S⁻¹b₁) for any positive diagonal S. With r₁ᵢ the range (max |w|) of output
channel i of W₁ and r₂ᵢ that of input channel i of W₂, the paper's choice

    sᵢ = √(r₁ᵢ · r₂ᵢ) / r₂ᵢ       so that both become √(r₁ᵢ · r₂ᵢ),

makes the two layers' per-channel ranges equal. Output channel i of layer 1 — the activation
channel between the layers — is divided by sᵢ too, so a channel that is large in W₁ (and in
the activation) and small in W₂ is scaled down: that is what evens out the per-tensor grid of
the activation as well as those of the weights. The equalized pair is invariant to any
per-channel rescaling of the original, so planted 100× channels are undone exactly.
Pairs in a chain (conv → depthwise conv → conv) share a layer and are iterated to a fixed point.

Each chain is kept only if it lowers the quantized model's output error on the calibration data
(re-calibrated, this config): the paper targets per-tensor weights, and with per-channel weights
equalization can hurt (``GUARD``).

Pairs are found in the float graph: the intermediate tensor of every hop must feed only the
next op (and not be a graph output), so no other reader sees the rescaled channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import FixContext, FixResult, register_fix
from ._graph import (
    Linear,
    calibration_error,
    calibration_reference,
    channel_absmax,
    linears,
    scale_along,
)

HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu", "Identity", "Dropout"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
REDUCES = {"ReduceMean", "ReduceMax"}
FLATTENS = {"Reshape", "Flatten"}
MAX_ITERS = 20
TOL = 1e-4  # stop when every scale is within 1e-4 of 1
# Keep a chain's equalization only if it lowers the quantized model's output error on the
# calibration data: with per-channel weights, equalizing can spread a few large input columns of
# layer 2 over its per-channel rows and cost accuracy (digits_resnet W3A8: −7 points).
GUARD = True


@dataclass(frozen=True)
class Pair:
    first: Linear
    second: Linear
    repeat: int  # each activation channel feeds `repeat` consecutive input columns (a flatten)
    path: tuple[str, ...]  # the op types in between

    @property
    def name(self) -> str:
        return f"{self.first.layer.name} → {self.second.layer.name}"


def _reduce_axes(node, args_shape_rank: int, inits) -> list[int] | None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] in inits:
        axes = inits[node.inputs[1]].reshape(-1).tolist()
    if axes is None:
        return None
    return [int(a) % args_shape_rank for a in axes]


def find_pairs(qg, shapes: dict[str, tuple[int, ...]]) -> list[Pair]:
    """Equalizable (layer 1, layer 2) pairs, in execution order."""
    prog = qg.program
    lin = linears(qg)
    pairs = []
    for a in lin.values():
        t, repeat, path = a.output, 1, []
        n_out = prog.initializers[a.weight].shape[a.out_axis]
        for _ in range(8):
            cons = prog.consumers.get(t, [])
            if len(cons) != 1 or t in prog.outputs:
                break
            node = prog.nodes[cons[0]]
            if node.index in lin and node.inputs[0] == t:
                b = lin[node.index]
                n_in = prog.initializers[b.weight].shape[b.in_axis]
                if n_in == n_out * repeat and (not b.depthwise or repeat == 1) and b.node != a.node:
                    pairs.append(Pair(a, b, repeat, tuple(path)))
                break
            if node.inputs[0] != t:
                break
            rank = len(shapes.get(t, ()))
            if node.op in HOMOGENEOUS or node.op in POOLS and a.channel_axis == 1:
                pass
            elif node.op in REDUCES and a.channel_axis == 1:
                axes = _reduce_axes(node, rank, prog.initializers)
                if not axes or 0 in axes or 1 in axes:
                    break
                if not node.attrs.get("keepdims", 1) and any(ax < 1 for ax in axes):
                    break
            elif node.op in FLATTENS and a.channel_axis == 1:
                si, so = shapes.get(t), shapes.get(node.outputs[0])
                if not si or not so or len(so) != 2 or so[0] != si[0] or si[1] * math.prod(si[2:]) != so[1]:
                    break
                repeat *= math.prod(si[2:])
            else:
                break
            path.append(node.op)
            t = node.outputs[0]
    return pairs


def _input_ranges(w: torch.Tensor, axis: int, repeat: int) -> torch.Tensor:
    r = channel_absmax(w, axis)
    return r.reshape(-1, repeat).amax(1) if repeat > 1 else r


def equalize(weights: dict[str, torch.Tensor], pairs: list[Pair], iters: int = MAX_ITERS) -> tuple[int, float]:
    """Equalize ``pairs`` in place in ``weights`` (float64); returns (iterations, max |log s| of the first pass)."""
    first_pass = 0.0
    for it in range(iters):
        worst = 0.0
        for p in pairs:
            a, b = p.first, p.second
            r1 = channel_absmax(weights[a.weight], a.out_axis)
            r2 = _input_ranges(weights[b.weight], b.in_axis, p.repeat)
            ok = (r1 > 0) & (r2 > 0)
            s = torch.where(ok, torch.sqrt(r1 * r2) / torch.where(ok, r2, torch.ones_like(r2)), torch.ones_like(r1))
            weights[a.weight] = scale_along(weights[a.weight], a.out_axis, 1.0 / s)
            if a.bias is not None:
                weights[a.bias] = weights[a.bias] / s.reshape(weights[a.bias].shape)
            sb = s.repeat_interleave(p.repeat) if p.repeat > 1 else s
            weights[b.weight] = scale_along(weights[b.weight], b.in_axis, sb)
            worst = max(worst, float(s.log().abs().max()))
        if it == 0:
            first_pass = worst
        if worst < TOL:
            return it + 1, first_pass
    return iters, first_pass


def chains(pairs: list[Pair]) -> list[list[Pair]]:
    """Pairs that share a layer (conv → depthwise → conv) equalize together: connected components."""
    groups: list[tuple[set[int], list[Pair]]] = []
    for p in pairs:
        nodes = {p.first.node, p.second.node}
        hit = [g for g in groups if g[0] & nodes]
        merged = (set(nodes), [p])
        for g in hit:
            merged[0].update(g[0])
            merged[1][:0] = g[1]
            groups.remove(g)
        groups.append(merged)
    order = {id(p): i for i, p in enumerate(pairs)}
    return [sorted(g[1], key=lambda p: order[id(p)]) for g in groups]


@register_fix(
    "cle",
    order=10,
    description="cross-layer equalization: rescale channels between ReLU-joined conv/linear pairs so "
    "weight and activation ranges are even (exact in FP32); kept only where it lowers the quantized error",
    preserves_fp32=True,
)
def cle(ctx: FixContext) -> FixResult:
    qg = ctx.qg
    prog = qg.program
    with torch.inference_mode():
        # shapes only: two samples tell them (a whole batch's every tensor can be gigabytes)
        env = prog.run(dict(zip(qg.input_names, (t[:2] for t in ctx.workload.calibration[0]))), keep=True)
    shapes = {k: tuple(v.shape) for k, v in env.items()}
    del env
    pairs = find_pairs(qg, shapes)
    if not pairs:
        return FixResult(notes=["no equalizable layer pairs (conv/linear joined only by ReLU-like ops) in this model"])
    names = {n for p in pairs for n in (p.first.weight, p.first.bias, p.second.weight) if n}
    w = {n: prog.initializers[n].double() for n in names}
    kept, dropped, largest, iters = [], [], 0.0, 0
    if GUARD:
        ref = calibration_reference(qg, ctx.workload)
        best = calibration_error(ctx, {}, ref)
    for chain in chains(pairs):
        trial = dict(w)
        it, first = equalize(trial, chain)
        if GUARD:
            e = calibration_error(ctx, {n: trial[n] for n in changed_names([*kept, chain])}, ref)
            if not e < best:
                dropped.append(chain)
                continue
            best = e
        w, largest, iters = trial, max(largest, first), max(iters, it)
        kept.append(chain)
    label = lambda cs: ", ".join(p.name for c in cs for p in c)
    notes = []
    if kept:
        notes.append(f"equalized {sum(len(c) for c in kept)} pair(s) ({label(kept)}); largest channel rescale "
                     f"×{math.exp(largest):.3g}, {iters} iteration(s)")  # fmt: skip
    if dropped:
        notes.append(f"left {sum(len(c) for c in dropped)} pair(s) as they were ({label(dropped)}): equalizing them "
                     "raised the quantized model's output error on the calibration data")  # fmt: skip
    if not kept:
        return FixResult(notes=notes)
    ctx.progress(f"cle: equalized {sum(len(c) for c in kept)} layer pair(s)")
    out = changed_names(kept)
    return FixResult(weights={n: w[n].to(prog.initializers[n].dtype) for n in out}, notes=notes)


def changed_names(chains_: list[list[Pair]]) -> set[str]:
    return {n for c in chains_ for p in c for n in (p.first.weight, p.first.bias, p.second.weight) if n}
