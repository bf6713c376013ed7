"""FP32 / PTQ / PTQ + fixes / QAT side by side (DESIGN.md step 7), and one fix's measured gain.

``compare`` runs each config twice over: simulated (metric, drop against the original FP32
model, the worst per-class delta) and as a real engine through ``export`` (engine metric, file
size, batch-1 latency). Configs the engine cannot run (4-bit weights, group-wise) get their
simulated columns and a note saying why the engine columns are empty. ``preview_fix`` is the
measurement behind a "try this fix" recommendation: the config's simulated metric without and
with the fix.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .errors import ConfigError, ExportError
from .quantized import simulate_outputs
from .scheme import ALL_LAYERS, Config, Scheme, WeightSpec
from .workload import Workload

Progress = Callable[[str], None]
FP32_LABEL = "FP32"
COLUMNS = [
    "config", "fixes", "scheme", "simulated_metric", "drop", "drop_pct", "drop_ci_low", "drop_ci_high", "worst_class",
    "worst_class_delta", "engine", "engine_metric", "engine_drop_pct", "sim_engine_gap", "engine_size_bytes", "latency_ms",
    "latency_std_ms", "latency_median_ms", "latency_iqr_ms", "latency_unstable", "tokens_per_s", "note",
]  # fmt: skip


@dataclass
class CompareRow:
    config: str
    fixes: str
    scheme: str
    simulated_metric: float
    drop: float
    worst_class: str | None = None
    worst_class_delta: float | None = None
    engine_metric: float = math.nan
    engine_size_bytes: int | None = None
    latency_ms: float = math.nan  # = latency_median_ms: the one protocol's number (median at batch 1)
    latency_std_ms: float = math.nan
    note: str = ""
    drop_ci_low: float = math.nan
    drop_ci_high: float = math.nan
    drop_pct: float = math.nan  # the drop in % of the FP32 metric (perplexity: its relative increase)
    engine: str = ""  # what ran: "fp32", "int8" (QDQ), "weight-only" (MatMulNBits), "int8+weight-only", "fp16"
    engine_drop_pct: float = math.nan  # the engine's drop in % of the FP32 engine's metric
    # batch 1, the evaluation's sequence length: baseline.latency_protocol (median, IQR; ms per call)
    latency_median_ms: float = math.nan
    latency_iqr_ms: float = math.nan
    latency_unstable: bool | None = None
    tokens_per_s: float = math.nan  # language models: tokens of one batch-1 forward / its median latency

    @property
    def sim_engine_gap(self) -> float:
        return abs(self.simulated_metric - self.engine_metric)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sim_engine_gap": self.sim_engine_gap}

    def timed(self, proto: Mapping[str, Any], tokens: int | None) -> None:
        """Fill the latency columns from one ``latency_protocol`` result."""
        self.latency_ms, self.latency_std_ms = proto["median_ms"], proto["std_ms"]
        self.latency_median_ms, self.latency_iqr_ms = proto["median_ms"], proto["iqr_ms"]
        self.latency_unstable = proto["unstable"]
        if tokens and proto["median_ms"] > 0:
            self.tokens_per_s = tokens * 1000.0 / proto["median_ms"]


@dataclass
class Comparison:
    model: str
    metric_name: str
    rows: list[CompareRow]
    fix_notes: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    lower_is_better: bool = False  # perplexity, loss: a drop is an increase
    tokens_per_sequence: int | None = None  # language models: the evaluation's sequence length

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame([r.to_dict() for r in self.rows], columns=COLUMNS)
        df["engine_size_bytes"] = df["engine_size_bytes"].astype("Int64")
        return df

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "metric_name": self.metric_name, "rows": [r.to_dict() for r in self.rows],
                "fix_notes": self.fix_notes, "seconds": self.seconds, "lower_is_better": self.lower_is_better,
                "tokens_per_sequence": self.tokens_per_sequence}  # fmt: skip

    def table(self) -> str:
        def f(x: float | None, nd: int = 2) -> str:
            return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"

        lm = any(math.isfinite(r.tokens_per_s) for r in self.rows)
        head = ("config", f"simulated {self.metric_name}", "drop [95% CI]", "increase (%)" if self.lower_is_better else "drop (%)",
                "worst class Δ", "engine", "engine kind", "size (KB)", "latency b1 (ms, median ± IQR)") + (("tokens/s",) if lm else ())  # fmt: skip
        rows = [head]
        for r in self.rows:
            worst = f"{f(r.worst_class_delta)} ({r.worst_class})" if r.worst_class is not None else ""
            size = f"{r.engine_size_bytes / 1e3:.1f}" if r.engine_size_bytes else ""
            lat = f"{r.latency_median_ms:.3f} ± {r.latency_iqr_ms:.3f}" if math.isfinite(r.latency_median_ms) else ""
            lat += " (unstable)" if r.latency_unstable else ""
            drop = f(r.drop) + (f" [{f(r.drop_ci_low)}, {f(r.drop_ci_high)}]" if math.isfinite(r.drop_ci_low) else "")
            rows.append((r.config, f(r.simulated_metric), drop, f(r.drop_pct, 1), worst, f(r.engine_metric), r.engine, size, lat)
                        + ((f(r.tokens_per_s, 0),) if lm else ()))  # fmt: skip
        w = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(row)) for row in rows]
        lines += [f"{r.config}: {r.note}" for r in self.rows if r.note]
        return "\n".join(lines)


def _weight_only(bits: int, group: int, fixes: tuple[str, ...] = ()) -> Config:
    return Config(scheme=Scheme(weights=WeightSpec(bits=bits, granularity=group), activations=None), fixes=fixes)


# The seed's formats, FP16 / INT8 / INT4 side by side (the README's language-model table; the same
# configs ship as examples/lm/LABEL.json): label → config.
FORMATS: dict[str, Config] = {
    "fp16": Config(layers={ALL_LAYERS: "fp16"}),
    "int8": Config(),
    "w8": _weight_only(8, 32),
    "w4g128": _weight_only(4, 128),
    "w4g32": _weight_only(4, 32),
    "w4g32_gptq": _weight_only(4, 32, ("gptq",)),
}


def load_configs(paths: Sequence[str | Path]) -> dict[str, Config]:
    """Config files → {label: Config}; a config's label is its file stem."""
    out: dict[str, Config] = {}
    for p in paths:
        label = Path(p).stem
        if label == FP32_LABEL:
            raise ConfigError(f"config {p}: the label {FP32_LABEL!r} is taken by the FP32 reference row; rename the file")
        if label in out:
            raise ConfigError(f"two configs are labelled {label!r} (labels are file stems); rename one")
        out[label] = Config.load(p)
    if not out:
        raise ConfigError("compare needs at least one config file")
    return out


