"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights.

A MatMul/Gemm reads X·W; for any positive per-input-channel s, X·W = (X·diag(s)⁻¹)·(diag(s)·W).
Dividing channel j of the activation by

    sⱼ = max|Xⱼ|^α / max|Wⱼ|^(1−α)        (the paper's default α = 0.5)

flattens the activation's per-channel ranges (what a per-tensor activation grid needs) and
moves the difficulty to the weights, which are quantized per output channel. The division
is folded into whatever produces X, so the float model computes exactly the same function:

* LayerNormalization: γ ← γ/s, β ← β/s (every reader of its output must be a MatMul/Gemm,
  through ops that keep the channel axis last, e.g. the ViT's cls-token Gather);
* a preceding linear layer (through ReLU-like ops, pooling, a flatten): its output channels
  and bias ← /s, as in cross-layer equalization but with the activation-aware s.

max|Xⱼ| comes from the calibration statistics of the tensor whose range sets the grid.

α: the paper's 0.5 assumes LLM-style outlier channels (100× the median). Where there are none
(digits_vit: LayerNorm outputs within 1.7× of the median channel) α = 0.5 moves the weights'
unevenness *into* the activation and raises its quantization error, so by default (``ALPHA =
"auto"``) each activation gets the α of ``AUTO_GRID`` that minimizes its readers' quantized
output error ‖X·W − Q(X/s)·Q(s·W)‖² on calibration data, or is left alone when none lowers
it. Set ``ALPHA = 0.5`` (module attribute) for the paper's fixed migration strength.
Not covered: attention's value path into the output projection (a head-wise permutation
through Reshape/Transpose), and producers that also feed a residual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..scheme import QParams, QRange, compute_scale_zp
from ..simulate import fake_quant, quantize_weight
from . import FixContext, FixResult, register_fix
from ._graph import Linear, channel_absmax, linears, scale_along
from .cle import find_pairs

ALPHA: float | str = "auto"  # a number in [0, 1], or "auto": per activation, the best of AUTO_GRID
AUTO_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_GAIN = 0.97  # "auto" smooths only when the error falls by more than 3 % (calibration noise)
CHANNEL_KEEPING = {"Identity", "Dropout"}


@dataclass(frozen=True)
class Group:
    """One activation tensor smoothed for all its MatMul/Gemm readers."""

    source: str  # "layernorm" | "linear"
    producer: str  # LN node name or the linear layer name
    tensor: str  # the activation whose statistics give max|X_j|
    consumers: tuple[Linear, ...]
    repeat: int = 1
    ln_weight: str | None = None
    ln_bias: str | None = None
    linear: Linear | None = None


def _ln_groups(qg, lin: dict[int, Linear], shapes: dict) -> list[Group]:
    prog = qg.program
    out = []
    for n in prog.nodes:
        if n.op != "LayerNormalization" or len(n.inputs) < 2 or n.inputs[1] not in prog.initializers:
            continue
        t = n.outputs[0]
        rank = len(shapes.get(t, ()))
        if rank == 0 or (n.attrs.get("axis", -1) % rank) != rank - 1:
            continue  # normalized over more than the last axis: γ is not per channel
        consumers, todo, ok = [], [t], True
        while todo and ok:
            cur = todo.pop()
            if cur in prog.outputs:
                ok = False
                break
            for c in prog.consumers.get(cur, []):
                node = prog.nodes[c]
                if c in lin and node.inputs[0] == cur and lin[c].in_axis is not None and node.op in ("MatMul", "Gemm"):
                    consumers.append(lin[c])
                elif node.inputs[0] == cur and (node.op in CHANNEL_KEEPING or _keeps_last_axis(node, shapes)):
                    todo.append(node.outputs[0])
                else:
                    ok = False
                    break
        if ok and consumers:
            bias = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] in prog.initializers else None
            out.append(Group("layernorm", n.name, t, tuple(consumers), ln_weight=n.inputs[1], ln_bias=bias))
    return out


def _keeps_last_axis(node, shapes: dict) -> bool:
    """A Gather/Slice/Squeeze over a non-last axis keeps the channels (the last axis) as they are."""
    si, so = shapes.get(node.inputs[0]), shapes.get(node.outputs[0])
    if not si or not so or si[-1] != so[-1]:
        return False
    if node.op == "Gather":
        return int(node.attrs.get("axis", 0)) % len(si) != len(si) - 1
    return node.op in ("Slice", "Squeeze", "Unsqueeze") and len(so) >= 1


