"""Quantization-aware training: fine-tune the float weights through the simulated quantizer.

The forward pass is the simulator's — the float ONNX graph run by the torch interpreter, with
fake quantization on exactly the edges, weights and biases ORT quantizes for this config — but
every rounding is a straight-through estimator (STE):

    x̂ = clamp(x, lo, hi) + (Q(x) − clamp(x, lo, hi)).detach()     lo, hi = s·(qmin − z), s·(qmax − z)

so the gradient is 1 inside the grid's range and 0 where the value is clipped; weights use
ŵ = w + (Q(w) − w).detach() with their scale recomputed from the current weights each step
(min-max, as at export), biases their int32 rounding with scale s_x·s_w.

Activation ranges are *fixed* from calibration (the config's calibration method, or a range an
earlier fix forced) — not learned — and returned as ``act_ranges``, so the engine uses the
grids the weights were trained for. The trained parameters are the quantized layers' weights
and biases (every float initializer ORT quantizes as a weight, plus the biases); shape
constants and scalars stay as they are. Adam, a small learning rate, a few epochs over
``training_batches()`` reshuffled with a seeded generator, with the workload's loss.
"""

from __future__ import annotations

import torch

from ..calibrate import calibration_range
from ..errors import ConfigError
from ..scheme import QParams, QRange, compute_scale_zp
from ..simulate import Simulator, broadcast_qparams, dynamic_fake_quant, fake_quant, quantize_weight
from ..workload import as_inputs
from . import FixContext, FixResult, register_fix

EPOCHS = 3
LR = 1e-4
BATCH = 32
SEED = 0
MAX_STEPS: int | None = None  # cap on optimizer steps (tests)