def fp32_outputs(wl: Workload) -> torch.Tensor:
    """The original float graph's outputs on the evaluation data (the FP32 reference)."""
    from .graph import prepare

    qg = prepare(wl)
    with torch.inference_mode():
        return torch.cat([qg.program.run(dict(zip(qg.input_names, x)))[qg.program.outputs[0]].float() for x, _ in wl.evaluation])


def tokens_per_sequence(wl: Workload) -> int | None:
    """A language model's sequence length (its targets are next-token ids [N, S]); None otherwise."""
    if wl.task != "language_model":
        return None
    return int(wl.evaluation[0][1].shape[1])


def all_fp16(wl: Workload, config: Config) -> bool:
    """Every quantizable layer of the config is fp16 (``{"layers": {"*": "fp16"}}``) and no fix
    changes the weights: the config is the FP16 model, built as a real FP16 engine."""
    from .graph import prepare
    from .simulate import Simulator

    if config.fixes or not config.layers:
        return False
    qg = prepare(wl, config.scheme)
    sim = Simulator(qg, {}, config.scheme)
    return all(sim.layer_format(config, l).kind == "fp16" for l in qg.layers)


def compare(
    wl: Workload,
    configs: Mapping[str, Config],
    out: Path,
    *,
    progress: Progress | None = None,
    repeats: int = 20,
    engines: bool = True,
) -> Comparison:
    """FP32 and each config, simulated and (where the engine supports it) exported to ``out/LABEL``.

    Latency: batch 1 (one sequence of the evaluation's length for a language model) through
    ``baseline.latency_protocol`` (median, IQR); a config whose every layer is fp16 is built as a
    real FP16 engine (``export(mode="fp16")``: float16 compute, not fp16 storage)."""
    from .quantized import check_config
    from .baseline import first_sample, latency_protocol
    from .engine import run_session, session
    from .graph import prepare

    say = progress or (lambda m: None)
    t0 = time.perf_counter()
    for label, cfg in configs.items():  # every config is valid before any work starts
        check_config(cfg, prepare(wl, cfg.scheme))
    say("FP32 reference: simulated and ONNX Runtime")
    fp = fp32_outputs(wl)
    fp_metric = wl.score(fp)
    qg = prepare(wl)
    tokens = tokens_per_sequence(wl)
    fp_row = CompareRow(config=FP32_LABEL, fixes="", scheme="fp32", simulated_metric=fp_metric, drop=0.0, drop_pct=0.0)
    if engines:
        sess = session(qg.float_path)
        fp_row.engine = "fp32"
        fp_row.engine_metric = wl.score(torch.cat([run_session(sess, x) for x, _ in wl.evaluation]))
        fp_row.engine_drop_pct = 0.0
        fp_row.engine_size_bytes = qg.float_path.stat().st_size
        x1 = first_sample(wl.evaluation[0][0])
        fp_row.timed(latency_protocol(lambda: run_session(sess, x1), repeats=max(repeats, 10)), tokens)
    rows = [fp_row]
    notes: dict[str, list[str]] = {}
    created: list[Path] = []
    try:
        for label, cfg in configs.items():
            rows.append(_compare_one(wl, label, cfg, fp, fp_metric, fp_row.engine_metric, out, notes, created, engines, repeats, say))
    except BaseException:  # no half-finished engine folders from this run
        for d in created:
            shutil.rmtree(d, ignore_errors=True)
        raise
    return Comparison(wl.name, wl.metric_name, rows, notes, time.perf_counter() - t0,
                      lower_is_better=not wl.higher_is_better, tokens_per_sequence=tokens)  # fmt: skip


