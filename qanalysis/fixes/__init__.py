"""Fixes that recover accuracy, each a transformation the engine really carries.

A fix is a function ``FixContext → FixResult`` registered under a name; a config names
fixes in ``"fixes": [...]`` and ``apply_fixes`` runs them in the canonical order
(equalizations first, then bias correction, AdaRound, QAT), re-calibrating between them.
Everything a fix changes is carried by the engine:

* ``weights`` — new float values of initializers of the float ONNX graph (CLE and
  SmoothQuant rescale weights, bias correction changes biases, QAT fine-tunes them). They
  become a new float ONNX model, which the simulation runs and ``quantize_static`` quantizes.
* ``act_ranges`` — forced [rmin, rmax] of quantized tensors (QAT's learned ranges); passed
  to the engine through ``TensorQuantOverrides`` like every other activation scale.
* ``weight_qparams`` — exact weight scales/zero points (AdaRound: the learned rounding is
  stored as w̃ = s·q in ``weights``, and ``s`` is given to ORT too, so it re-derives the
  very same integers).
"""

from __future__ import annotations

import hashlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx
import torch

from ..calibrate import TensorStats, collect_stats
from ..errors import ConfigError
from ..scheme import Config, QParams, Scheme
from ..workload import Workload

Progress = Callable[[str], None]


@dataclass
class FixContext:
    workload: Workload
    qg: "object"  # QuantGraph with the weights of the fixes applied so far
    stats: dict[str, TensorStats]  # calibration statistics of that graph (histograms included)
    scheme: Scheme
    config: Config
    act_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # from earlier fixes
    weight_qparams: dict[str, QParams] = field(default_factory=dict)  # from earlier fixes
    progress: Progress = lambda m: None  # noqa: E731

    def simulator(self):
        """A Simulator of the current graph, with earlier fixes' ranges and weight qparams."""
        from ..simulate import Simulator

        sim = Simulator(self.qg, self.stats, self.scheme)
        sim.overrides.update(self.act_ranges)
        sim.weight_qparams_override.update(self.weight_qparams)
        return sim


@dataclass
class FixResult:
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    act_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    weight_qparams: dict[str, QParams] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fix:
    name: str
    fn: Callable[[FixContext], FixResult]
    order: int
    description: str
    preserves_fp32: bool  # the float model computes the same function after the fix


FIXES: dict[str, Fix] = {}


def register_fix(name: str, *, order: int, description: str, preserves_fp32: bool) -> Callable:
    def deco(fn: Callable[[FixContext], FixResult]) -> Callable[[FixContext], FixResult]:
        FIXES[name] = Fix(name, fn, order, description, preserves_fp32)
        return fn

    return deco


def list_fixes() -> list[str]:
    _load()
    return sorted(FIXES, key=lambda n: FIXES[n].order)


def _load() -> None:
    """Import the fix modules (each registers itself); missing ones are simply absent."""
    import importlib

    for mod in ("cle", "smoothquant", "awq", "gptq", "bias_correction", "adaround", "qat"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


@dataclass
class Fixed:
    """The graph and overrides after a config's fixes; ``qg`` is a new QuantGraph if weights changed."""

    qg: "object"
    stats: dict[str, TensorStats]
    act_ranges: dict[str, tuple[float, float]]
    weight_qparams: dict[str, QParams]
    notes: list[str]
    applied: list[str]


def with_initializers(qg, new: dict[str, torch.Tensor]):
    """A copy of ``qg`` whose float graph has ``new`` initializer values (saved as a new model)."""
    unknown = [n for n in new if n not in qg.program.initializers]
    if unknown:
        raise ConfigError(f"a fix changed unknown initializers: {', '.join(unknown[:3])}")
    model = onnx.load(str(qg.float_path))
    for t in model.graph.initializer:
        if t.name in new:
            arr = new[t.name].detach().to(qg.program.initializers[t.name].dtype).numpy()
            t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
    h = hashlib.sha1(b"".join(new[k].detach().numpy().tobytes() for k in sorted(new))).hexdigest()[:10]
    path = Path(qg.workdir) / f"model_fp32_fixed_{h}.onnx"
    onnx.save(model, str(path))
    out = copy.copy(qg)
    prog = copy.copy(qg.program)
    prog.initializers = {**qg.program.initializers, **{k: v.detach().clone() for k, v in new.items()}}
    out.program = prog
    out.float_path = path
    return out


def apply_fixes(workload: Workload, qg, config: Config, progress: Progress | None = None) -> Fixed:
    say = progress or (lambda m: None)
    _load()
    unknown = [f for f in config.fixes if f not in FIXES]
    if unknown:
        avail = ", ".join(list_fixes()) or "none in this version"
        raise ConfigError(f"unknown fix {unknown[0]!r}; available: {avail}")
    hist = True
    stats = collect_stats(qg.program, workload.calibration, qg.quantized_tensors, histograms=hist)
    act_ranges: dict[str, tuple[float, float]] = {}
    wqp: dict[str, QParams] = {}
    notes: list[str] = []
    applied: list[str] = []
    for name in sorted(dict.fromkeys(config.fixes), key=lambda n: FIXES[n].order):
        say(f"applying fix: {name}")
        ctx = FixContext(workload, qg, stats, config.scheme, config, dict(act_ranges), dict(wqp), say)
        r = FIXES[name].fn(ctx)
        if r.weights:
            qg = with_initializers(qg, r.weights)
            stats = collect_stats(qg.program, workload.calibration, qg.quantized_tensors, histograms=hist)
        act_ranges.update(r.act_ranges)
        wqp.update(r.weight_qparams)
        notes += [f"{name}: {n}" for n in r.notes]
        applied.append(name)
    return Fixed(qg, stats, act_ranges, wqp, notes, applied)
