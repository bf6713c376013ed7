"""Empirical bias correction (Nagel et al. 2019, §4.2, the data-driven variant).

Quantization error of a layer's weights and inputs is not zero-mean per output channel, so the
quantized model's pre-activations drift: E[ŷ] ≠ E[y]. For each layer with a per-channel bias
(Conv, Gemm, a Linear's MatMul + Add, LayerNormalization), in execution order,

    b ← b + E[y_fp32 − ŷ]      (mean over the calibration samples and all non-channel axes)

where y_fp32 is the layer output of the float model and ŷ the layer output of the quantized
model as the simulator runs it — fake-quantized inputs, weights and int32 bias, with the layers
before it already corrected. The corrected biases are new float values of the initializers,
so the engine carries them (as int32 biases with scale s_x·s_w).
"""

from __future__ import annotations

import torch

from .. import memory
from . import FixContext, FixResult, register_fix
from ._graph import feeds_of, linear_of


def _targets(qg) -> list[tuple[object, str, str, int]]:
    """(layer, bias initializer, output tensor, channel axis of the output) per correctable layer."""
    prog = qg.program
    out = []
    for l in qg.layers:
        node = prog.nodes[l.node]
        if node.op == "LayerNormalization" and l.bias is not None:
            out.append((l, l.bias[1], node.outputs[0], -1))
            continue
        lin = linear_of(qg, l)
        if lin is None or lin.bias is None:
            continue
        out.append((l, lin.bias, lin.output, lin.channel_axis))
    return out


def _channel_sum(t: torch.Tensor, axis: int) -> torch.Tensor:
    axis = axis % t.dim()
    dims = [d for d in range(t.dim()) if d != axis]
    return t.double().sum(dim=dims) if dims else t.double()


@register_fix(
    "bias_correction",
    order=30,
    description="empirical bias correction: add each layer's mean output shift E[y_fp32 − y_quant], "
    "measured on the calibration data, to its bias",
    preserves_fp32=False,
)
def bias_correction(ctx: FixContext) -> FixResult:
    qg, wl = ctx.qg, ctx.workload
    prog = qg.program
    targets = _targets(qg)
    if not targets:
        return FixResult(notes=["no layer with a per-channel bias"])
    feeds = [feeds_of(qg, x) for x in wl.calibration]
    outs = {t for _, _, t, _ in targets}
    # Every layer's float output on all calibration batches, computed once, if that fits the
    # memory budget; otherwise each layer recomputes its own (the same values, one more run each).
    fps = memory.Footprints(prog, qg.input_names)
    keep_all = sum(fps(x).kept(outs) * int(x[0].shape[0]) for x in wl.calibration) <= memory.current_budget()
    with torch.inference_mode():
        fp_envs = [prog.run(f, keep=outs) for f in feeds] if keep_all else [None] * len(feeds)
    new: dict[str, torch.Tensor] = {}
    shifts = []
    for i, (layer, bias, out, axis) in enumerate(targets):
        sim = ctx.simulator()
        sim.weight_overrides.update(new)
        p = sim.plan(ctx.config)
        total, n = 0.0, 0
        with torch.inference_mode():
            for f, env in zip(feeds, fp_envs):
                y = env[out] if env is not None else prog.run(f, nodes=range(prog.producer[out] + 1), keep={out})[out]
                q = sim.run(f, p, nodes=range(prog.producer[out] + 1), keep={out})[out]
                total = total + _channel_sum(y - q, axis)
                n += q.numel() // q.shape[axis % q.dim()]
        delta = total / n
        b = prog.initializers[bias]
        new[bias] = (b.double() + delta.reshape(b.shape)).to(b.dtype)
        shifts.append((layer.name, float(delta.abs().mean())))
        ctx.progress(f"bias correction: {layer.name} ({i + 1}/{len(targets)})")
    worst = max(shifts, key=lambda s: s[1]) if shifts else None
    notes = [f"corrected {len(shifts)} bias(es)" + (f"; largest mean shift {worst[1]:.3g} in {worst[0]}" if worst else "")]
    return FixResult(weights=new, notes=notes)
