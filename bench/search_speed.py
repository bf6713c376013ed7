"""Benchmark: mixed-precision search — evaluations used vs layers, wall time, and the
predicted vs measured latency of the chosen engine, per sample and on the planted spec.

    .venv/bin/python bench/search_speed.py [--max-drop 1.0 0.1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qanalysis.analysis import analyze  # noqa: E402
from qanalysis.search import search  # noqa: E402
from qanalysis.workload import list_samples, load_workload  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--max-drop", type=float, nargs="+", default=[1.0, 0.1])
    args = p.parse_args()
    sources = [f"sample:{n}" for n in list_samples()] + [str(ROOT / "tests" / "specs" / "planted_outliers.py")]
    rows = []
    print(f"{'model':34} {'budget':>6} {'N':>4} {'evals':>5} {'float':>5} {'drop':>6} {'search s':>8} {'pred ms':>8} {'meas ms':>8} {'err %':>6}")
    for src in sources:
        wl = load_workload(src)
        a = analyze(wl, baseline=False, previews=0)
        for budget in args.max_drop:
            t = time.perf_counter()
            r = search(a, budget)
            s = r.summary()
            s.update(model=src, budget=budget, wall_s=time.perf_counter() - t, drop=r.evaluated[r.chosen_id].drop)
            rows.append(s)
            name = Path(src).stem if src.endswith(".py") else src
            print(f"{name:34} {budget:6.2f} {s['n_layers']:4d} {s['n_evaluations']:5d} {len(s['float_layers']):5d} {s['drop']:6.2f} "
                  f"{s['wall_s']:8.1f} {s['predicted_latency_ms']:8.3f} {s['measured_latency_ms'] or float('nan'):8.3f} "
                  f"{s['latency_prediction_error_pct'] or float('nan'):6.1f}", flush=True)  # fmt: skip
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "search_speed.json").write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
