"""Helpers the fixes share: the geometry of linear layers in the float ONNX graph, the inputs a
layer reads in the simulated quantized model, and simulated metrics.

A *linear* layer computes y = W·x (+ b) along one channel axis of its weight:

==========================  ===================  ========  =======  ==================
op                          weight shape         out axis  in axis  bias
==========================  ===================  ========  =======  ==================
Conv (groups = 1)           [out, in, k…]        0         1        input 2
Conv (depthwise, in = out)  [C, 1, k…]           0         0        input 2
Gemm (transB = 1)           [out, in]            0         1        input 2 ([out])
Gemm (transB = 0)           [in, out]            1         0        input 2 ([out])
MatMul (3-D Linear)         [in, out]            1         0        the following Add
==========================  ===================  ========  =======  ==================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..graph import Layer, QuantGraph
from ..simulate import SimPlan, Simulator
from ..workload import Workload


@dataclass(frozen=True)
class Linear:
    layer: Layer
    node: int
    weight: str  # initializer
    out_axis: int
    in_axis: int
    bias: str | None  # initializer added per output channel (Conv/Gemm input 2, or MatMul's Add)
    output: str  # the tensor after the bias
    depthwise: bool = False
    channel_axis: int = 1  # the output channel's axis in the activation (−1 for MatMul on tokens)


def _only_consumer(qg: QuantGraph, tensor: str) -> int | None:
    cons = qg.program.consumers.get(tensor, [])
    if len(cons) != 1 or tensor in qg.program.outputs:
        return None
    return cons[0]


def linear_of(qg: QuantGraph, layer: Layer) -> Linear | None:
    """The linear geometry of ``layer``, or None for anything else (grouped convs included)."""
    prog = qg.program
    node = prog.nodes[layer.node]
    inits = prog.initializers
    if node.op == "Conv" and len(node.inputs) > 1 and node.inputs[1] in inits:
        w = inits[node.inputs[1]]
        g = int(node.attrs.get("group", 1))
        b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] in inits else None
        if g == 1:
            return Linear(layer, node.index, node.inputs[1], 0, 1, b, node.outputs[0])
        if w.shape[1] == 1 and g == w.shape[0]:
            return Linear(layer, node.index, node.inputs[1], 0, 0, b, node.outputs[0], depthwise=True)
        return None
    if node.op == "Gemm" and node.inputs[1] in inits and not node.attrs.get("transA", 0):
        w = inits[node.inputs[1]]
        if w.dim() != 2:
            return None
        out_axis = 0 if node.attrs.get("transB", 0) else 1
        b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] in inits else None
        if b is not None and inits[b].numel() != w.shape[out_axis]:
            return None  # a broadcast bias cannot be rescaled per channel
        return Linear(layer, node.index, node.inputs[1], out_axis, 1 - out_axis, b, node.outputs[0])
    if node.op == "MatMul" and len(node.inputs) == 2 and node.inputs[1] in inits and inits[node.inputs[1]].dim() == 2:
        w = inits[node.inputs[1]]
        out, bias = node.outputs[0], None
        c = _only_consumer(qg, out)
        if c is not None and prog.nodes[c].op == "Add":
            other = [t for t in prog.nodes[c].inputs if t != out]
            if len(other) == 1 and other[0] in inits and inits[other[0]].reshape(-1).numel() == w.shape[1] and inits[other[0]].dim() == 1:
                bias, out = other[0], prog.nodes[c].outputs[0]
        return Linear(layer, node.index, node.inputs[1], 1, 0, bias, out, channel_axis=-1)
    return None


def linears(qg: QuantGraph) -> dict[int, Linear]:
    """Node index → Linear for every linear layer of the graph."""
    out = {}
    for l in qg.layers:
        lin = linear_of(qg, l)
        if lin is not None:
            out[l.node] = lin
    return out


def scale_along(t: torch.Tensor, axis: int, s: torch.Tensor) -> torch.Tensor:
    """t · s broadcast along ``axis`` (s has t.shape[axis] entries)."""
    shape = [1] * t.dim()
    shape[axis] = -1
    return t * s.to(t.dtype).reshape(shape)


def channel_absmax(t: torch.Tensor, axis: int) -> torch.Tensor:
    """max |t| per index of ``axis``."""
    moved = t.detach().movedim(axis, 0)
    return moved.reshape(moved.shape[0], -1).abs().amax(1)


# --------------------------------------------------------------------------- running


def feeds_of(qg: QuantGraph, batch: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(zip(qg.input_names, batch))


def node_args(sim: Simulator, plan: SimPlan, feeds: Mapping[str, torch.Tensor], node: int) -> list[torch.Tensor | None]:
    """The arguments node ``node`` receives in the simulated run of ``plan``: activations after
    their fake quantization, weights as the plan quantizes them."""
    prog = sim.prog
    edges = plan.edges
    seen: dict[int, torch.Tensor] = {}

    def edge(i: int, pos: int, v: torch.Tensor) -> torch.Tensor:
        k = edges.get((i, pos))
        v = v if k is None else sim._apply(k, v, prog.nodes[i].inputs[pos])
        if i == node:
            seen[pos] = v
        return v

    prog.run(feeds, nodes=range(node + 1), edge=edge, weights=sim.weights_for(plan))
    return [seen.get(p) if t else None for p, t in enumerate(prog.nodes[node].inputs)]


def float_tensors(qg: QuantGraph, feeds: Mapping[str, torch.Tensor], tensors: set[str], upto: int | None = None) -> dict[str, torch.Tensor]:
    """Float-graph values of ``tensors`` (running nodes up to ``upto`` when given)."""
    nodes = None if upto is None else range(upto + 1)
    env = qg.program.run(feeds, nodes=nodes, keep=set(tensors) if upto is None else True)
    return {t: env[t] for t in tensors if t in env}


def outputs(wl: Workload, sim: Simulator, plan: SimPlan) -> torch.Tensor:
    """The model outputs on the evaluation data under ``plan`` (concatenated)."""
    return sim.outputs(wl.evaluation, plan)


def fused_activation(qg: QuantGraph, tensor: str) -> int | None:
    """The Relu that is ``tensor``'s only consumer (ORT fuses it into the producing op)."""
    c = _only_consumer(qg, tensor)
    if c is not None and qg.program.nodes[c].op == "Relu":
        return c
    return None


