"""Benchmark: `analyze` wall time per sample and for torchvision resnet18 on random images,
and the per-layer sensitivity step with prefix reuse vs the naive full re-run per layer.

    .venv/bin/python bench/analyze_speed.py [--resnet-images 256] [--skip-naive]

Prints a table and writes bench/results/analyze_speed.json. Numbers belong in issue notes,
not in tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qanalysis.analysis import analyze  # noqa: E402
from qanalysis.scheme import Config  # noqa: E402
from qanalysis.sensitivity import analyze_layers  # noqa: E402
from qanalysis.workload import list_samples, load_workload  # noqa: E402


def random_image_folder(root: Path, n: int, classes: int = 4) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = (torch.rand(224, 224, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(root / f"class{i % classes}" / f"{i}.png")
    return root


def bench(source: str, data: Path | None, naive: bool) -> dict:
    t0 = time.perf_counter()
    wl = load_workload(source, data)
    t_load = time.perf_counter() - t0
    t = time.perf_counter()
    a = analyze(wl, Config())
    t_an = time.perf_counter() - t
    row = {
        "model": source, "layers": len(a.qgraph.layers), "n_eval": wl.n_eval, "n_calib": wl.n_calib,
        "load_s": t_load, "analyze_s": t_an, "total_s": t_load + t_an, "timings": a.timings,
        "sensitivity_s": a.sens.seconds, "node_runs": a.sens.nodes_run, "node_runs_naive": a.sens.nodes_naive,
        "fp32": a.fp32_metric, "int8": a.int8_metric,
    }  # fmt: skip
    if naive:
        t = time.perf_counter()
        analyze_layers(wl, a.sim, Config(), incremental=False)
        row["sensitivity_naive_s"] = time.perf_counter() - t
        row["speedup_vs_naive"] = row["sensitivity_naive_s"] / row["sensitivity_s"]
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--resnet-images", type=int, default=256)
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--only", nargs="*")
    args = p.parse_args()
    rows = []
    sources = [(f"sample:{n}", None) for n in list_samples()]
    tmp = None
    if args.resnet_images:
        tmp = tempfile.TemporaryDirectory()
        sources.append(("torchvision:resnet18", random_image_folder(Path(tmp.name), args.resnet_images)))
    for src, data in sources:
        if args.only and not any(o in src for o in args.only):
            continue
        r = bench(src, data, not args.skip_naive)
        rows.append(r)
        print(f"{src:28} layers {r['layers']:3}  analyze {r['total_s']:7.1f} s  sensitivity {r['sensitivity_s']:7.1f} s"
              + (f"  naive {r['sensitivity_naive_s']:7.1f} s  ({r['speedup_vs_naive']:.2f}x)" if "speedup_vs_naive" in r else "")
              + f"  node runs {r['node_runs']}/{r['node_runs_naive']}", flush=True)  # fmt: skip
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "analyze_speed.json").write_text(json.dumps({"machine": platform.platform(), "threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