def ste_fake_quant(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """fake_quant in the forward pass; gradient 1 inside [s(qmin − z), s(qmax − z)], 0 outside."""
    s, z = broadcast_qparams(qp, x)
    lo, hi = s * (qp.qrange.qmin - z), s * (qp.qrange.qmax - z)
    xc = torch.minimum(torch.maximum(x, lo), hi)
    return xc + (fake_quant(x.detach(), qp) - xc).detach()


def _straight(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return x + (q - x).detach()


class _QATModel:
    """The simulator's forward pass, differentiable, over trainable copies of the weights."""

    def __init__(self, sim: Simulator, plan, params: dict[str, torch.nn.Parameter]):
        self.sim, self.plan, self.params = sim, plan, params
        self.prog = sim.prog
        a = sim.scheme.act
        self.qr = QRange.for_bits(a.bits, a.symmetric)
        # fixed grids, as plain (not inference-mode) tensors so autograd can save them
        self.act: dict[str, QParams] = {}
        for (i, pos), key in plan.edges.items():
            if key and key[0] == "q":
                t = self.prog.nodes[i].inputs[pos]
                self.act.setdefault(t, self._clone(sim.act_qparams(t)))
        for t, key in plan.outputs.items():
            if key and key[0] == "q":
                self.act.setdefault(t, self._clone(sim.act_qparams(t)))

    @staticmethod
    def _clone(qp: QParams | None) -> QParams | None:
        if qp is None:
            return None
        return QParams(qp.scale.clone(), qp.zero_point.clone(), qp.qrange, qp.axis, qp.group)

    def _quant(self, key, v: torch.Tensor, tensor: str) -> torch.Tensor:
        if key is None or not v.is_floating_point():
            return v
        if key[0] == "q":
            qp = self.act.get(tensor)
            return v if qp is None else ste_fake_quant(v, qp)
        if key[0] == "dyn":
            return _straight(v, dynamic_fake_quant(v.detach(), key[1], key[2]))
        if key[0] == "fp16":
            return _straight(v, v.detach().half().float())
        raise KeyError(key)

    def weights(self) -> dict[str, torch.Tensor]:
        sim, plan = self.sim, self.plan
        scheme = sim.scheme
        out: dict[str, torch.Tensor] = dict(self.params)
        wqp: dict[str, QParams] = {}
        for name, key in plan.weights.items():
            if key is None or key[0] != "w":
                continue
            w = self.params.get(name, self.prog.initializers[name].float())
            if name in sim.weight_qparams_override and key[2] == scheme.weights.bits:
                qp = self._clone(sim.weight_qparams_override[name])
                wq = fake_quant(w.detach(), qp)
            else:
                wq, qp = quantize_weight(w.detach(), scheme.weights, sim.qg.weight_axis.get(name), key[2])
            wqp[name] = qp
            out[name] = _straight(w, wq)
        for name, key in plan.weights.items():
            if key is None:
                continue
            w = self.params.get(name, self.prog.initializers[name].float())
            if key[0] == "fp16":
                out[name] = _straight(w, w.detach().half().float())
            elif key[0] == "c":  # a constant ORT quantizes like an activation (own range)
                a = scheme.act
                qr = QRange.for_bits(a.bits, a.symmetric)
                s_, z_ = compute_scale_zp(w.detach().min(), w.detach().max(), qr, a.symmetric)
                out[name] = _straight(w, fake_quant(w.detach(), QParams(s_, z_, qr)))
            elif key[0] == "b":
                layer = sim.qg.by_name[key[2]]
                aq = self.act.get(layer.act_inputs[0][1]) if layer.act_inputs else None
                qw = wqp.get(layer.weights[0][1]) if layer.weights else None
                if aq is None or qw is None or qw.group is not None:
                    out[name] = w
                else:
                    bs = (aq.scale * qw.scale).float()
                    out[name] = _straight(w, torch.round(w.detach() / bs) * bs)
        return out

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        nodes = self.prog.nodes
        edges = self.plan.edges

        def edge(i: int, pos: int, v: torch.Tensor) -> torch.Tensor:
            k = edges.get((i, pos))
            return v if k is None else self._quant(k, v, nodes[i].inputs[pos])

        env = self.prog.run(dict(zip(self.sim.qg.input_names, inputs)), edge=edge, weights=self.weights())
        out = self.prog.outputs[0]
        v = env[out]
        if out in self.plan.outputs:
            v = self._quant(self.plan.outputs[out], v, out)
        return v.float()


def trainable(qg) -> list[str]:
    """The float initializers QAT fine-tunes: every layer's weights and bias."""
    names = []
    for l in qg.layers:
        for _, w in l.weights + ([l.bias] if l.bias else []):
            t = qg.program.initializers.get(w)
            if t is not None and t.is_floating_point() and t.numel() > 1 and w not in names:
                names.append(w)
    return names


def _training_data(ctx: FixContext) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    wl = ctx.workload
    if wl.training is None:
        raise ConfigError(
            f"the fix 'qat' needs training data, and {wl.name} has none: define training_batches() "
            "(yielding (inputs, targets)) in the spec"
        )
    try:
        batches = list(wl.training())
    except Exception as e:  # noqa: BLE001 - user code
        raise ConfigError(f"training_batches() raised {type(e).__name__}: {e}") from None
    out = []
    for i, b in enumerate(batches):
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise ConfigError(f"training batch {i}: expected (inputs, targets), got {type(b).__name__}")
        x = tuple(t.detach().float() if t.is_floating_point() else t.detach() for t in as_inputs(b[0], f"training batch {i}"))
        out.append((x, torch.as_tensor(b[1])))
    if not out:
        raise ConfigError("training_batches() yielded no batches: the fix 'qat' needs training data")
    return out


def _reshuffle(data, gen: torch.Generator):
    """One epoch: all samples concatenated, permuted, cut into BATCH-sized batches."""
    xs = [torch.cat([d[0][k] for d in data]) for k in range(len(data[0][0]))]
    ys = torch.cat([d[1] for d in data])
    perm = torch.randperm(ys.shape[0], generator=gen)
    for i in range(0, ys.shape[0], BATCH):
        idx = perm[i : i + BATCH]
        yield tuple(x[idx] for x in xs), ys[idx]


@register_fix(
    "qat",
    order=50,
    description="quantization-aware training: fine-tune the weights through the simulated quantizer "
    "(straight-through estimator, activation ranges fixed from calibration) on training_batches()",
    preserves_fp32=False,
)
def qat(ctx: FixContext) -> FixResult:
    data = _training_data(ctx)
    wl, qg = ctx.workload, ctx.qg
    loss_fn = wl.loss
    if loss_fn is None:
        raise ConfigError("the fix 'qat' needs a loss: define loss(outputs, targets) in the spec")
    sim = ctx.simulator()
    plan = sim.plan(ctx.config)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    names = trainable(qg)
    params = {n: torch.nn.Parameter(qg.program.initializers[n].detach().float().clone()) for n in names}
    model = _QATModel(sim, plan, params)
    opt = torch.optim.Adam(list(params.values()), lr=LR)
    steps, first, last = 0, None, None
    with torch.enable_grad():
        for epoch in range(EPOCHS):
            total, n = 0.0, 0
            for x, y in _reshuffle(data, gen):
                out = model(x)
                loss = loss_fn(out, y)
                if not torch.isfinite(loss):
                    raise ConfigError(f"QAT diverged (loss {float(loss)}) at epoch {epoch + 1}; lower qat.LR")
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * int(y.shape[0])
                n += int(y.shape[0])
                steps += 1
                if MAX_STEPS is not None and steps >= MAX_STEPS:
                    break
            mean = total / max(n, 1)
            first = mean if first is None else first
            last = mean
            ctx.progress(f"qat: epoch {epoch + 1}/{EPOCHS}, training loss {mean:.4f}")
            if MAX_STEPS is not None and steps >= MAX_STEPS:
                break
    ranges = {}
    a = ctx.scheme.act
    if not a.dynamic:
        for owner in sorted(set(qg.act_owner.values())):
            st = ctx.stats.get(owner)
            if st is not None:
                lo, hi = sim.overrides.get(owner) or calibration_range(st, a)
                ranges[owner] = (float(lo), float(hi))
    weights = {n: p.detach().to(qg.program.initializers[n].dtype) for n, p in params.items()}
    note = (
        f"fine-tuned {len(names)} tensor(s) for {steps} step(s) ({EPOCHS} epoch(s) max, lr {LR}); "
        f"training loss (quantized) {first:.4f} → {last:.4f}; activation ranges fixed from calibration"
    )
    return FixResult(weights=weights, act_ranges=ranges, notes=[note])
