"""A config's quantized model: check it, calibrate (after its fixes), simulate it, score it.

One home, below every step that needs "simulate a config and score it" (recommendations'
previews, compare, export, search, the fixes' own checks), so imports point one way: workload →
graph → calibrate → simulate → fixes → quantized → sensitivity/outliers → analysis → search /
compare / export → cli.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .calibrate import TensorStats, collect_stats
from .errors import ConfigError
from .graph import QuantGraph, prepare
from .scheme import ALL_LAYERS, Config
from .simulate import Simulator
from .workload import Workload

Progress = Callable[[str], None]


def check_config(config: Config, qg: QuantGraph) -> None:
    """Every layer a config names exists (a layer name or its leaf module; ``"*"``: every layer
    the config does not name); fixes are known."""
    known = set(qg.by_name) | {l.module for l in qg.layers if l.module} | {ALL_LAYERS}
    for name in config.layers:
        if name not in known:
            qg.layer(name)  # raises ConfigError with suggestions
    from .scheme import weight_only_format
    from .simulate import weight_only_layout

    for name, p in config.layers.items():
        if weight_only_format(p) is not None and name in qg.by_name and weight_only_layout(qg, qg.by_name[name]) is None:
            op = qg.program.nodes[qg.by_name[name].node].op
            raise ConfigError(f"layer {name!r}: weight-only {p!r} applies to MatMul/Gemm layers with a constant "
                              f"weight (ONNX Runtime's MatMulNBits); {name} is a {op}")  # fmt: skip
    if config.fixes:
        from .fixes import FIXES, list_fixes

        avail = list_fixes()
        for f in config.fixes:
            if f not in FIXES:
                raise ConfigError(f"unknown fix {f!r}; available: {', '.join(avail) or 'none in this version'}")


def prepare_simulator(
    workload: Workload, qg: QuantGraph, config: Config, *, progress: Progress | None = None
) -> tuple[Simulator, dict[str, TensorStats], list[str], torch.Tensor | None]:
    """Calibrate (after the config's fixes, if any) and build the Simulator.

    Returns (simulator, stats, fix notes, original FP32 outputs when the fixes changed the float
    model so that its own FP32 is no longer the reference, else None)."""
    if not config.fixes:  # histograms always: they feed the Distributions page and the previews
        stats = collect_stats(qg.program, workload.calibration, qg.quantized_tensors, histograms=True)
        return Simulator(qg, stats, config.scheme), stats, [], None
    from .fixes import FIXES, apply_fixes

    fixed = apply_fixes(workload, qg, config, progress=progress)
    sim = Simulator(fixed.qg, fixed.stats, config.scheme)
    sim.overrides.update(fixed.act_ranges)
    sim.weight_qparams_override.update(fixed.weight_qparams)
    reference = None
    if any(not FIXES[f].preserves_fp32 for f in fixed.applied):
        with torch.inference_mode():
            reference = torch.cat(
                [qg.program.run(dict(zip(qg.input_names, x)))[qg.program.outputs[0]].float() for x, _ in workload.evaluation]
            )
    return sim, fixed.stats, fixed.notes, reference


def simulate_outputs(wl: Workload, config: Config, progress: Progress | None = None) -> tuple[torch.Tensor, list[str]]:
    """The simulated model outputs of ``config`` on the evaluation data (fixes applied), and the
    fixes' notes: prepare the graph for its scheme, check the config, calibrate, simulate."""
    qg = prepare(wl, config.scheme)
    check_config(config, qg)
    sim, _, notes, _ = prepare_simulator(wl, qg, config, progress=progress)
    return sim.outputs(wl.evaluation, sim.plan(config)), notes
