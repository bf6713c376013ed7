"""Experiments as files: a grid of models × schemes × calibrations × fixes × seeds, resumable,
into one tidy table (CSV and Parquet) and a report (research plan §8).

    qanalysis experiment plan.toml --out DIR

A plan (TOML)::

    name = "stage2-3"
    models = ["sample:digits_cnn", "sample:digits_resnet"]
    calibrations = ["minmax", "percentile", "entropy", "mse"]
    fixes = [[], ["qat"]]
    seeds = [0, 1, 2]
    engines = false               # true: also build and score each cell's ONNX Runtime engine

    [schemes.int8_sym]            # one table per named scheme (the config's "scheme" object)
    weights = {bits = 8, symmetric = true, granularity = "per_channel"}
    activations = {bits = 8, symmetric = true}

A cell is one (model, scheme, calibration, fixes, seed). Seed k > 0 redraws the calibration
samples with replacement and seeds the fixes that train (AdaRound, QAT); seed 0 is the
workload's own calibration. Each finished cell is stored as ``DIR/cells/<key>.json`` (the
key hashes the cell and the plan's data options), so an interrupted or extended plan re-runs
only what is missing. Every row records the seeds, library versions, CPU model and threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import ConfigError
from .scheme import CALIBRATIONS, Config, Scheme

Progress = Callable[[str], None]
PLAN_KEYS = {"name", "models", "schemes", "calibrations", "fixes", "seeds", "engines", "data"}


@dataclass(frozen=True)
class Cell:
    model: str
    scheme_name: str
    scheme: dict
    calibration: str
    fixes: tuple[str, ...]
    seed: int

    def key(self) -> str:
        blob = json.dumps([self.model, self.scheme, self.calibration, list(self.fixes), self.seed], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def config(self) -> Config:
        sch = json.loads(json.dumps(self.scheme))
        acts = sch.get("activations")
        if acts is not None:
            sch["activations"] = {**acts, "calibration": self.calibration}
        return Config.from_dict({"scheme": sch, "fixes": list(self.fixes)})


@dataclass(frozen=True)
class Plan:
    name: str
    cells: list[Cell]
    engines: bool
    data: dict[str, str]  # model → image folder (torchvision models)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            d = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"experiment plan not found: {path}") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"experiment plan {path} is not valid TOML: {e}") from None
        unknown = set(d) - PLAN_KEYS
        if unknown:
            raise ConfigError(f"unknown plan key(s) {sorted(unknown)}; expected {sorted(PLAN_KEYS)}")

        def strings(key: str, default: list | None = None) -> list:
            v = d.get(key, default)
            if not isinstance(v, list) or not v:
                raise ConfigError(f"plan '{key}' must be a non-empty list")
            return v

        models = strings("models")
        if not all(isinstance(m, str) for m in models):
            raise ConfigError("plan 'models' must be a list of MODEL strings")
        cals = strings("calibrations", ["minmax"])
        bad = [c for c in cals if c not in CALIBRATIONS]
        if bad:
            raise ConfigError(f"unknown calibration(s) {bad}; choose from {', '.join(CALIBRATIONS)}")
        fixes = strings("fixes", [[]])
        if not all(isinstance(f, list) and all(isinstance(x, str) for x in f) for f in fixes):
            raise ConfigError("plan 'fixes' must be a list of lists of fix names, e.g. [[], [\"qat\"]]")
        seeds = strings("seeds", [0])
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise ConfigError("plan 'seeds' must be a list of non-negative integers")
        schemes = d.get("schemes", {"default": {}})
        if not isinstance(schemes, dict) or not schemes:
            raise ConfigError("plan 'schemes' must be tables of named schemes, e.g. [schemes.int8_sym]")
        for sname, sd in schemes.items():
            try:
                Scheme.from_dict(sd)
            except ConfigError as e:
                raise ConfigError(f"scheme {sname!r}: {e}") from None
            except Exception as e:  # noqa: BLE001
                raise ConfigError(f"scheme {sname!r}: {e}") from None
        for f in fixes:  # fail before any work
            Config.from_dict({"fixes": f})
        engines = d.get("engines", False)
        if not isinstance(engines, bool):
            raise ConfigError("plan 'engines' must be true or false")
        data = d.get("data", {})
        if not isinstance(data, dict):
            raise ConfigError("plan 'data' must be a table MODEL = \"image folder\"")
        cells = [Cell(m, sn, sd, c, tuple(f), s) for m in models for sn, sd in schemes.items() for c in cals
                 for f in fixes for s in seeds]  # fmt: skip
        return cls(name=str(d.get("name", path.stem)), cells=cells, engines=engines, data=data)


def environment() -> dict[str, Any]:
    from .analysis import library_versions

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.machine(), "threads": int(os.environ.get("OMP_NUM_THREADS", 0) or os.cpu_count() or 0),
            **{f"v_{k}": v for k, v in library_versions().items()}}  # fmt: skip


def run_cell(cell: Cell, wl, fp32: dict, engines: bool, workdir: Path, progress: Progress) -> dict:
    """One cell: simulated metric (and the engine's) of the cell's config on the seed's draw."""
    from .quantized import simulate_outputs
    from .repeats import resample_calibration, seeded
    from .stats import drop_interval

    cfg = cell.config()
    t0 = time.perf_counter()
    with seeded(cell.seed):
        wl_s = resample_calibration(wl, cell.seed)
        q, _ = simulate_outputs(wl_s, cfg, progress)
        metric = wl.score(q)
        iv = drop_interval(wl.evaluate, fp32["outputs"], q, wl.targets(), max_seconds=5.0, higher_is_better=wl.higher_is_better)
        row = {"model": cell.model, "scheme": cell.scheme_name, "calibration": cell.calibration,
               "fixes": "+".join(cell.fixes) or "ptq", "seed": cell.seed, "scheme_label": cfg.scheme.label(),
               "fp32_metric": fp32["metric"], "metric": metric, "drop": wl.drop(fp32["metric"], metric),
               "drop_ci_low": iv.low, "drop_ci_high": iv.high, "metric_name": wl.metric_name,
               "n_eval": wl.n_eval, "n_calib": wl.n_calib}  # fmt: skip
        if engines:
            from .errors import ExportError
            from .export import export

            try:
                (workdir / cell.key()).mkdir(parents=True, exist_ok=True)
                rep = export(wl_s, cfg, workdir / cell.key(), repeats=10)
                row.update(engine_metric=rep.engine_metric, engine_bytes=rep.int8_size_bytes,
                           engine_latency_ms=rep.int8_latency_ms)  # fmt: skip
            except ExportError as e:
                row["engine_note"] = str(e)
    row["seconds"] = time.perf_counter() - t0
    return row


def run_plan(plan: Plan, out: Path, *, progress: Progress | None = None, record: Callable[[Path], None] | None = None) -> pd.DataFrame:
    """Run the missing cells of ``plan`` into ``out/cells``; the tidy table of all cells.
    ``record(path)`` is told of each file before it is written (the output folder's marker)."""
    import tempfile
    from .compare import fp32_outputs
    from .report import write_json
    from .workload import load_workload

    say = progress or (lambda m: None)
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    todo = [c for c in plan.cells if not (cells_dir / f"{c.key()}.json").is_file()]
    say(f"{len(plan.cells)} cells, {len(plan.cells) - len(todo)} already done")
    workloads: dict[str, Any] = {}
    for i, cell in enumerate(todo):
        if cell.model not in workloads:
            workloads.clear()  # one model in memory at a time
            wl = load_workload(cell.model, plan.data.get(cell.model))
            fp = fp32_outputs(wl)
            workloads[cell.model] = (wl, {"outputs": fp, "metric": wl.score(fp)})
        wl, fp32 = workloads[cell.model]
        say(f"cell {i + 1}/{len(todo)}: {cell.model} {cell.scheme_name} {cell.calibration} "
            f"{'+'.join(cell.fixes) or 'ptq'} seed {cell.seed}")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="qanalysis-experiment-") as engines:
            row = run_cell(cell, wl, fp32, plan.engines, Path(engines), say)
        row.update(env, cell=cell.key(), plan=plan.name)
        if record:
            record(cells_dir / f"{cell.key()}.json")
        write_json(row, cells_dir / f"{cell.key()}.json")
    return table(plan, cells_dir)