# --------------------------------------------------------------------------- trial weights


def graph_with(qg: QuantGraph, new: Mapping[str, torch.Tensor]) -> QuantGraph:
    """An in-memory copy of ``qg`` whose float graph has ``new`` initializer values (nothing saved;
    ``fixes.with_initializers`` makes the real one once a fix has decided)."""
    import copy

    out = copy.copy(qg)
    prog = copy.copy(qg.program)
    prog.initializers = {**qg.program.initializers, **{k: v.detach().float() for k, v in new.items()}}
    out.program = prog
    return out


def calibration_error(ctx, new: Mapping[str, torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Σ ‖y_ref − ŷ‖² over the calibration batches, ŷ the quantized model of ``ctx.config`` with
    ``new`` initializer values, re-calibrated as ``apply_fixes`` would re-calibrate it."""
    from ..calibrate import collect_stats

    qg = graph_with(ctx.qg, new) if new else ctx.qg
    a = ctx.scheme.act
    stats = collect_stats(qg.program, ctx.workload.calibration, qg.quantized_tensors,
                          histograms=a.calibration != "minmax" and not a.dynamic)  # fmt: skip
    sim = Simulator(qg, stats, ctx.scheme)
    sim.weight_qparams_override.update(ctx.weight_qparams)
    plan = sim.plan(ctx.config)
    err = 0.0
    with torch.inference_mode():
        for x, ref in zip(ctx.workload.calibration, reference):
            err += float(((sim.output(sim.run(feeds_of(qg, x), plan)) - ref).double() ** 2).sum())
    return err


def calibration_reference(qg: QuantGraph, wl: Workload) -> list[torch.Tensor]:
    """The float graph's outputs on the calibration batches."""
    with torch.inference_mode():
        return [qg.program.run(feeds_of(qg, x))[qg.program.outputs[0]].float() for x in wl.calibration]
