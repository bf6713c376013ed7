"""Mixed precision over formats: per layer among float, INT8, W8 and W4 (group 32 or 128).

The search's float-layer phase (``search.py``) leaves some layers in FP32 and the rest in
static INT8. This phase then moves MatMul/Gemm layers (those ONNX Runtime's ``MatMulNBits``
runs) to weight-only formats where that saves the objective's cost and the budget still holds,
the way NVIDIA ModelOpt's AutoQuantize chooses formats per layer, but from measured costs and
every candidate verified by simulating the whole model:

1. Costs per layer and format: size from the engine's storage (``layer_bytes``: MatMulNBits
   packs ``bits`` per weight plus a float32 scale per block, and pads K to whole blocks); latency
   from ONNX Runtime's profiler on an engine with every candidate layer in that format.
2. Probe: each candidate layer alone at W4 (group 32) on top of the current config: one
   evaluation per layer gives its sensitivity to 4-bit weights.
3. Grow: layers by sensitivity per unit of cost saved; the longest prefix at W4 meeting the
   budget (binary search, each probe one evaluation).
4. Group size: each W4 layer tried at group 128 (cheaper where K fills whole blocks).
5. Float layers left by the float phase tried at W8 (weights 8-bit, activations float: most of
   the float accuracy at half the FP16 bytes).

Every evaluated config goes to the search's record (its Pareto fronts); the chosen config is
exportable as is: static INT8 and weight-only layers in one engine (``engine.build_weight_only_engine``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .scheme import Config, weight_only_format
from .simulate import weight_only_layout

if TYPE_CHECKING:
    from .analysis import Analysis
    from .graph import Layer

# search.py's Costs and Evaluated (search imports this module, not the other way round)
Costs = Any
Evaluated = Any
Progress = Callable[[str], None]
W4, W4_WIDE, W8 = "w4g32", "w4g128", "w8g32"
FORMATS: tuple[str, ...] = (W8, W4, W4_WIDE)  # the weight-only formats the phase chooses among


def candidates(a: Analysis, fixed: set[str]) -> list[Layer]:
    """Layers a weight-only format applies to (a MatMul/Gemm with a constant weight), except
    those the user's config names (``fixed``)."""
    return [l for l in a.qgraph.layers if l.name not in fixed and l.module not in fixed and weight_only_layout(a.qgraph, l)]