def table(plan: Plan, cells_dir: Path) -> pd.DataFrame:
    rows = []
    for c in plan.cells:
        p = cells_dir / f"{c.key()}.json"
        if p.is_file():
            rows.append(json.loads(p.read_text()))
    return pd.DataFrame(rows)


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (model, scheme, calibration, fixes)."""
    keys = ["model", "scheme", "calibration", "fixes"]
    g = df.groupby(keys, sort=False)
    agg = g.agg(fp32_metric=("fp32_metric", "first"), metric_mean=("metric", "mean"), metric_std=("metric", "std"),
                drop_mean=("drop", "mean"), drop_std=("drop", "std"), seeds=("seed", "count")).reset_index()  # fmt: skip
    agg[["metric_std", "drop_std"]] = agg[["metric_std", "drop_std"]].fillna(0.0)
    return agg


RESULT_FILES = ("results.csv", "results.parquet", "summary.csv", "report.html")


def write_results(df: pd.DataFrame, out: Path, plan: Plan) -> list[Path]:
    """results.csv, results.parquet, summary.csv (mean ± std over seeds) and report.html."""
    from . import figures
    from .report import atomic_write, html_report, write_csv, write_text

    agg = aggregate(df)
    written = [write_csv(df, out / "results.csv"),
               atomic_write(out / "results.parquet", lambda t: df.to_parquet(t, index=False)),
               write_csv(agg, out / "summary.csv")]  # fmt: skip
    figs = [figures.experiment_bars(agg, m) for m in agg["model"].unique()]
    cards = {"cells": str(len(df)), "models": str(df["model"].nunique()), "seeds": str(df["seed"].nunique())}
    page = html_report(f"qanalysis experiment — {plan.name}", cards, figs, {"Mean ± std over seeds": agg, "All cells": df})
    written.append(write_text(page, out / "report.html"))
    return written
