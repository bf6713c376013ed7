"""Benchmark: the torchvision zoo end to end, as a new user would run it.

For every classification architecture in ``torchvision.models.list_models(module=torchvision.models)``
(plus the segmentation models named in SEGMENTATION), random weights, a small generated image
folder: ``qanalysis analyze`` then ``qanalysis export``, each in its own process under
``/usr/bin/time -v``. Recorded per model: success or the exact failure line, wall time, peak
resident memory, FP32 / simulated / engine metric, |engine − simulated|, INT8 / FP32 latency
and size.

    .venv/bin/python bench/zoo.py [--models resnet18,mobilenet_v2] [--images 16] [--jobs 1]
                                  [--timeout 1800] [--skip-export] [--out bench/results/zoo]
                                  [--smallest-first] [--resume]

Writes ``OUT/zoo.csv`` and ``OUT/zoo.md`` (the table for an issue note) and prints the table.
On 2 cores run it with ``--jobs 1``; on a bigger machine ``--jobs N`` runs N models at once
(each with ``OMP_NUM_THREADS=1``... set ``--threads``). Numbers belong in notes, not in tests.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEGMENTATION = ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "fcn_resnet50"]
# Too large for a routine run on a 2-core machine (they still run with --models NAME).
HEAVY = {"vit_h_14", "regnet_y_128gf", "vit_l_16", "vit_l_32", "regnet_y_32gf", "efficientnet_v2_l"}


def image_folder(root: Path, n: int, classes: int = 4, size: int = 224) -> Path:
    """``n`` random RGB images (seeded) in ``classes`` sub-folders."""
    import torch
    from PIL import Image

    if root.exists() and len(list(root.rglob("*.png"))) == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(root / f"class{i % classes}" / f"{i}.png")
    return root


def classification_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def by_size(models: list[str]) -> list[str]:
    """Smallest first (parameter count from torchvision's weight metadata; nothing downloaded)."""
    import torchvision

    def params(m: str) -> float:
        try:
            return next(iter(torchvision.models.get_model_weights(m))).meta["num_params"]
        except Exception:  # noqa: BLE001 - no metadata: last
            return float("inf")

    return sorted(models, key=params)


def _timed(cmd: list[str], timeout: float, threads: int) -> dict:
    """Run ``cmd`` under /usr/bin/time -v: exit code, wall seconds, peak RSS, last error line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)}
    timev = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    try:
        r = subprocess.run(timev + cmd, capture_output=True, text=True, timeout=timeout, env=env)
        code, err, out = r.returncode, r.stderr, r.stdout
    except subprocess.TimeoutExpired as e:
        code, err, out = -9, (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or ""), ""
        err += f"\nerror: timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    peak = int(m.group(1)) * 1024 if m else None
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    if not errors and code != 0:
        tb = [l for l in err.splitlines() if l.strip() and not l.startswith(("\t", "  ")) and "Command being timed" not in l]
        errors = [f"(no error line; exit {code}) " + (tb[-1] if tb else "")]
    return {"code": code, "wall_s": wall, "peak_bytes": peak, "error": errors[-1] if errors else "", "stdout": out}


def run_model(arch: str, data: Path, work: Path, timeout: float, threads: int, export: bool) -> dict:
    py = sys.executable
    row: dict = {"model": arch}
    d = work / arch
    shutil.rmtree(d, ignore_errors=True)
    a = _timed([py, "-m", "qanalysis", "analyze", f"torchvision:{arch}", "--data", str(data), "--out", str(d / "analyze"),
                "--quiet"], timeout, threads)  # fmt: skip
    row.update(analyze_ok=a["code"] == 0, analyze_s=a["wall_s"], analyze_peak_mb=(a["peak_bytes"] or 0) / 2**20,
               error=a["error"])  # fmt: skip
    if a["code"] == 0:
        s = json.loads((d / "analyze" / "summary.json").read_text())
        row.update(layers=s.get("n_layers"), fp32=s["fp32_metric"], int8_sim=s["int8_metric"], drop=s["drop"])
    if not export:
        return row
    e = _timed([py, "-m", "qanalysis", "export", f"torchvision:{arch}", "--data", str(data), "--out", str(d / "export"),
                "--quiet"], timeout, threads)  # fmt: skip
    row.update(export_ok=e["code"] == 0, export_s=e["wall_s"], export_peak_mb=(e["peak_bytes"] or 0) / 2**20)
    if e["code"] != 0:
        row["error"] = row["error"] or e["error"]
        return row
    x = json.loads((d / "export" / "export.json").read_text())
    row.update(
        engine=x.get("engine_metric"), simulated=x.get("simulated_metric"),
        engine_minus_sim=abs((x.get("engine_metric") or 0) - (x.get("simulated_metric") or 0)),
        fp32_ms=x.get("fp32_latency_ms"), int8_ms=x.get("int8_latency_ms"),
        speedup=(x["fp32_latency_ms"] / x["int8_latency_ms"]) if x.get("int8_latency_ms") else None,
        fp32_mb=(x.get("fp32_size_bytes") or 0) / 1e6, int8_mb=(x.get("int8_size_bytes") or 0) / 1e6,
        sim_vs_engine_db=(x.get("output_sqnr_db") or {}).get("sim_vs_engine"),
        margin_db=(x.get("output_sqnr_db") or {}).get("margin_db"),
    )  # fmt: skip
    shutil.rmtree(d / "export", ignore_errors=True)  # engines are large; the JSON is in the row
    return row


def markdown(rows: list[dict]) -> str:
    cols = ["model", "analyze_ok", "export_ok", "analyze_s", "analyze_peak_mb", "export_peak_mb", "drop",
            "engine_minus_sim", "sim_vs_engine_db", "margin_db", "speedup", "fp32_mb", "int8_mb", "error"]  # fmt: skip

    def fmt(v):
        if isinstance(v, bool):
            return "✓" if v else "✗"
        if isinstance(v, float):
            return f"{v:.2f}"
        return "" if v is None else str(v).replace("|", "\\|")[:160]

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    ok = sum(1 for r in rows if r.get("analyze_ok") and r.get("export_ok", True))
    lines.append(f"\n{ok} of {len(rows)} models end to end.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated architectures (default: every classification model + segmentation)")
    ap.add_argument("--images", type=int, default=16, help="images in the generated folder (4 classes)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="OMP threads per model process")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--skip-export", action="store_true")
    ap.add_argument("--include-heavy", action="store_true", help=f"also {', '.join(sorted(HEAVY))}")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "zoo")
    ap.add_argument("--work", type=Path, help="where runs and images go (default: OUT)")
    ap.add_argument("--resume", action="store_true", help="keep OUT/zoo.csv's rows and skip their models")
    ap.add_argument("--smallest-first", action="store_true", help="order models by parameter count")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",") if args.models else [
        m for m in classification_models() + SEGMENTATION if args.include_heavy or m not in HEAVY]  # fmt: skip
    if args.smallest_first:
        models = by_size(models)
    rows: list[dict] = []
    if args.resume and (args.out / "zoo.csv").exists():
        import pandas as pd

        old = pd.read_csv(args.out / "zoo.csv").to_dict("records")
        rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in old]
        done = {r["model"] for r in rows}
        models = [m for m in models if m not in done] + [r["model"] for r in rows]  # rows keep their place
        todo = [m for m in models if m not in done]
    else:
        todo = models
    work = args.work or args.out
    data = image_folder(work / "images", args.images)
    work = work / "runs"
    print(f"{len(todo)} models to run ({len(rows)} kept), {args.images} images, {args.jobs} at a time", file=sys.stderr)
    with cf.ThreadPoolExecutor(args.jobs) as ex:
        futs = {ex.submit(run_model, m, data, work, args.timeout, args.threads, not args.skip_export): m for m in todo}
        for f in cf.as_completed(futs):
            r = f.result()
            rows.append(r)
            ok = r.get("analyze_ok") and r.get("export_ok", True)
            print(f"[{len(rows)}/{len(models)}] {r['model']}: {'ok' if ok else 'FAILED ' + r.get('error', '')} "
                  f"({r.get('analyze_s', 0):.0f} s, {r.get('analyze_peak_mb', 0):.0f} MB)", file=sys.stderr, flush=True)  # fmt: skip
            rows.sort(key=lambda r: models.index(r["model"]))
            import pandas as pd

            pd.DataFrame(rows).to_csv(args.out / "zoo.csv", index=False)
            (args.out / "zoo.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
