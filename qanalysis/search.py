"""Mixed-precision search under a metric budget, costs from the real runtime, Pareto fronts.

A layer the search keeps in float is ``"fp32"``: the exported engine leaves it out of
``quantize_static`` and runs it on FP32 weights and FP32 inputs, and the simulation runs it
the same way, so the all-float config *is* the FP32 model (drop 0, never a near-tie flip
that its engine would not make). (``"fp16"`` would round its inputs and weights to half,
in the simulation and, through ``Cast`` nodes, in the engine: smaller, slower, and not FP32.)

1. Costs: ONNX Runtime's profiler on the all-INT8 engine and on the FP32 engine gives each
   layer's kernel time both ways (µs per batch-1 run, attributed to module names); moving a
   layer to float costs its (float − int8) time plus the Quantize/DequantizeLinear it adds at
   the new int8↔float boundaries (measured mean Q/DQ kernel time per boundary); that can be
   negative (float is faster). Size costs are what the engine stores for a layer kept in FP32
   (4-byte weights instead of 1-byte int8; the int32 bias stays 4 bytes), on top of the real
   INT8 engine file.
2. All INT8 first. When it misses the budget, the cheap whole-model fixes come next (those
   the analysis measured as helping, then bias correction, percentile / MSE calibration,
   per-channel weights), one evaluation each; one that meets the budget keeps every layer int8.
3. Otherwise greedy: layers by metric recovered per unit of cost (the analysis' "all but this
   layer" measurement); the shortest prefix meeting the budget by exponential + binary search,
   then each float layer tried back in int8.
4. ``objective="latency"``: configs that put layers, or whole op types (depthwise convs apart),
   in float where the cost model says float is faster, plus FP32 itself; those meeting the
   budget are built and timed on real engines (at most ``MAX_LATENCY_BUILDS``), together with
   all-INT8, FP32 and the chosen config, interleaved (``baseline.time_interleaved``: one
   protocol, median and IQR). The choice is the fastest *measured* config meeting the budget.
5. A missed budget returns the evaluated config with the lowest drop, the cheapest among equal
   drops; a budget finer than one evaluation sample is said, with the samples that resolve it.
6. Then (``formats``; by default for language models) layers move to weight-only W8/W4
   formats where that saves the objective and the budget holds (``formats.formats_phase``).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import pandas as pd

from .analysis import Analysis
from .baseline import Latency, first_sample, time_interleaved
from .engine import attribute_to_layers, build_int8_engine, build_weight_only_engine, profile_nodes, run_session, session
from .errors import ConfigError, QAnalysisError
from .scheme import Config

Objective = Literal["latency", "size"]
Progress = Callable[[str], None]

FLOAT = "fp32"  # a float layer of the search: the engine runs it in FP32, and so does the simulation
MAX_LATENCY_BUILDS = 4  # engines the latency phase builds and times, besides all-INT8 and the chosen one
MAX_LATENCY_CANDIDATES = 6  # configs (full-model simulations) the latency phase evaluates, FP32 apart
MAX_FIX_CANDIDATES = 5  # whole-model cheap fixes tried before layers are given up to float


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
    float_bytes: dict[str, int]  # bytes a layer kept in FP32 adds to the INT8 engine
    edges: list[tuple[str, str]] = field(default_factory=list)  # (producer layer, consumer layer) activation edges
    int8_latency: Latency | None = None  # the all-INT8 engine's wall time that the model starts from
    fp32_total_us: float = 0.0  # the FP32 engine's wall time (the all-float config's prediction)

    def latency_ms(self, a: Analysis, float_layers: set[str]) -> float:
        if float_layers and self.fp32_total_us and len(float_layers) == len(self.params):
            return self.fp32_total_us / 1000.0  # FP32 itself: measured
        return max(self.int8_total_us + self.delta_us(float_layers), 0.0) / 1000.0

    def delta_us(self, float_layers: set[str]) -> float:
        """Predicted time (µs) ``float_layers`` add to the all-INT8 engine: each one's float − int8
        kernel time, the same for the int8 layers they demote, and one Q/DQ per boundary edge."""
        s = float_layers
        us = sum(self.float_us.get(n, 0.0) - self.int8_us.get(n, 0.0) for n in s | self.demoted(s))
        return us + self.qdq_us * sum((p in s) != (c in s) for p, c in self.edges)

    def demoted(self, float_layers: set[str]) -> set[str]:
        """Int8 layers with a float consumer: their output loses its Quantize (the consumer reads
        the float tensor, as simulated), so ONNX Runtime cannot fuse them into an int8 kernel and
        runs DequantizeLinear + the float op: they cost their float time."""
        return {p for p, c in self.edges if c in float_layers and p not in float_layers}

    def size_bytes(self, float_layers: set[str]) -> int:
        return int(self.int8_engine_bytes + sum(self.float_bytes.get(n, 0) for n in float_layers))

    def delta(self, name: str, objective: Objective) -> float:
        if objective == "size":
            return float(max(self.float_bytes.get(name, 0), 0))
        return max(self.float_us.get(name, 0.0) - self.int8_us.get(name, 0.0), 0.0) + 2 * self.qdq_us

    def join_us(self, name: str, float_set: set[str]) -> float:
        """Predicted change (µs) when ``name`` joins ``float_set`` (< 0: faster)."""
        return self.delta_us(float_set | {name}) - self.delta_us(float_set)


def _layer_edges(a: Analysis) -> list[tuple[str, str]]:
    out = []
    for l in a.qgraph.layers:
        for _, t in l.act_inputs:
            o = a.sim.origin(t)
            if o is not None:
                out.append((o.name, l.name))
    return out


def float_extra_bytes(layer, program) -> int:
    """Bytes a layer kept in FP32 adds to the all-INT8 engine: each weight and constant element
    4 bytes instead of 1 (int8); the bias is 4 bytes either way (int32 or float)."""
    def n(name: str) -> int:
        return int(program.initializers[name].numel()) if name in program.initializers else 0

    return sum(n(w) for _, w in [*layer.weights, *layer.consts]) * (4 - 1)


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
    s8, sf = session(int8_path), session(qg.float_path)
    lats = time_interleaved({"int8": lambda: run_session(s8, x1), "fp32": lambda: run_session(sf, x1)}, 1)
    lat = lats["int8"]
    return Costs(
        int8_us=attribute_to_layers(t_int8, qg),
        float_us=attribute_to_layers(t_fp32, qg),
        qdq_us=sum(qdq) / len(qdq) if qdq else 0.0,
        int8_total_us=lat.median_ms * 1000.0,
        int8_engine_bytes=os.path.getsize(int8_path),
        params={l.name: l.params for l in qg.layers},
        float_bytes={l.name: float_extra_bytes(l, qg.program) for l in qg.layers},
        edges=_layer_edges(a),
        int8_latency=lat,
        fp32_total_us=lats["fp32"].median_ms * 1000.0,
    )


@dataclass
class Evaluated:
    config_id: int
    float_layers: list[str]
    metric: float
    drop: float
    latency_ms: float  # predicted by the cost model
    size_bytes: int
    phase: str
    drop_ci95: tuple[float, float] = (float("nan"), float("nan"))
    variant: str = ""  # a whole-model fix or scheme change ("bias_correction", "calibration=percentile")
    config: Config | None = None
    measured: Latency | None = None  # its engine timed (batch 1, median, interleaved with the others)
    formats: dict[str, str] = field(default_factory=dict)  # weight-only layers: name → "w4g32", "w8g32", ...

    @property
    def best_latency_ms(self) -> float:
        """Measured where its engine was timed, else predicted."""
        return self.measured.median_ms if self.measured is not None else self.latency_ms


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
    measured_latency_ms: float | None  # median, batch 1
    measured_latency_std_ms: float | None
    int8_latency_ms: float | None
    fp32_latency_ms: float | None
    seconds: float
    met_budget: bool
    notes: list[str] = field(default_factory=list)
    budget: str = ""  # as given: "1" (points) or "5%" (of the FP32 metric)
    engine_builds: int = 0  # INT8 engines built and timed by the search (the all-INT8 one included)
    measured_latency_iqr_ms: float | None = None
    latency_unstable: bool = False  # a timing the choice rests on had IQR / median > 25 %

    @property
    def latency_error_pct(self) -> float | None:
        if not self.measured_latency_ms:
            return None
        return 100.0 * (self.predicted_latency_ms - self.measured_latency_ms) / self.measured_latency_ms

    def frame(self) -> pd.DataFrame:
        nan = float("nan")
        df = pd.DataFrame(
            [
                {"config_id": e.config_id, "n_float_layers": len(e.float_layers), "metric": e.metric, "drop": e.drop,
                 "drop_ci_low": e.drop_ci95[0], "drop_ci_high": e.drop_ci95[1], "latency_ms": e.best_latency_ms,
                 "predicted_latency_ms": e.latency_ms,
                 "measured_latency_ms": e.measured.median_ms if e.measured else nan,
                 "measured_latency_iqr_ms": e.measured.iqr_ms if e.measured else nan,
                 "latency_unstable": bool(e.measured.unstable) if e.measured else False,
                 "size_bytes": e.size_bytes, "phase": e.phase, "variant": e.variant,
                 "float_layers": ";".join(e.float_layers), "formats": ";".join(f"{n}={f}" for n, f in e.formats.items())}  # fmt: skip
                for e in self.evaluated
            ]
        )
        # -drop: "higher is better" whatever the metric's direction (a drop > 0 is always worse);
        # latency: measured where the config's engine was timed, else the cost model's prediction
        better = (-df["drop"]).tolist()
        df["pareto_latency"] = pareto_mask(better, df["latency_ms"].tolist())
        df["pareto_size"] = pareto_mask(better, df["size_bytes"].tolist())
        df["pareto"] = df["pareto_latency"] | df["pareto_size"]
        df["chosen"] = df["config_id"] == self.chosen_id
        return df

    def summary(self) -> dict:
        def ratio(x: float | None) -> float | None:
            return x / self.measured_latency_ms if x and self.measured_latency_ms else None

        return {
            "n_layers": self.n_layers,
            "n_evaluations": self.n_evaluations,
            "engine_builds": self.engine_builds,
            "max_drop": self.max_drop,
            "budget": self.budget,
            "objective": self.objective,
            "met_budget": self.met_budget,
            "chosen_config_id": self.chosen_id,
            "float_layers": self.chosen.float_layers(),
            "layer_formats": {n: p for n, p in self.chosen.layers.items() if p not in ("fp16", "fp32")},
            "variant": next((e.variant for e in self.evaluated if e.config_id == self.chosen_id), ""),
            "predicted_latency_ms": self.predicted_latency_ms,
            "measured_latency_ms": self.measured_latency_ms,
            "measured_latency_iqr_ms": self.measured_latency_iqr_ms,
            "measured_latency_std_ms": self.measured_latency_std_ms,
            "latency_unstable": self.latency_unstable,
            "latency_prediction_error_pct": self.latency_error_pct,
            "int8_latency_ms": self.int8_latency_ms,
            "fp32_latency_ms": self.fp32_latency_ms,
            "speedup_vs_fp32": ratio(self.fp32_latency_ms),
            "speedup_vs_int8": ratio(self.int8_latency_ms),
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


def pick(pool: list[Evaluated], max_drop: float, cost: Callable[[Evaluated], float]) -> Evaluated:
    """Within the budget the cheapest (then the lowest drop); when none meets it, the lowest drop,
    the cheapest among equal drops: never the all-float model when a cheaper config as good was
    evaluated."""
    ok = [e for e in pool if e.drop <= max_drop]
    if ok:
        return min(ok, key=lambda e: (cost(e), e.drop, e.config_id))
    return min(pool, key=lambda e: (round(e.drop, 9), cost(e), e.config_id))


def search(
    a: Analysis,
    max_drop: float | str | Budget,
    *,
    objective: Objective = "latency",
    progress: Progress | None = None,
    measure: bool = True,
    workdir: Path | None = None,
    try_fixes: bool = True,
    formats: bool | None = None,
) -> SearchResult:
    """The search; its engines go to ``workdir``, or to a temporary folder removed afterwards.

    ``max_drop``: metric points (a number), or ``"5%"`` / ``Budget(5, relative=True)``: 5 % of the
    FP32 metric. Drops follow the metric's direction (perplexity: a rise is a drop).
    ``measure=False``: no engine is built beyond the profiled all-INT8 one; choices rest on the cost model.
    ``try_fixes=False``: no whole-model fix is tried before layers go to float.
    ``formats``: also choose weight-only W8/W4 per layer (``formats.py``); None: for language models."""
    if formats is None:
        formats = a.workload.task == "language_model"
    kw = {"objective": objective, "progress": progress, "measure": measure, "formats": formats, "try_fixes": try_fixes}
    if workdir is not None:
        return _search(a, max_drop, Path(workdir), **kw)
    with tempfile.TemporaryDirectory(prefix="qanalysis-search-") as d:
        return _search(a, max_drop, Path(d), **kw)


@dataclass
class _Base:
    """The config and simulator float sets are added to: the analysis' own, or a whole-model fix."""

    label: str
    config: Config
    sim: object
    qg: object


