"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Round-to-nearest is not the best rounding for a layer's *output*. Per layer, with the weight
grid (s, z) of round-to-nearest kept, learn whether each weight rounds up or down:

    w̃ = s · (clamp(⌊w/s⌋ + h(V) + z, qmin, qmax) − z),   h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)

    min_V  ‖f(W x) − f(W̃ x̂)‖² / ‖f(W x)‖²  +  λ · mean(1 − |2h(V) − 1|^β)

with ζ = 1.1, γ = −0.1, x the layer's float input in the float model, x̂ its input in the
quantized model exactly as the simulator produces it (earlier layers already AdaRounded), f
the ReLU that ORT fuses into the layer (if any), and β annealed from 20 to 2 after a warm-up
without the regularizer, which drives every h to 0 or 1. The result is hard: h = [V ≥ 0].

Layers are done in execution order. The learned weights are returned as w̃ = s·(q − z) together
with (s, z) as exact weight qparams, so ONNX Runtime's quantizer re-derives the very same
integers q. A layer keeps round-to-nearest if the learned rounding does not lower its
reconstruction error on the calibration data.
"""

from __future__ import annotations

import torch

from ..interpreter import OPS
from ..simulate import QParams, broadcast_qparams
from . import FixContext, FixResult, register_fix
from ._graph import feeds_of, fused_activation, node_args

ITERS = 300
LR = 1e-2
REG = 0.01  # λ
BETA = (20.0, 2.0)
WARMUP = 0.2  # fraction of iterations without the rounding regularizer
SEED = 0
# The weights ORT quantizes with the weight type. (It quantizes an Add's or Mul's constant input
# — a ViT's position embedding, a Linear's bias after its MatMul — as a uint8 activation, not
# with the scheme's weight grid, so an exact weight override would not reach it.)
ROUNDED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LayerNormalization")
ZETA, GAMMA = 1.1, -0.1


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _recon(node, args, pos: int, w: torch.Tensor, relu: bool) -> torch.Tensor:
    a = list(args)
    a[pos] = w
    y = OPS[node.op](a, node.attrs)
    y = y[0] if isinstance(y, (list, tuple)) else y
    return torch.relu(y) if relu else y


def adaround_weight(
    node, pos: int, w: torch.Tensor, qp: QParams, inputs: list[list], targets: list[torch.Tensor],
    relu: bool, *, iters: int, gen: torch.Generator,
) -> tuple[torch.Tensor, float, float]:  # fmt: skip
    """Learned rounding of one weight: (w̃, relative error of round-to-nearest, of w̃)."""
    s, z = broadcast_qparams(qp, w)
    qmin, qmax = qp.qrange.qmin, qp.qrange.qmax
    scaled = w.float() / s
    base = torch.floor(scaled)
    rest = (scaled - base).clamp(0.0, 1.0)
    # h(V) = rest at the start: round-to-nearest's information is where we begin
    v0 = -torch.log((ZETA - GAMMA) / (rest - GAMMA).clamp(1e-6, ZETA - GAMMA - 1e-6) - 1.0)
    v = torch.nn.Parameter(v0.clone())
    opt = torch.optim.Adam([v], lr=LR)
    energy = [float((t.double() ** 2).mean()) or 1.0 for t in targets]

    def weight(h: torch.Tensor) -> torch.Tensor:
        return s * (torch.clamp(base + h + z, qmin, qmax) - z)

    def err(wt: torch.Tensor) -> float:
        with torch.no_grad():
            e = sum(float(((_recon(node, a, pos, wt, relu) - t).double() ** 2).mean()) / en
                    for a, t, en in zip(inputs, targets, energy))  # fmt: skip
        return e / len(inputs)

    warm = int(WARMUP * iters)
    for it in range(iters):
        b = int(torch.randint(len(inputs), (1,), generator=gen))
        h = _h(v)
        y = _recon(node, inputs[b], pos, weight(h), relu)
        loss = ((y - targets[b]) ** 2).mean() / energy[b]
        if it >= warm:
            frac = (it - warm) / max(1, iters - warm)
            beta = BETA[0] + (BETA[1] - BETA[0]) * frac
            loss = loss + REG * (1 - (2 * h - 1).abs().pow(beta)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        learned = weight((v >= 0).float())
    rtn = s * (torch.clamp(torch.round(scaled) + z, qmin, qmax) - z)
    e_rtn, e_ada = err(rtn), err(learned)
    return (learned if e_ada < e_rtn else rtn), e_rtn, min(e_ada, e_rtn)


@register_fix(
    "adaround",
    order=40,
    description="AdaRound: learn each weight's rounding (up or down) to minimize the layer's output "
    "error on calibration data; same scales, new integers",
    preserves_fp32=False,
)
def adaround(ctx: FixContext) -> FixResult:
    qg, wl, prog = ctx.qg, ctx.workload, ctx.qg.program
    if not isinstance(ctx.scheme.weights.granularity, str):
        return FixResult(notes=["group-wise weights are not AdaRounded (ORT has no static group-wise kernels to carry them)"])
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    feeds = [feeds_of(qg, x) for x in wl.calibration]
    new_w: dict[str, torch.Tensor] = {}
    new_qp: dict[str, QParams] = {}
    gains, skipped = [], []
    todo = []
    plan0 = ctx.simulator().plan(ctx.config)
    for l in qg.layers:
        if l.op_type not in ROUNDED_OPS:
            continue
        for pos, w in l.weights:
            key = plan0.weights.get(w)
            if key is None or key[0] != "w" or prog.initializers[w].numel() < 2 or w in {t for _, t, _ in todo}:
                continue
            if key[2] != ctx.scheme.weights.bits:
                skipped.append(l.name)  # an int4 layer in an int8 scheme: its grid has no override path
                continue
            todo.append((l, w, pos))
    for i, (l, w, pos) in enumerate(todo):
        ctx.progress(f"adaround: {l.name} ({i + 1}/{len(todo)})")
        sim = ctx.simulator()
        sim.weight_overrides.update(new_w)
        sim.weight_qparams_override.update(new_qp)
        plan = sim.plan(ctx.config)
        node = prog.nodes[l.node]
        relu = fused_activation(qg, node.outputs[0])
        out = prog.nodes[relu].outputs[0] if relu is not None else node.outputs[0]
        with torch.no_grad():
            inputs = [node_args(sim, plan, f, l.node) for f in feeds]
            targets = [prog.run(f, nodes=range((relu if relu is not None else l.node) + 1), keep={out})[out] for f in feeds]
        qp = sim.weight_qparams(w, plan.weights[w][2])
        wt, e_rtn, e_ada = adaround_weight(node, pos, prog.initializers[w].float(), qp, inputs, targets,
                                           relu is not None, iters=ITERS, gen=gen)  # fmt: skip
        new_w[w] = wt.detach()
        new_qp[w] = qp
        gains.append((l.name, e_rtn, e_ada))
    if not gains:
        return FixResult(notes=["no quantized weights to round"])
    better = sum(1 for _, a, b in gains if b < a)
    notes = [
        (
            f"learned the rounding of {len(gains)} weight tensor(s), {ITERS} iterations each; "
            f"{better} beat round-to-nearest on the calibration data"
        )
    ]
    if skipped:
        notes.append(f"kept round-to-nearest for {', '.join(skipped)} (bits differ from the scheme's)")
    return FixResult(weights=new_w, weight_qparams=new_qp, notes=notes)
