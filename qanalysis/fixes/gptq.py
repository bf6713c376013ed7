"""GPTQ (Frantar et al. 2023) for weight-only layers, and RTN, its baseline.

For a Linear y = x·W with W[K, N] quantized in MatMulNBits blocks along K, GPTQ minimizes
‖X·W − X·Ŵ‖² over the calibration inputs X of the layer. With H = XᵀX + λ·I (λ = DAMP · mean
diag H) and U the upper Cholesky factor of H⁻¹, rows k = 0 … K−1 are quantized in order:

    ŵ_k = Q(w_k),   e = (w_k − ŵ_k) / U[k, k],   w_j ← w_j − U[k, j] · e   (j > k)

so every later row absorbs the error of the rows quantized before it. A block's scale and
zero point are taken (MLAS's rules, ``simulate.block_qparams``) from the *updated* rows when
the block starts, as in the reference implementation's ``groupsize``.

What the engine carries: the float initializer becomes Ŵ = s·(q − z), and the block grid (s, z)
is given to the simulation (``weight_qparams``), which re-derives q = roundf(Ŵ/s + z) exactly;
the MatMulNBits engine is written with those integers (``engine.build_weight_only_engine``).
X is the layer's input in the float model (after earlier fixes such as AWQ).
"""

from __future__ import annotations

import torch

from .. import metrics as M
from ..scheme import QParams, QRange
from ..simulate import block_qparams, block_quantize, roundf
from . import FixContext, FixResult, register_fix
from ._graph import feeds_of

DAMP = 0.01


def weight_only_layers(ctx: FixContext, sim) -> list:
    return [l for l in ctx.qg.layers if sim.layer_format(ctx.config, l).kind == "w"]


def layer_inputs(ctx: FixContext, layers: list, max_rows: int = 8192) -> dict[str, torch.Tensor]:
    """Each layer's input activation on the calibration batches (float model), rows = tokens."""
    prog = ctx.qg.program
    names = {l.name: prog.nodes[l.node].inputs[0] for l in layers}
    acc: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with torch.inference_mode():
        for x in ctx.workload.calibration:
            env = prog.run(feeds_of(ctx.qg, x), keep=set(names.values()))
            for n, t in names.items():
                v = env[t].float()
                acc[n].append(v.reshape(-1, v.shape[-1]))
    out = {}
    for n, vs in acc.items():
        x = torch.cat(vs)
        if x.shape[0] > max_rows:  # evenly spaced rows: enough for a K×K Hessian
            x = x[torch.linspace(0, x.shape[0] - 1, max_rows).long()]
        out[n] = x
    return out


def kn(w: torch.Tensor, layout: str) -> torch.Tensor:
    return w if layout == "kn" else w.t()


def gptq_quantize(w_kn: torch.Tensor, h: torch.Tensor, bits: int, block: int, symmetric: bool) -> tuple[torch.Tensor, QParams]:
    """Ŵ[K, N] and its block grid (s, z as in ``BlockQuant``) by GPTQ with Hessian ``h`` [K, K]."""
    W = w_kn.double().clone()
    K, N = W.shape
    H = h.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[dead, :] = 0.0
    H += DAMP * H.diagonal().mean() * torch.eye(K, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    nb = -(-K // block)
    S = torch.zeros(N, nb, dtype=torch.float32)
    Z = torch.zeros(N, nb, dtype=torch.uint8)
    Q = torch.zeros(K, N, dtype=torch.float32)
    qmax = float(2**bits - 1)
    for k in range(K):
        j = k // block
        if k % block == 0:
            s, z = block_qparams(W[k : k + block].float(), bits, block, symmetric)
            S[:, j], Z[:, j] = s[:, 0], z[:, 0]
        s, z = S[:, j], Z[:, j].float()
        recip = torch.where(s != 0, 1.0 / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(s))
        q = torch.clamp(roundf(W[k].float() * recip + z), 0.0, qmax)
        Q[k] = (q - z) * s
        e = (W[k] - Q[k].double()) / U[k, k]
        W[k + 1 :] -= U[k, k + 1 :, None] * e[None, :]
    return Q, QParams(S, Z.long(), QRange(0, 2**bits - 1), axis=None, group=block)


@register_fix(
    "gptq",
    order=36,
    description="GPTQ: quantize weight-only layers row by row along K, each row's error compensated by "
    "the rows not yet quantized (Hessian of the layer's calibration inputs)",
    preserves_fp32=False,
)
def gptq(ctx: FixContext) -> FixResult:
    sim = ctx.simulator()
    layers = weight_only_layers(ctx, sim)
    if not layers:
        return FixResult(notes=["no weight-only layers (w4/w8, or a scheme with activations null): GPTQ changes nothing"])
    prog = ctx.qg.program
    xs = layer_inputs(ctx, layers)
    block, sym = ctx.scheme.block_size(), ctx.scheme.weights.symmetric
    weights, qps, notes = {}, {}, []
    for l in layers:
        layout = sim.layout(l)
        name = prog.nodes[l.node].inputs[1]
        fmt = sim.layer_format(ctx.config, l)
        bits, lblock = fmt.bits, fmt.block or block  # "w4g128": the layer's own block
        w = kn(prog.initializers[name].float(), layout)
        x = xs[l.name].double()
        q, qp = gptq_quantize(w, x.t() @ x, bits, lblock, sym)
        rtn = block_quantize(w, bits, lblock, sym).dequant()
        y = xs[l.name] @ w
        a, b = M.sqnr_db(y, xs[l.name] @ rtn), M.sqnr_db(y, xs[l.name] @ q)
        weights[name] = kn(q, layout).contiguous().to(prog.initializers[name].dtype)
        qps[name] = qp
        notes.append(f"{l.name}: output SQNR RTN {a:.1f} dB → GPTQ {b:.1f} dB ({b - a:+.1f})")
        ctx.progress(f"gptq: {l.name} {a:.1f} → {b:.1f} dB")
    return FixResult(weights=weights, weight_qparams=qps, notes=notes)


@register_fix(
    "rtn",
    order=5,
    description="round to nearest: the baseline weight quantization (no change), listed to compare GPTQ and AWQ with",
    preserves_fp32=True,
)
def rtn(ctx: FixContext) -> FixResult:
    return FixResult(notes=["round to nearest (the baseline): weights unchanged"])