def one_sample_step(a: Analysis) -> float | None:
    """How much one flipped prediction moves the metric (100/N points for top-1 accuracy in %),
    measured: the FP32 outputs scored with one correctly predicted sample made wrong."""
    wl = a.workload
    fp = a.sens.fp32_outputs
    if wl.task != "classification" or fp is None or fp.dim() != 2 or fp.shape[1] < 2:
        return None
    t = wl.targets()
    right = (fp.argmax(1) == t).nonzero()
    if not len(right):
        return None
    i = int(right[0])
    bad = fp.clone()
    bad[i] = fp[i].min() - 1.0
    bad[i, (int(t[i]) + 1) % fp.shape[1]] = fp[i].max() + 1.0
    try:
        step = abs(wl.score(fp) - wl.score(bad))
    except Exception:  # noqa: BLE001 - a metric that cannot score this is not a per-sample count
        return None
    return step if step > 0 else None


def budget_resolution_note(a: Analysis, max_drop: float) -> str | None:
    """A top-1 style metric moves in steps (100/N points): a budget below one step is met only
    with no net flipped sample. Says so, and how many samples would make the budget one step."""
    step = one_sample_step(a)
    n = a.workload.n_eval
    if step is None or max_drop >= step - 1e-9:
        return None
    per = round(step * n, 6)  # the metric's full scale (100 for %)
    need = f"at least {math.ceil(per / max_drop)} evaluation samples (--eval-samples) would resolve it" if max_drop > 0 else \
        "a budget of 0 is met only by configs that flip no prediction, whatever the number of samples"
    return (f"the budget ({max_drop:g} points) is finer than one evaluation sample ({step:.3g} points at {n} samples): "
            f"one flipped prediction misses it, so only configs with no net flip meet it; {need}")  # fmt: skip


