"""ONNX Runtime's speed options for an engine, picked by measurement when it is exported.

Tried (a bounded set: at most ``len(BUILD_CANDIDATES)`` quantize_static builds and
``len(SESSION_CANDIDATES)`` sessions, each timed with ``baseline.latency_protocol`` at batch 1):

* session options, on the same engine file (no rebuild): the graph optimization level —
  ``ORT_ENABLE_ALL`` (ORT's default: Q/DQ → QLinearConv/QGemm fusion plus the NCHWc layout
  transforms of float convs), ``ORT_ENABLE_EXTENDED`` (the fusions, no layout transforms),
  ``ORT_ENABLE_BASIC`` (no Q/DQ fusion: DequantizeLinear → float kernel → QuantizeLinear);
  one intra-op thread instead of ORT's one per physical core; no thread spinning;
* build options (one quantize_static each, ``engine.BUILD_OPTIONS``): int8 instead of uint8
  activations with the zero point shifted by 128 (the same grid, other kernels), and
  ``DedicatedQDQPair`` (a Q/DQ pair per consumer instead of a shared one).

An option may change speed only, never what the simulation predicts: a candidate is admissible
when its outputs on the first evaluation batch are as close to the simulation's as the default
engine's (SQNR at most ``NUMERICS_TOLERANCE_DB`` lower, or above ``EXACT_ENOUGH_DB``). The fastest admissible candidate
replaces the default only if it is at least ``MIN_GAIN`` faster, and again so in a second,
interleaved timing of the two (a busy machine must not pick by noise).

Left out, because they change the numbers (see EXCLUDED): ActivationSymmetric, reduce_range,
QDQKeepRemovableActivations, QDQOpTypePerChannelSupportToAxis, per-op u8/s8 mixes.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import metrics as M
from .baseline import latency_protocol
from .engine import run_session, session
from .errors import ExportError
from .workload import Inputs

DEFAULT_SESSION: dict[str, Any] = {"graph_optimization_level": "ORT_ENABLE_ALL"}
SESSION_CANDIDATES: list[dict[str, Any]] = [
    DEFAULT_SESSION,
    {"graph_optimization_level": "ORT_ENABLE_EXTENDED"},
    {"graph_optimization_level": "ORT_ENABLE_BASIC"},
    {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": 1},
    {"graph_optimization_level": "ORT_ENABLE_ALL", "allow_spinning": False},
]
DEFAULT_BUILD: dict[str, Any] = {"activation_type": "QUInt8", "DedicatedQDQPair": False}
BUILD_CANDIDATES: list[dict[str, Any]] = [
    DEFAULT_BUILD,
    {"activation_type": "QInt8", "DedicatedQDQPair": False},
    {"activation_type": "QUInt8", "DedicatedQDQPair": True},
]
EXCLUDED = {
    "ActivationSymmetric": "a symmetric activation grid (zero point fixed) is another quantization, not a speed "
    "knob: it is the scheme's activations.symmetric, simulated and exported as chosen there",
    "reduce_range": "7-bit weights change every weight's grid; meant for CPUs without VNNI (int16 saturation of "
    "u8·s8 pairs), which the uint8 default avoids on AVX512-VNNI",
    "QDQKeepRemovableActivations": "keeps ReLU/Clip between Q/DQ: the producer's output is then quantized on its "
    "pre-activation range (a coarser grid than simulated) and every such activation adds a Q/DQ pair",
    "QDQOpTypePerChannelSupportToAxis": "moves per-channel weight scales to another axis (MatMul): other weight "
    "grids than simulated",
    "per-op u8/s8": "mixing activation types per tensor adds a requantization at every u8↔s8 boundary; only the "
    "all-u8 and all-s8 engines are tried (two builds, same grid)",
    "QDQDisableWeightAdjustForInt32Bias": "ORT's weight-scale adjustment only acts when s_x·s_w is too small for an "
    "int32 bias; changing it changes weights, not speed",
}
NUMERICS_TOLERANCE_DB = 1.0
EXACT_ENOUGH_DB = 80.0
MIN_GAIN = 0.05  # a candidate must be ≥ 5 % faster than the default (median), twice


@dataclass
class OrtChoice:
    """The chosen session and build options, and every measured alternative."""

    session: dict[str, Any]
    build: dict[str, Any]
    tried: list[dict[str, Any]] = field(default_factory=list)
    confirm: dict[str, Any] = field(default_factory=dict)
    builds: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": {"session": self.session, "build": self.build}, "tried": self.tried, "confirm": self.confirm,
                "engine_builds": self.builds, "excluded": EXCLUDED, "how_to_load": how_to_load(self.session)}  # fmt: skip


def how_to_load(options: dict[str, Any], engine: str = "model_int8.onnx") -> str:
    """The Python that creates the deployed session with ``options``."""
    lines = ["import onnxruntime as ort", "so = ort.SessionOptions()"]
    level = options.get("graph_optimization_level")
    if level:
        lines.append(f"so.graph_optimization_level = ort.GraphOptimizationLevel.{level}")
    if options.get("intra_op_num_threads"):
        lines.append(f"so.intra_op_num_threads = {int(options['intra_op_num_threads'])}")
    if options.get("allow_spinning") is not None:
        lines.append(f"so.add_session_config_entry('session.intra_op.allow_spinning', '{1 if options['allow_spinning'] else 0}')")
    lines.append(f"sess = ort.InferenceSession('{engine}', so, providers=['CPUExecutionProvider'])")
    return "\n".join(lines)


def _label(session_opts: dict[str, Any], build: dict[str, Any]) -> dict[str, Any]:
    return {"session": dict(session_opts), "build": dict(build)}


def _interleaved(a: Callable[[], object], b: Callable[[], object], rounds: int = 6, runs: int = 5) -> tuple[float, float]:
    """Median ms per call of ``a`` and ``b``, timed in alternating blocks (same load for both)."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(latency_protocol(a, repeats=runs, warmup=1, budget_s=2.0)["median_ms"])
        tb.append(latency_protocol(b, repeats=runs, warmup=1, budget_s=2.0)["median_ms"])
    return statistics.median(ta), statistics.median(tb)