def find_groups(qg, shapes: dict) -> list[Group]:
    lin = linears(qg)
    groups = _ln_groups(qg, lin, shapes)
    for p in find_pairs(qg, shapes):
        if p.second.layer.op_type in ("MatMul", "Gemm"):
            t = qg.program.nodes[p.second.node].inputs[0]
            groups.append(Group("linear", p.first.layer.name, t, (p.second,), repeat=p.repeat, linear=p.first))
    return groups


def _weight_in_absmax(w: torch.Tensor, c: Linear, repeat: int) -> torch.Tensor:
    r = channel_absmax(w, c.in_axis)
    return r.reshape(-1, repeat).amax(1) if repeat > 1 else r


def smoothing_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """sⱼ = max|Xⱼ|^α / max|Wⱼ|^(1−α); 1 where either is zero."""
    x, w = x_absmax.double(), w_absmax.double()
    ok = (x > 0) & (w > 0)
    s = torch.where(ok, x.clamp_min(1e-12).pow(alpha) / w.clamp_min(1e-12).pow(1 - alpha), torch.ones_like(x))
    return s.clamp(1e-5, 1e5)


def _matmul(x: torch.Tensor, w: torch.Tensor, c: Linear) -> torch.Tensor:
    return x @ w if c.in_axis == 0 else x @ w.transpose(0, 1)


class _Objective:
    """Σ over the group's readers of ‖X·W − Q_a(X/s)·Q_w(s·W)‖² on calibration data: the output
    error of the quantized MatMuls that the smoothing is for (a LayerNorm's γ/s is quantized
    too, as ORT quantizes it). Activations use a min-max per-tensor grid of X/s."""

    def __init__(self, ctx: FixContext, g: Group, cur, n_batches: int | None = None):
        qg, prog = ctx.qg, ctx.qg.program
        self.ctx, self.g, self.cur = ctx, g, cur
        ln_node = next((n for n in prog.nodes if n.name == g.producer), None) if g.source == "layernorm" else None
        want = {g.tensor} | ({ln_node.inputs[0]} if ln_node is not None else set())
        self.xs, self.norm = [], []
        with torch.inference_mode():
            for b in ctx.workload.calibration[:n_batches]:
                env = prog.run(dict(zip(qg.input_names, b)), keep=want)
                x = env[g.tensor].double()
                self.xs.append(x.reshape(-1, x.shape[-1]))
                if ln_node is not None:
                    v = env[ln_node.inputs[0]].double()
                    n = torch.nn.functional.layer_norm(v, v.shape[-1:], None, None, ln_node.attrs.get("epsilon", 1e-5))
                    self.norm.append(n.reshape(-1, n.shape[-1]))
        self.ref = [[_matmul(x, cur(c.weight), c) for c in g.consumers] for x in self.xs]

    def __call__(self, s: torch.Tensor) -> float:
        ctx, g = self.ctx, self.g
        sch = ctx.scheme
        sb = s.repeat_interleave(g.repeat) if g.repeat > 1 else s
        if g.source == "layernorm":
            gamma, _ = quantize_weight((self.cur(g.ln_weight) / s.reshape(self.cur(g.ln_weight).shape)).float(), sch.weights,
                                       ctx.qg.weight_axis.get(g.ln_weight), sch.weights.bits)  # fmt: skip
            beta = self.cur(g.ln_bias).reshape(-1) / s if g.ln_bias else 0.0
            xs = [n * gamma.double().reshape(-1) + beta for n in self.norm]
        else:
            xs = [x / sb for x in self.xs]
        lo = min(float(x.min()) for x in xs)
        hi = max(float(x.max()) for x in xs)
        a = sch.act
        qr = QRange.for_bits(a.bits, a.symmetric)
        sc, z = compute_scale_zp(torch.tensor(lo), torch.tensor(hi), qr, a.symmetric)
        qp = QParams(sc.double(), z, qr)
        ws = []
        for c in g.consumers:
            wq, _ = quantize_weight(scale_along(self.cur(c.weight), c.in_axis, sb).float(), sch.weights,
                                    ctx.qg.weight_axis.get(c.weight), sch.weights.bits)  # fmt: skip
            ws.append(wq.double())
        err = 0.0
        for x, refs in zip(xs, self.ref):
            xq = fake_quant(x, qp)
            for c, w, r in zip(g.consumers, ws, refs):
                err += float(((_matmul(xq, w, c) - r) ** 2).sum())
        return err