def cheap_fixes(a: Analysis) -> list[tuple[str, Config]]:
    """Whole-model candidates tried before layers are given up to float: first the fixes the
    analysis measured as helping (a layer's recommendation with a positive measured gain), then
    CLE, bias correction, percentile and MSE calibration, per-channel weights; those the config
    already has are skipped; at most ``MAX_FIX_CANDIDATES``."""
    from .fixes import FIXES, list_fixes

    list_fixes()
    cfg = a.config
    sch = cfg.scheme
    recommended: list[str] = []
    for r in a.sens.rows:
        gain = getattr(r, "recommendation_gain", float("nan"))
        if not (isinstance(gain, float) and gain > 0):
            continue
        text = r.recommendation or ""  # a remedy stays in the text only where measured to help (or not measured)
        for key, label in (("cross-layer equalization", "cle"), ("SmoothQuant", "smoothquant"),
                           ("per-channel weights", "granularity=per_channel"), ("percentile clipping", "calibration=percentile")):  # fmt: skip
            if key in text and label not in recommended:
                recommended.append(label)
    order = [*recommended, "cle", "bias_correction", "calibration=percentile", "calibration=mse", "granularity=per_channel"]
    out: list[tuple[str, Config]] = []
    for label in dict.fromkeys(order):
        c: Config | None = None
        if "=" in label:
            key, value = label.split("=")
            if sch.activations is None or sch.act.dynamic:
                continue
            if key == "calibration" and sch.act.calibration != value:
                c = Config(scheme=replace(sch, activations=replace(sch.act, calibration=value)), layers=cfg.layers, fixes=cfg.fixes)
            if key == "granularity" and sch.weights.granularity == "per_tensor":
                c = Config(scheme=replace(sch, weights=replace(sch.weights, granularity=value)), layers=cfg.layers, fixes=cfg.fixes)
        elif label in FIXES and label not in cfg.fixes:
            c = Config(scheme=sch, layers=cfg.layers, fixes=(*cfg.fixes, label))
        if c is not None:
            out.append((label, c))
    return out[:MAX_FIX_CANDIDATES]