def choose(
    default_engine: Path,
    build: Callable[[dict[str, Any], Path], Path] | None,
    x1: Inputs,
    check: Inputs,
    simulated: torch.Tensor,
    *,
    repeats: int = 50,
    budget_s: float = 3.0,
    progress: Callable[[str], None] | None = None,
) -> tuple[OrtChoice, Path]:
    """Time the candidates on ``x1`` (batch 1); numerics checked on ``check`` against the
    simulation's outputs ``simulated``. ``build(options, path)`` writes an engine built with
    ``options`` (None: session options only). Returns the choice and the chosen engine's path
    (``default_engine`` or a sibling file the caller renames)."""
    say = progress or (lambda m: None)
    tried: list[dict[str, Any]] = []
    paths: dict[int, Path] = {0: default_engine}
    n_builds = 0

    def measure(path: Path, so: dict[str, Any], bo: dict[str, Any]) -> dict[str, Any]:
        row = _label(so, bo)
        try:
            s = session(path, options=so)
            out = run_session(s, check)
        except ExportError as e:
            return {**row, "error": str(e)}
        row["sqnr_vs_simulated_db"] = M.sqnr_db(out, simulated)
        lat = latency_protocol(lambda: run_session(s, x1), repeats=repeats, warmup=3, budget_s=budget_s)
        return {**row, "median_ms": lat["median_ms"], "iqr_ms": lat["iqr_ms"], "runs": lat["runs"], "unstable": lat["unstable"]}

    say("ONNX Runtime options: timing session options on the engine")
    for so in SESSION_CANDIDATES:
        tried.append(measure(default_engine, so, DEFAULT_BUILD))
    if build is not None:
        for k, bo in enumerate(BUILD_CANDIDATES[1:], start=1):
            say(f"ONNX Runtime options: building and timing {', '.join(f'{a}={b}' for a, b in bo.items())}")
            p = default_engine.with_name(f".{default_engine.stem}.opt{k}-{os.getpid()}.onnx")
            try:
                build(bo, p)
                n_builds += 1
            except ExportError as e:
                tried.append({**_label(DEFAULT_SESSION, bo), "error": str(e)})
                continue
            paths[k] = p
            tried.append({**measure(p, DEFAULT_SESSION, bo), "build_index": k})
    base = tried[0]
    if "error" in base:
        raise ExportError(f"the engine cannot be timed with ONNX Runtime's default options: {base['error']}")
    # a float reordering (threads) is not another numerics: above EXACT_ENOUGH_DB, both agree with the simulation
    floor = min(base["sqnr_vs_simulated_db"] - NUMERICS_TOLERANCE_DB, EXACT_ENOUGH_DB)
    for r in tried:
        if "error" not in r:
            r["same_numerics"] = r["sqnr_vs_simulated_db"] >= floor
    ok = [r for r in tried if "error" not in r and r["same_numerics"]]
    best_session = min((r for r in ok if r["build"] == DEFAULT_BUILD), key=lambda r: r["median_ms"])
    best_build = min((r for r in ok if r["session"] == DEFAULT_SESSION), key=lambda r: r["median_ms"])

    def gains(r: dict[str, Any]) -> bool:
        return r["median_ms"] < base["median_ms"] * (1 - MIN_GAIN)

    so = best_session["session"] if gains(best_session) else dict(DEFAULT_SESSION)
    bo = best_build["build"] if gains(best_build) else dict(DEFAULT_BUILD)
    chosen_path = paths[best_build.get("build_index", 0)] if bo != DEFAULT_BUILD else default_engine
    confirm: dict[str, Any] = {}
    if so != DEFAULT_SESSION or bo != DEFAULT_BUILD:
        say("ONNX Runtime options: confirming the faster options against the default, interleaved")
        sd, sc = session(default_engine, options=DEFAULT_SESSION), session(chosen_path, options=so)
        d_ms, c_ms = _interleaved(lambda: run_session(sd, x1), lambda: run_session(sc, x1))
        kept = c_ms < d_ms * (1 - MIN_GAIN)
        confirm = {"default_median_ms": d_ms, "chosen_median_ms": c_ms, "kept": kept, "options": _label(so, bo)}
        if not kept:
            so, bo, chosen_path = dict(DEFAULT_SESSION), dict(DEFAULT_BUILD), default_engine
    for k, p in paths.items():
        if p != chosen_path and p != default_engine:
            p.unlink(missing_ok=True)
    return OrtChoice(session=so, build=bo, tried=tried, confirm=confirm, builds=n_builds), chosen_path
