"""Mixed-precision search under a metric budget, costs from the real runtime, Pareto fronts.

1. Costs: ONNX Runtime's profiler on the all-INT8 engine and on the FP32 engine gives each
   layer's kernel time both ways (µs per batch-1 run, attributed to module names); moving a
   layer to float costs its (float − int8) time plus the Quantize/DequantizeLinear it adds at
   the new int8↔float boundaries (measured mean Q/DQ kernel time per boundary). Size costs
   are what the engine stores for a layer kept in FP16 (2-byte weights instead of 1-byte int8,
   2-byte bias instead of int32: ``engine.fp16_extra_bytes``), on top of the real INT8 engine file.
2. Greedy order: layers by metric recovered per unit of cost, the recovery being the
   analysis' "all but this layer" measurement (no new evaluation).
3. The shortest prefix of that order meeting the budget is found by exponential + binary
   search (each probe is one full-model evaluation), then each float layer is tried back
   in int8 (one evaluation each) and stays int8 if the budget still holds.
4. Then (``formats``; by default for language models) layers move to weight-only W8/W4
   formats where that saves the objective and the budget holds (``formats.formats_phase``).
5. Every evaluated config is recorded; the Pareto fronts metric-vs-latency and
   metric-vs-size are computed over all of them; the chosen config's engine is built and
   its latency measured end to end, to report the cost model's error.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import pandas as pd

from .analysis import Analysis, simulate_config
from .baseline import first_sample, time_calls
from .engine import (attribute_to_layers, build_int8_engine, build_weight_only_engine, fp16_extra_bytes, profile_nodes,
                     run_session, session)
from .errors import ConfigError
from .scheme import Config

Objective = Literal["latency", "size"]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Budget:
    """The allowed drop: ``value`` metric points, or with ``relative`` ``value`` % of the FP32 metric
    (``--max-drop 5%``: perplexity may grow by 5 %). A drop is always "how much worse" (``Workload.drop``)."""

    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        if not self.value >= 0:  # NaN too
            raise ConfigError(f"--max-drop must be a non-negative number of metric points or a percentage, got {self.label()}")

    def points(self, fp32_metric: float) -> float:
        """The budget in metric units: ``value``, or ``value`` % of |FP32 metric|."""
        return self.value * abs(fp32_metric) / 100.0 if self.relative else self.value

    def label(self) -> str:
        return f"{self.value:g}%" if self.relative else f"{self.value:g}"

    @classmethod
    def parse(cls, text: str | float | Budget) -> Budget:
        """``"1"`` / ``1.0`` → 1 point; ``"5%"`` → 5 % of the FP32 metric."""
        if isinstance(text, Budget):
            return text
        if isinstance(text, (int, float)):
            return cls(float(text))
        s = str(text).strip()
        rel = s.endswith("%")
        try:
            v = float(s.removesuffix("%").strip())
        except ValueError:
            raise ConfigError(f"--max-drop takes a number of metric points (1.5) or a percentage of the FP32 metric (5%), got {text!r}") from None
        return cls(v, rel)


@dataclass
class Costs:
    int8_us: dict[str, float]
    float_us: dict[str, float]
    qdq_us: float  # mean kernel time of one Quantize/DequantizeLinear at a boundary
    int8_total_us: float
    int8_engine_bytes: int
    params: dict[str, int]
    fp16_bytes: dict[str, int]  # bytes a layer kept in fp16 adds to the INT8 engine

    def latency_ms(self, a: Analysis, float_layers: set[str]) -> float:
        us = self.int8_total_us
        for name in float_layers:
            us += self.float_us.get(name, 0.0) - self.int8_us.get(name, 0.0)
        us += self.qdq_us * _boundaries(a, float_layers)
        return max(us, 0.0) / 1000.0

    def size_bytes(self, float_layers: set[str]) -> int:
        return int(self.int8_engine_bytes + sum(self.fp16_bytes.get(n, 0) for n in float_layers))

    def delta(self, name: str, objective: Objective) -> float:
        if objective == "size":
            return float(max(self.fp16_bytes.get(name, 0), 0))
        return max(self.float_us.get(name, 0.0) - self.int8_us.get(name, 0.0), 0.0) + 2 * self.qdq_us


def _boundaries(a: Analysis, float_layers: set[str]) -> int:
    """Edges whose producer layer and consumer layer differ in precision."""
    if not float_layers:
        return 0
    qg, sim = a.qgraph, a.sim
    n = 0
    for l in qg.layers:
        for _, t in l.act_inputs:
            o = sim.origin(t)
            if o is not None and ((o.name in float_layers) != (l.name in float_layers)):
                n += 1
    return n


def measure_costs(a: Analysis, workdir: Path, progress: Progress | None = None) -> Costs:
    say = progress or (lambda m: None)
    qg, sim = a.qgraph, a.sim
    x1 = first_sample(a.workload.evaluation[0][0])
    say("profiling the FP32 and INT8 engines for per-layer costs")
    int8_path = workdir / "search_int8.onnx"
    build_int8_engine(qg, sim, sim.plan(a.config.with_layers({})), int8_path, a.workload.calibration[0])
    t_int8 = profile_nodes(int8_path, x1, runs=20)
    t_fp32 = profile_nodes(qg.float_path, x1, runs=20)
    qdq = [t.us for t in t_int8 if t.op_type in ("QuantizeLinear", "DequantizeLinear")]
    # the base is the engine's measured wall time (session overhead included); layers add deltas
    s8 = session(int8_path)
    wall_ms = time_calls(lambda: run_session(s8, x1), 1, repeats=50).mean_ms
    return Costs(
        int8_us=attribute_to_layers(t_int8, qg),
        float_us=attribute_to_layers(t_fp32, qg),
        qdq_us=sum(qdq) / len(qdq) if qdq else 0.0,
        int8_total_us=wall_ms * 1000.0,
        int8_engine_bytes=os.path.getsize(int8_path),
        params={l.name: l.params for l in qg.layers},
        fp16_bytes={l.name: fp16_extra_bytes(l, qg.program) for l in qg.layers},
    )


@dataclass
class Evaluated:
    config_id: int
    float_layers: list[str]
    metric: float
    drop: float
    latency_ms: float
    size_bytes: int
    phase: str
    drop_ci95: tuple[float, float] = (float("nan"), float("nan"))
    formats: dict[str, str] = field(default_factory=dict)  # weight-only layers: name → "w4g32", "w8g32", ...


@dataclass
class SearchResult:
    chosen: Config
    chosen_id: int
    evaluated: list[Evaluated]
    n_layers: int
    n_evaluations: int
    max_drop: float  # in metric units (a relative budget resolved against the FP32 metric)
    objective: str
    predicted_latency_ms: float
    measured_latency_ms: float | None
    measured_latency_std_ms: float | None
    int8_latency_ms: float | None
    fp32_latency_ms: float | None
    seconds: float
    met_budget: bool
    notes: list[str] = field(default_factory=list)
    budget: str = ""  # as given: "1" (points) or "5%" (of the FP32 metric)

    @property
    def latency_error_pct(self) -> float | None:
        if not self.measured_latency_ms:
            return None
        return 100.0 * (self.predicted_latency_ms - self.measured_latency_ms) / self.measured_latency_ms

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(
            [
                {"config_id": e.config_id, "n_float_layers": len(e.float_layers), "metric": e.metric, "drop": e.drop,
                 "drop_ci_low": e.drop_ci95[0], "drop_ci_high": e.drop_ci95[1], "latency_ms": e.latency_ms, "size_bytes": e.size_bytes, "phase": e.phase,
                 "float_layers": ";".join(e.float_layers), "formats": ";".join(f"{n}={f}" for n, f in e.formats.items())}  # fmt: skip
                for e in self.evaluated
            ]
        )
        # -drop: "higher is better" whatever the metric's direction (a drop > 0 is always worse)
        better = (-df["drop"]).tolist()
        df["pareto_latency"] = pareto_mask(better, df["latency_ms"].tolist())
        df["pareto_size"] = pareto_mask(better, df["size_bytes"].tolist())
        df["pareto"] = df["pareto_latency"] | df["pareto_size"]
        df["chosen"] = df["config_id"] == self.chosen_id
        return df

    def summary(self) -> dict:
        return {
            "n_layers": self.n_layers,
            "n_evaluations": self.n_evaluations,
            "max_drop": self.max_drop,
            "budget": self.budget,
            "objective": self.objective,
            "met_budget": self.met_budget,
            "chosen_config_id": self.chosen_id,
            "float_layers": self.chosen.float_layers(),
            "layer_formats": {n: p for n, p in self.chosen.layers.items() if p not in ("fp16", "fp32")},
            "predicted_latency_ms": self.predicted_latency_ms,
            "measured_latency_ms": self.measured_latency_ms,
            "measured_latency_std_ms": self.measured_latency_std_ms,
            "latency_prediction_error_pct": self.latency_error_pct,
            "int8_latency_ms": self.int8_latency_ms,
            "fp32_latency_ms": self.fp32_latency_ms,
            "seconds": self.seconds,
            "notes": self.notes,
        }


def pareto_mask(metric: list[float], cost: list[float]) -> list[bool]:
    """True where no other point has metric ≥ and cost ≤ with one of them strict (``metric``
    higher is better: pass −drop for a metric of either direction)."""
    out = []
    for i, (m, c) in enumerate(zip(metric, cost)):
        dominated = any(
            (m2 >= m and c2 <= c) and (m2 > m or c2 < c) for j, (m2, c2) in enumerate(zip(metric, cost)) if j != i
        )
        out.append(not dominated)
    return out


def search(
    a: Analysis,
    max_drop: float | str | Budget,
    *,
    objective: Objective = "latency",
    progress: Progress | None = None,
    measure: bool = True,
    workdir: Path | None = None,
    formats: bool | None = None,
) -> SearchResult:
    """The search; its engines go to ``workdir``, or to a temporary folder removed afterwards.

    ``max_drop``: metric points (a number), or ``"5%"`` / ``Budget(5, relative=True)``: 5 % of the
    FP32 metric. Drops follow the metric's direction (perplexity: a rise is a drop).
    ``formats``: also choose weight-only W8/W4 per layer (``formats.py``); None: for language models."""
    if formats is None:
        formats = a.workload.task == "language_model"
    kw = {"objective": objective, "progress": progress, "measure": measure, "formats": formats}
    if workdir is not None:
        return _search(a, max_drop, Path(workdir), **kw)
    with tempfile.TemporaryDirectory(prefix="qanalysis-search-") as d:
        return _search(a, max_drop, Path(d), **kw)


def _search(a: Analysis, max_drop: float | str | Budget, wd: Path, *, objective: Objective, progress: Progress | None,
            measure: bool, formats: bool) -> SearchResult:  # fmt: skip
    if objective not in ("latency", "size"):
        raise ConfigError(f"objective must be 'latency' or 'size', got {objective!r}")
    budget = Budget.parse(max_drop)
    max_drop = budget.points(a.fp32_metric)
    say = progress or (lambda m: None)
    t0 = time.perf_counter()
    costs = measure_costs(a, wd, say)
    names = [l.name for l in a.qgraph.layers]
    base_layers = {k: v for k, v in a.config.layers.items()}
    evaluated: list[Evaluated] = []
    cache: dict[frozenset, Evaluated] = {}

    def evaluate(float_set: set[str], phase: str) -> Evaluated:
        key = frozenset(float_set)
        if key in cache:
            return cache[key]
        cfg = a.config.with_layers({**base_layers, **{n: "fp16" for n in float_set}})
        r = simulate_config(a, cfg)
        e = Evaluated(len(evaluated), [n for n in names if n in float_set], r.metric, r.drop,
                      costs.latency_ms(a, float_set), costs.size_bytes(float_set), phase, r.drop_ci95)  # fmt: skip
        evaluated.append(e)
        cache[key] = e
        say(f"config {e.config_id}: {len(float_set)} float layer(s), drop {e.drop:.2f}, {objective} "
            f"{e.latency_ms:.3f} ms / {e.size_bytes / 1e6:.3f} MB ({phase})")  # fmt: skip
        return e

    # the analysis already measured the all-int8 metric and each layer's recovery
    rows = {r.layer: r for r in a.sens.rows}
    start = evaluate(set(), "all int8")
    notes = []
    if start.drop <= max_drop:
        chosen = start
    else:
        def score(n: str) -> float:
            gain = max(rows[n].metric_drop_all_but, 0.0) + 1e-6 * max(rows[n].metric_drop, 0.0)
            return gain / max(costs.delta(n, objective), 1e-9)

        order = sorted(names, key=lambda n: -score(n))
        # shortest prefix meeting the budget: exponential then binary search
        lo, hi, k = 0, None, 1
        while hi is None:
            k = min(k, len(order))
            if evaluate(set(order[:k]), "grow").drop <= max_drop:
                hi = k
            elif k == len(order):
                hi = None
                break
            else:
                lo, k = k, k * 2
        if hi is None:
            notes.append(f"even with every layer in float the drop exceeds {max_drop:.4g} ({budget.label()})")
            chosen = evaluate(set(order), "grow")
        else:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if evaluate(set(order[:mid]), "bisect").drop <= max_drop:
                    hi = mid
                else:
                    lo = mid
            current = set(order[:hi])
            # try re-quantizing what is no longer needed, least useful first
            for n in sorted(current, key=score):
                if len(current) == 1:
                    break
                trial = current - {n}
                if evaluate(trial, "prune").drop <= max_drop:
                    current = trial
            chosen = cache[frozenset(current)]
    if formats and chosen.drop <= max_drop:
        from .formats import config_of, formats_phase

        chosen = formats_phase(a, chosen, max_drop, objective, costs, evaluated, Evaluated, wd, say)
        if chosen.formats:  # the chosen config's interval (the phase's evaluations skip it: seconds each)
            chosen.drop_ci95 = simulate_config(a, config_of(a, chosen.float_layers, chosen.formats)).drop_ci95
            notes.append(f"{len(chosen.formats)} layer(s) weight-only: "
                         + ", ".join(f"{f} ×{list(chosen.formats.values()).count(f)}" for f in sorted(set(chosen.formats.values()))))  # fmt: skip
    chosen_cfg = a.config.with_layers({**base_layers, **{n: "fp16" for n in chosen.float_layers}, **chosen.formats})
    measured = std = int8_ms = fp32_ms = None
    if measure and not any(p == "int4" for p in chosen_cfg.layers.values()):
        say("building and timing the chosen engine")
        x1 = first_sample(a.workload.evaluation[0][0])
        path = wd / "chosen_int8.onnx"
        build = build_weight_only_engine if chosen.formats else build_int8_engine
        build(a.qgraph, a.sim, a.sim.plan(chosen_cfg), path, a.workload.calibration[0])
        s = session(path)
        lat = time_calls(lambda: run_session(s, x1), 1, repeats=50)
        measured, std = lat.mean_ms, lat.std_ms
        s8 = session(wd / "search_int8.onnx")
        int8_ms = time_calls(lambda: run_session(s8, x1), 1, repeats=50).mean_ms
        sf = session(a.qgraph.float_path)
        fp32_ms = time_calls(lambda: run_session(sf, x1), 1, repeats=50).mean_ms
    return SearchResult(
        chosen=chosen_cfg,
        chosen_id=chosen.config_id,
        evaluated=evaluated,
        n_layers=len(names),
        n_evaluations=len(evaluated),
        max_drop=max_drop,
        objective=objective,
        predicted_latency_ms=chosen.latency_ms,
        measured_latency_ms=measured,
        measured_latency_std_ms=std,
        int8_latency_ms=int8_ms,
        fp32_latency_ms=fp32_ms,
        seconds=time.perf_counter() - t0,
        met_budget=chosen.drop <= max_drop,
        notes=notes,
        budget=budget.label(),
    )