def _op_group(a: Analysis, layer) -> str:
    """An op type, with depthwise convolutions (group > 1) apart: whole groups go float together."""
    node = a.qgraph.program.nodes[layer.node]
    if layer.op_type == "Conv" and int(node.attrs.get("group", 1) or 1) > 1:
        return "depthwise Conv"
    return layer.op_type


def latency_candidates(a: Analysis, costs: Costs, base: set[str]) -> list[tuple[str, set[str]]]:
    """Float sets the cost model predicts faster than ``base``, fastest first: layers added one by
    one while the one lowering the predicted time most still lowers it (Q/DQ boundaries
    included: a neighbour of a float layer gets cheaper), each op type whose layers all in
    float are predicted faster, and the union of those."""
    names = [l.name for l in a.qgraph.layers]
    cur = set(base)
    for _ in range(len(names)):
        best, gain = None, -1e-3 * max(costs.int8_total_us, 1.0)  # below 0.1 % is noise
        for n in names:
            if n not in cur:
                g = costs.join_us(n, cur)
                if g < gain:
                    best, gain = n, g
        if best is None:
            break
        cur.add(best)
    cands: list[tuple[str, set[str]]] = []
    if cur != base:
        cands.append((f"float where faster ({len(cur - base)} layers)", cur))
    # and from the other end: FP32, layers going back to int8 while that lowers the predicted time
    # (a run of cheap ops costs its boundaries one layer at a time, so the way up can stall)
    down = set(names)
    consumers: dict[str, set[str]] = {}
    for p, c in costs.edges:
        consumers.setdefault(p, set()).add(c)
    for _ in range(len(names)):
        # a layer goes back to int8 with its float consumers (a float consumer would demote it)
        t = costs.delta_us(down)
        best, gain = None, -1e-3 * max(costs.int8_total_us, 1.0)
        for n in names:
            if n in down and n not in base:
                move = ({n} | (consumers.get(n, set()) & down)) - base
                g = costs.delta_us(down - move) - t
                if g < gain:
                    best, gain = move, g
        if best is None:
            break
        down -= best
    if down != set(names):
        cands.append((f"int8 only where faster ({len(names) - len(down)} layers int8)", down))
    t0 = costs.latency_ms(a, base)
    groups: dict[str, set[str]] = {}
    for l in a.qgraph.layers:
        groups.setdefault(_op_group(a, l), set()).add(l.name)
    faster = []
    for g, members in groups.items():
        s = base | members
        if s != base and costs.latency_ms(a, s) < t0:
            faster.append(g)
            cands.append((f"all {g} in float", s))
    if len(faster) > 1 or (faster and cur != base):
        u = set(cur).union(*(groups[g] for g in faster))
        cands.append(("float where faster, and " + ", ".join(faster), u))
    seen: set[frozenset] = set()
    out = []
    for label, s in sorted(cands, key=lambda c: costs.latency_ms(a, c[1])):
        if frozenset(s) not in seen and len(s) < len(names):
            seen.add(frozenset(s))
            out.append((label, s))
    return out