@register_fix(
    "smoothquant",
    order=20,
    description="SmoothQuant: divide MatMul/Gemm input channels by max|X|^α / max|W|^(1−α) (α per "
    "activation, searched on calibration data), folded into the LayerNorm or linear layer before (exact in FP32)",
    preserves_fp32=True,
)
def smoothquant(ctx: FixContext) -> FixResult:
    qg, prog = ctx.qg, ctx.qg.program
    with torch.inference_mode():
        # shapes only: two samples tell them (a whole batch's every tensor can be gigabytes)
        env = prog.run(dict(zip(qg.input_names, (t[:2] for t in ctx.workload.calibration[0]))), keep=True)
    shapes = {k: tuple(v.shape) for k, v in env.items()}
    del env
    groups = find_groups(qg, shapes)
    if not groups:
        return FixResult(notes=["no MatMul/Gemm reads a LayerNorm or linear output it could absorb scales into"])
    w: dict[str, torch.Tensor] = {}

    def cur(name: str) -> torch.Tensor:
        if name not in w:
            w[name] = prog.initializers[name].double()
        return w[name]

    done, kept, worst = [], [], 0.0
    for g in groups:
        owner = qg.act_owner.get(g.tensor, g.tensor)
        st = ctx.stats.get(owner)
        if st is None or st.channel_absmax.numel() <= 1:
            continue
        x = st.channel_absmax.double()
        n_ch = cur(g.consumers[0].weight).shape[g.consumers[0].in_axis] // g.repeat
        if x.numel() == n_ch * g.repeat and g.repeat > 1:
            x = x.reshape(n_ch, g.repeat).amax(1)
        if x.numel() != n_ch:
            continue  # the statistics' channel axis is not this layer's input channel axis
        wmax = torch.stack([_weight_in_absmax(cur(c.weight), c, g.repeat) for c in g.consumers]).amax(0)
        if ALPHA == "auto":
            objective = _Objective(ctx, g, cur)
            none = objective(torch.ones_like(x))
            errs = {alpha: objective(smoothing_scales(x, wmax, alpha)) for alpha in AUTO_GRID}
            best_alpha = min(errs, key=errs.get)
            if errs[best_alpha] > MIN_GAIN * none:  # within noise of doing nothing
                kept.append(g.producer)
                continue
        else:
            best_alpha = float(ALPHA)
        s = smoothing_scales(x, wmax, best_alpha)
        if g.source == "layernorm":
            w[g.ln_weight] = cur(g.ln_weight) / s.reshape(cur(g.ln_weight).shape)
            if g.ln_bias:
                w[g.ln_bias] = cur(g.ln_bias) / s.reshape(cur(g.ln_bias).shape)
        else:
            a = g.linear
            w[a.weight] = scale_along(cur(a.weight), a.out_axis, 1.0 / s)
            if a.bias:
                w[a.bias] = cur(a.bias) / s.reshape(cur(a.bias).shape)
        sb = s.repeat_interleave(g.repeat) if g.repeat > 1 else s
        for c in g.consumers:
            w[c.weight] = scale_along(cur(c.weight), c.in_axis, sb)
        worst = max(worst, float(s.log().abs().max()))
        done.append(f"{g.producer} → {', '.join(c.layer.name for c in g.consumers)} (α = {best_alpha:g})")
    if not done:
        why = "smoothing did not lower the quantized output error of any candidate" if kept else "no calibration statistics"
        return FixResult(notes=[f"nothing smoothed: {why}"])
    ctx.progress(f"smoothquant: smoothed {len(done)} activation(s)")
    note = f"smoothed {len(done)} activation(s) ({'; '.join(done)}); largest channel scale ×{math.exp(worst):.3g}"
    if kept:
        note += f"; left {len(kept)} as they were (no α lowered the error): {', '.join(kept)}"
    return FixResult(weights={n: v.to(prog.initializers[n].dtype) for n, v in w.items()}, notes=[note])