def layer_bytes(a: Analysis, layer: Layer, fmt: str) -> int:
    """Bytes the engine stores for ``layer``'s weight [K, N] in ``fmt``: fp16 2·K·N; fp32 4·K·N;
    int8 K·N + N·(4 + 1) (per-channel scale and zero point); weight-only ``wBgG``
    N·⌈K/G⌉·(G·B/8 + 4) (+ N·⌈⌈K/G⌉·B/8⌉ zero points when asymmetric)."""
    prog = a.qgraph.program
    w = prog.initializers[prog.nodes[layer.node].inputs[1]]
    k, n = (int(w.shape[0]), int(w.shape[1])) if a.sim.layout(layer) == "kn" else (int(w.shape[1]), int(w.shape[0]))
    if fmt == "fp16":
        return 2 * k * n
    if fmt == "fp32":
        return 4 * k * n
    if fmt == "int8":
        return k * n + 5 * n
    bits, block = weight_only_format(fmt)
    nb = -(-k // block)
    zp = 0 if a.config.scheme.weights.symmetric else n * math.ceil(nb * bits / 8)
    return n * nb * (block * bits // 8 + 4) + zp


def measure_format_us(a: Analysis, names: list[str], workdir: Path, say: Progress) -> dict[str, dict[str, float]]:
    """µs per batch-1 run of each layer in each weight-only format: ONNX Runtime's profiler on an
    engine with every candidate layer in that format (the rest as the all-INT8 engine)."""
    from .baseline import first_sample
    from .engine import attribute_to_layers, build_weight_only_engine, profile_nodes

    x1 = first_sample(a.workload.evaluation[0][0])
    out: dict[str, dict[str, float]] = {}
    for fmt in FORMATS:
        say(f"profiling a {fmt} engine for per-layer costs")
        cfg = a.config.with_layers({**a.config.layers, **{n: fmt for n in names}})
        path = workdir / f"search_{fmt}.onnx"
        build_weight_only_engine(a.qgraph, a.sim, a.sim.plan(cfg), path, a.workload.calibration[0])
        out[fmt] = attribute_to_layers(profile_nodes(path, x1, runs=20), a.qgraph)
        os.remove(path)
    return out


def formats_phase(
    a: Analysis,
    start: Evaluated,
    max_drop: float,
    objective: str,
    costs: Costs,
    evaluated: list[Evaluated],
    record: Callable[..., Evaluated],
    workdir: Path,
    progress: Progress | None = None,
) -> Evaluated:
    """The cheapest config found from ``start`` (the float phase's choice, within the budget)
    moving layers to W8/W4; every evaluation is appended to ``evaluated`` (``record``: the
    search's ``Evaluated``). Layers the analysis' config names are left as they are."""
    say = progress or (lambda m: None)
    cands = candidates(a, set(a.config.layers))
    if not cands:
        return start
    names = [l.name for l in a.qgraph.layers]
    by_name = {l.name: l for l in cands}
    fmt_us = measure_format_us(a, list(by_name), workdir, say) if objective == "latency" else {}
    floats0 = set(start.float_layers)

    def current_fmt(fmts: dict[str, str], n: str) -> str:
        return fmts.get(n) or ("fp32" if n in floats0 else "int8")

    def cost(fmts: dict[str, str]) -> tuple[float, int]:
        """(latency ms, size bytes) of the config: the float phase's cost model plus each
        weight-only layer's measured difference."""
        floats = {n for n in floats0 if n not in fmts}
        size = costs.size_bytes(floats)
        lat_float = floats | set(fmts)  # weight-only layers read float activations: boundaries as float
        us = costs.latency_ms(a, lat_float) * 1000.0
        for n, f in fmts.items():
            size += layer_bytes(a, by_name[n], f) - layer_bytes(a, by_name[n], "int8")
            if objective == "latency":
                us += fmt_us[f].get(n, 0.0) - costs.float_us.get(n, 0.0)
        return max(us, 0.0) / 1000.0, int(size)

    def saving(fmts: dict[str, str], n: str, f: str) -> float:
        """What moving layer ``n`` to ``f`` saves (> 0: cheaper), in the objective's unit."""
        before, after = cost(fmts), cost({**fmts, n: f})
        i = 0 if objective == "latency" else 1
        return float(before[i] - after[i])

    cache: dict[frozenset, Evaluated] = {}

    def evaluate(fmts: dict[str, str], phase: str) -> Evaluated:
        key = frozenset(fmts.items())
        if key in cache:
            return cache[key]
        cfg = config_of(a, start.float_layers, fmts)
        q = a.sim.outputs(a.workload.evaluation, a.sim.plan(cfg))
        metric = a.workload.score(q)
        lat, size = cost(fmts)
        e = record(len(evaluated), [n for n in names if n in floats0 and n not in fmts], metric,
                      a.workload.drop(a.fp32_metric, metric), lat, size, phase, formats=dict(fmts), config=cfg)  # fmt: skip
        evaluated.append(e)
        cache[key] = e
        say(f"config {e.config_id}: {len(fmts)} weight-only layer(s), drop {e.drop:.3g}, "
            f"{e.latency_ms:.3f} ms / {e.size_bytes / 1e6:.3f} MB (formats: {phase})")  # fmt: skip
        return e

    chosen, fmts = start, {}
    # 2. probe: each layer alone at W4 on top of the float phase's config
    sens: dict[str, float] = {}
    for n in by_name:
        if saving(fmts, n, W4) > 0:
            sens[n] = evaluate({n: W4}, "probe").drop - start.drop
    # 3. grow: the longest prefix of the order (least harm per unit saved) meeting the budget
    order = sorted(sens, key=lambda n: max(sens[n], 0.0) / max(saving({}, n, W4), 1e-12))
    lo, hi = 0, len(order)
    while lo < hi:  # largest k with drop(order[:k] at W4) within the budget
        mid = (lo + hi + 1) // 2
        if evaluate({n: W4 for n in order[:mid]}, "grow").drop <= max_drop:
            lo = mid
        else:
            hi = mid - 1
    if lo:
        fmts = {n: W4 for n in order[:lo]}
        chosen = evaluate(fmts, "grow")
    # 4. group size: each W4 layer at group 128 where cheaper, least sensitive first
    for n in order[:lo]:
        if saving(fmts, n, W4_WIDE) > 0:
            e = evaluate({**fmts, n: W4_WIDE}, "group")
            if e.drop <= max_drop:
                fmts, chosen = {**fmts, n: W4_WIDE}, e
    # 5. float layers at W8 (then W4) where cheaper
    for n in [n for n in names if n in floats0 and n in by_name and n not in fmts]:
        for f in (W4, W8):
            if saving(fmts, n, f) > 0:
                e = evaluate({**fmts, n: f}, "float→weight-only")
                if e.drop <= max_drop:
                    fmts, chosen = {**fmts, n: f}, e
                    break
    return chosen


def config_of(a: Analysis, float_layers: list[str], fmts: dict[str, str]) -> Config:
    """The analysis' config with ``float_layers`` in FP32 (the search's float: what the engine runs)
    and the weight-only formats ``fmts``."""
    return a.config.with_layers({**a.config.layers, **{n: "fp32" for n in float_layers if n not in fmts}, **fmts})