def _search(a: Analysis, max_drop: float | str | Budget, wd: Path, *, objective: Objective, progress: Progress | None,
            measure: bool, formats: bool, try_fixes: bool = True) -> SearchResult:  # fmt: skip
    from .quantized import prepare_simulator
    from .graph import prepare
    from .stats import drop_interval

    if objective not in ("latency", "size"):
        raise ConfigError(f"objective must be 'latency' or 'size', got {objective!r}")
    budget = Budget.parse(max_drop)
    max_drop = budget.points(a.fp32_metric)
    say = progress or (lambda m: None)
    t0 = time.perf_counter()
    costs = measure_costs(a, wd, say)
    wl = a.workload
    names = [l.name for l in a.qgraph.layers]
    base_layers = {k: v for k, v in a.config.layers.items()}
    evaluated: list[Evaluated] = []
    cache: dict[tuple, Evaluated] = {}
    notes: list[str] = []
    own = _Base("", a.config, a.sim, a.qgraph)
    base = own
    bases: dict[str, _Base] = {"": own}

    def evaluate(float_set: set[str], phase: str, on: _Base | None = None) -> Evaluated:
        b = on or base
        key = (b.label, frozenset(float_set))
        if key in cache:
            return cache[key]
        cfg = b.config.with_layers({**base_layers, **{n: FLOAT for n in float_set}})
        q = b.sim.outputs(wl.evaluation, b.sim.plan(cfg))
        metric = wl.score(q)
        iv = drop_interval(wl.evaluate, a.sens.fp32_outputs, q, wl.targets(), max_seconds=5.0,
                           higher_is_better=wl.higher_is_better)  # fmt: skip
        e = Evaluated(len(evaluated), [n for n in names if n in float_set], metric, wl.drop(a.fp32_metric, metric),
                      costs.latency_ms(a, float_set), costs.size_bytes(float_set),
                      phase, (iv.low, iv.high), b.label, cfg)  # fmt: skip
        evaluated.append(e)
        cache[key] = e
        say(f"config {e.config_id}: {len(float_set)} float layer(s){' + ' + b.label if b.label else ''}, drop {e.drop:.2f}, "
            f"{objective} {e.latency_ms:.3f} ms / {e.size_bytes / 1e6:.3f} MB ({phase})")  # fmt: skip
        return e

    def cost(e: Evaluated) -> float:
        return e.best_latency_ms if objective == "latency" else float(e.size_bytes)

    def best_of(pool: list[Evaluated]) -> Evaluated:
        return pick(pool, max_drop, cost)

    note = budget_resolution_note(a, max_drop)
    if note:
        notes.append(note)
    # the analysis already measured the all-int8 metric and each layer's recovery
    rows = {r.layer: r for r in a.sens.rows}
    start = evaluate(set(), "all int8")
    chosen = start
    if start.drop > max_drop:
        # cheap whole-model fixes before any layer is given up to float
        tried = []
        for label, cfg in cheap_fixes(a) if try_fixes else []:
            say(f"trying {label} on the whole model")
            try:
                qg = prepare(wl, cfg.scheme) if cfg.scheme != a.config.scheme else a.qgraph
                sim, _, _, _ = prepare_simulator(wl, qg, cfg, progress=say)
            except QAnalysisError as err:
                tried.append(f"{label}: not applicable ({str(err).splitlines()[0][:120]})")
                continue
            bases[label] = _Base(label, cfg, sim, sim.qg)
            e = evaluate(set(), "fix", bases[label])
            rec = start.drop - e.drop
            tried.append(f"{label}: drop {start.drop:.2f} → {e.drop:.2f} ({'recovers' if rec > 0 else 'changes'} {rec:+.2f} points"
                         f"{', meets the budget' if e.drop <= max_drop else ''})")  # fmt: skip
        if tried:
            notes.append("cheap fixes tried on the all-INT8 model before keeping layers in float: " + "; ".join(tried))
        fixed = [e for e in evaluated if e.phase == "fix" and e.drop <= max_drop]
        if fixed:
            chosen = min(fixed, key=lambda e: (e.drop, e.config_id))
            notes.append(f"{chosen.variant} alone meets the budget: every layer stays int8")
    if chosen.drop > max_drop:
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
            evaluate(current, "prune")
        chosen = best_of(evaluated)
    base = bases.get(chosen.variant, own)
    if formats and chosen.drop <= max_drop and not chosen.variant:
        from .analysis import simulate_config
        from .formats import config_of, formats_phase

        chosen = formats_phase(a, chosen, max_drop, objective, costs, evaluated, Evaluated, wd, say)
        if chosen.formats:  # the chosen config's interval (the phase's evaluations skip it: seconds each)
            chosen.drop_ci95 = simulate_config(a, config_of(a, chosen.float_layers, chosen.formats)).drop_ci95
            notes.append(f"{len(chosen.formats)} layer(s) weight-only: "
                         + ", ".join(f"{f} ×{list(chosen.formats.values()).count(f)}" for f in sorted(set(chosen.formats.values()))))  # fmt: skip
    builds = 1  # the all-INT8 engine the costs were profiled on
    engines: dict[int, Path] = {start.config_id: wd / "search_int8.onnx"}
    buildable = True

    def build(e: Evaluated) -> None:
        nonlocal builds
        if e.config_id in engines:
            return
        b = bases.get(e.variant, own)
        path = wd / f"config_{e.config_id}_int8.onnx"
        say(f"building the engine of config {e.config_id}")
        builder = build_weight_only_engine if e.formats else build_int8_engine
        builder(b.qg, b.sim, b.sim.plan(e.config), path, wl.calibration[0])
        engines[e.config_id] = path
        builds += 1

    fp32_e = None
    if objective == "latency" and buildable:
        # float where the measured engine profile says float is faster, and FP32 itself
        cands = latency_candidates(a, costs, set(chosen.float_layers))[:MAX_LATENCY_CANDIDATES]
        tried = [evaluate(s, "latency") for _, s in cands]
        fp32_e = evaluate(set(names), "fp32", own)
        engines[fp32_e.config_id] = a.qgraph.float_path  # the FP32 model itself: no build
        ok = [e for e in tried if e.drop <= max_drop and e.config_id not in engines]
        ok.sort(key=lambda e: e.latency_ms)
        if measure:
            for e in ok[:MAX_LATENCY_BUILDS]:
                build(e)
        elif ok or fp32_e.drop <= max_drop:
            chosen = best_of([chosen, *ok, fp32_e] if chosen.drop <= max_drop else evaluated)
        if cands:
            notes.append(f"latency phase: {len(cands)} config(s) putting layers in float where the profile says float is "
                         f"faster ({'; '.join(l for l, _ in cands)}), {len(ok)} within the budget; "
                         f"{'engines built and timed for ' + str(min(len(ok), MAX_LATENCY_BUILDS)) if measure else 'chosen by the cost model (measure=False)'}")  # fmt: skip
        else:
            notes.append("latency phase: short of FP32, the profile predicts no config with layers or op types in float "
                         "faster than the chosen one")
    measured = std = iqr = int8_ms = fp32_ms = None
    unstable = False
    if measure and buildable:
        build(chosen)
        say(f"timing {len(engines)} engines (interleaved, median of up to 50 runs each)")
        x1 = first_sample(wl.evaluation[0][0])
        if fp32_e is None:
            engines[-1] = a.qgraph.float_path  # FP32 for the summary's ratios, not a candidate
        sessions = {cid: session(p) for cid, p in engines.items()}
        lat = time_interleaved({str(cid): (lambda s=s: run_session(s, x1)) for cid, s in sessions.items()}, 1,
                               budget_s=20.0)  # fmt: skip
        for e in evaluated:
            if str(e.config_id) in lat:
                e.measured = lat[str(e.config_id)]
        fp32_lat = lat[str(fp32_e.config_id if fp32_e is not None else -1)]
        if objective == "latency":  # the fastest measured config within the budget, never one measured slower
            timed = [e for e in evaluated if e.measured is not None and e.drop <= max_drop]
            if timed:
                chosen = min(timed, key=lambda e: (e.measured.median_ms, e.drop, e.config_id))
        m = chosen.measured
        measured, std, iqr = m.median_ms, m.std_ms, m.iqr_ms
        int8_ms, fp32_ms = start.measured.median_ms, fp32_lat.median_ms
        unstable = any(x.unstable for x in (m, start.measured, fp32_lat))
        if unstable:
            notes.append("latency: at least one timing had IQR / median > 25 % (a busy machine); small differences "
                         "between these configs are not to be trusted")  # fmt: skip
        notes.append(f"{builds} engine(s) built and timed (all-INT8 included; FP32 timed from its own model)")
    if chosen.drop > max_drop:
        notes.append(f"budget missed: config {chosen.config_id} has the lowest drop measured ({chosen.drop:.3g}), "
                     f"the cheapest among equal drops, with {len(chosen.float_layers)} float layer(s)")  # fmt: skip
    chosen_cfg = chosen.config
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
        engine_builds=builds,
        measured_latency_iqr_ms=iqr,
        latency_unstable=unstable,
    )
