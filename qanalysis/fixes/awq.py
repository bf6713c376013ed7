"""AWQ (Lin et al. 2024): activation-aware per-input-channel scaling of weight-only layers.

x·W = (x·diag(s)⁻¹)·(diag(s)·W): scaling input channel k of W by sₖ before quantization gives the
channels that meet large activations a finer grid (relative to their size), and 1/s is folded
into the op that produces x, so the float model computes the same function. As in the paper,

    sₖ = mean|xₖ|^α  (normalized by √(max s · min s)),

with α from a grid minimizing the layer's quantized output error ‖X·W − (X/s)·Q(diag(s)·W)‖²
on calibration inputs (summed over every reader of x); α = 0 (no scaling) is a candidate, so
AWQ never makes a layer worse on the calibration data. Q is the MatMulNBits block quantization
of the config (``simulate.block_quantize``).

Where 1/s goes: a LayerNormalization's γ and β (γ ← γ/s, β ← β/s), every reader of its output
being a weight-only MatMul/Gemm (through channel-keeping ops such as the ViT's cls-token
Gather) — the groups SmoothQuant uses. Not covered (left at RTN, said in the notes): layers
whose input comes from a nonlinearity (GELU: the MLP's second Linear) or attention (the output
projection): carrying 1/s there needs a Mul inserted into the graph, which the fix contract
(new initializer values only) does not carry yet.
"""

from __future__ import annotations

import torch

from .. import metrics as M
from ..simulate import block_quantize
from . import FixContext, FixResult, register_fix
from ._graph import scale_along
from .gptq import kn, layer_inputs, weight_only_layers
from .smoothquant import find_groups

GRID = tuple(i / 20 for i in range(21))


@register_fix(
    "awq",
    order=15,
    description="AWQ: scale weight-only layers' input channels by mean|x|^α (α searched per layer) and fold 1/s "
    "into the LayerNorm before them",
    preserves_fp32=True,
)
def awq(ctx: FixContext) -> FixResult:
    sim = ctx.simulator()
    layers = weight_only_layers(ctx, sim)
    if not layers:
        return FixResult(notes=["no weight-only layers (w4/w8, or a scheme with activations null): AWQ changes nothing"])
    qg, prog = ctx.qg, ctx.qg.program
    with torch.inference_mode():
        env = prog.run(dict(zip(qg.input_names, ctx.workload.calibration[0])), keep=True)
    shapes = {k: tuple(v.shape) for k, v in env.items()}
    wo = {l.node: l for l in layers}
    groups = [g for g in find_groups(qg, shapes)
              if g.source == "layernorm" and g.repeat == 1 and all(c.node in wo for c in g.consumers)]  # fmt: skip
    xs = layer_inputs(ctx, layers)
    block, sym = ctx.scheme.block_size(), ctx.scheme.weights.symmetric
    new: dict[str, torch.Tensor] = {}
    notes, covered = [], set()

    def q_out(x: torch.Tensor, w_kn: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
        return (x / s) @ block_quantize(w_kn * s[:, None], bits, block, sym).dequant()

    for g in groups:
        cons = [(c, wo[c.node], sim.layer_format(ctx.config, wo[c.node]).bits, kn(prog.initializers[c.weight].float(), sim.layout(wo[c.node])))
                for c in g.consumers]  # fmt: skip
        mean_abs = torch.cat([xs[l.name] for _, l, _, _ in cons]).abs().mean(0).clamp(min=1e-8)
        ys = [xs[l.name] @ w for _, l, _, w in cons]

        def scales(alpha: float) -> torch.Tensor:
            s = mean_abs**alpha
            return s / (s.max() * s.min()).sqrt()

        def err(alpha: float) -> float:
            s = scales(alpha)
            return sum(float(((y - q_out(xs[l.name], w, s, b)) ** 2).sum()) for (_, l, b, w), y in zip(cons, ys))

        errs = {a: err(a) for a in GRID}
        best = min(errs, key=errs.get)
        s = scales(best) if best > 0 else torch.ones_like(mean_abs)
        for (c, l, b, w), y in zip(cons, ys):
            before = M.sqnr_db(y, q_out(xs[l.name], w, torch.ones_like(s), b))
            after = M.sqnr_db(y, q_out(xs[l.name], w, s, b))
            notes.append(f"{l.name}: output SQNR RTN {before:.1f} dB → AWQ {after:.1f} dB ({after - before:+.1f}; α = {best:g})")
            covered.add(l.name)
        if best == 0:
            continue
        s64 = s.double()
        for c, l, _, _ in cons:
            new[c.weight] = scale_along(prog.initializers[c.weight].double(), c.in_axis, s64)
        gam = prog.initializers[g.ln_weight].double()
        new[g.ln_weight] = gam / s64.reshape(gam.shape)
        if g.ln_bias:
            bet = prog.initializers[g.ln_bias].double()
            new[g.ln_bias] = bet / s64.reshape(bet.shape)
    rest = [l.name for l in layers if l.name not in covered]
    if rest:
        notes.append(f"left at RTN (no LayerNorm before them to fold 1/s into): {', '.join(rest)}")
    ctx.progress(f"awq: scaled {sum(1 for n in notes if 'α = 0;' not in n and 'AWQ' in n)} layer(s)")
    return FixResult(weights={n: v.to(prog.initializers[n].dtype) for n, v in new.items()}, notes=notes)