def _compare_one(
    wl: Workload, label: str, cfg: Config, fp: torch.Tensor, fp_metric: float, fp_engine_metric: float, out: Path,
    notes: dict[str, list[str]], created: list[Path], engines: bool, repeats: int, say: Progress,
) -> CompareRow:  # fmt: skip
    from .analysis import per_class_frame
    from .baseline import first_sample, latency_protocol
    from .engine import run_session, session
    from .export import export
    from .stats import drop_interval
    from .workload import relative

    say(f"{label}: simulating" + (f" with {', '.join(cfg.fixes)}" if cfg.fixes else ""))
    q, notes[label] = simulate_outputs(wl, cfg, say)
    metric = wl.score(q)
    iv = drop_interval(wl.evaluate, fp, q, wl.targets(), max_seconds=5.0, higher_is_better=wl.higher_is_better)
    drop = wl.drop(fp_metric, metric)
    fp16 = all_fp16(wl, cfg)
    row = CompareRow(config=label, fixes="+".join(cfg.fixes), scheme="fp16" if fp16 else cfg.scheme.label(),
                     simulated_metric=metric, drop=drop, drop_ci_low=iv.low, drop_ci_high=iv.high,
                     drop_pct=relative(drop, fp_metric))  # fmt: skip
    pc = per_class_frame(wl, fp, q)
    if pc is not None and len(pc):
        worst = pc.sort_values("delta").iloc[0]
        row.worst_class, row.worst_class_delta = str(worst["class"]), float(worst["delta"])
    if not engines:
        return row
    say(f"{label}: building and verifying the {'FP16 ' if fp16 else ''}engine")
    dest = out / label
    if not dest.exists():
        created.append(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        rep = export(wl, cfg, dest, mode="fp16" if fp16 else "int8", repeats=repeats, progress=say)
    except ExportError as e:  # e.g. 4-bit weights: simulated only
        if dest in created:
            shutil.rmtree(dest, ignore_errors=True)
            created.remove(dest)
        row.note = f"engine not built: {e}"
        return row
    row.engine = rep.mode
    row.engine_metric = rep.engine_metric
    row.engine_drop_pct = relative(wl.drop(fp_engine_metric, rep.engine_metric), fp_engine_metric) if math.isfinite(fp_engine_metric) else math.nan
    row.engine_size_bytes = rep.int8_size_bytes
    sess = session(dest / rep.files["engine"])
    x1 = first_sample(wl.evaluation[0][0])
    row.timed(latency_protocol(lambda: run_session(sess, x1), repeats=max(repeats, 10)), tokens_per_sequence(wl))
    if fp16:
        row.note = "a real FP16 engine (float16 compute); simulated: weights rounded to float16"
    elif abs(rep.simulated_metric - metric) > 1e-9:
        row.note = f"the export's own simulation gave {rep.simulated_metric:.3f}"
    return row


def preview_fix(wl: Workload, config: Config, fix_name: str, *, progress: Progress | None = None) -> dict[str, Any]:
    """The measured effect of adding ``fix_name`` to ``config`` (simulated, evaluation data):
    ``{"fix", "metric_before", "metric_after", "gain", "notes"}``."""
    from .fixes import FIXES, list_fixes

    avail = list_fixes()
    if fix_name not in FIXES:
        raise ConfigError(f"unknown fix {fix_name!r}; available: {', '.join(avail) or 'none in this version'}")
    before = Config(scheme=config.scheme, layers=config.layers, fixes=tuple(f for f in config.fixes if f != fix_name))
    after = Config(scheme=config.scheme, layers=config.layers, fixes=(*before.fixes, fix_name))
    say = progress or (lambda m: None)
    q0, _ = simulate_outputs(wl, before, say)
    q1, notes = simulate_outputs(wl, after, say)
    m0, m1 = wl.score(q0), wl.score(q1)
    return {"fix": fix_name, "metric_before": m0, "metric_after": m1, "gain": m1 - m0, "notes": notes}
