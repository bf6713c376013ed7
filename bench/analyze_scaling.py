"""Benchmark: `analyze` wall time as the evaluation data grows, in units of one FP32 evaluation.

For each model and each evaluation size N, in fresh subprocesses:

* U — one FP32 evaluation of the same N samples: the exported FP32 ONNX graph in ONNX Runtime
  (best of 3, after a warm-up), the same OMP threads as the analysis; the PyTorch model's time
  is recorded beside it (``wall_U_torch``: the same wall time in evaluations of the PyTorch
  model, which on 2 cores runs resnet18 about half as fast as ORT);
* ``qanalysis analyze MODEL --eval-samples N`` under ``/usr/bin/time -v``: wall time and peak
  resident memory (its summary.json adds the sensitivity step's own time and the chunking).

    .venv/bin/python bench/analyze_scaling.py [--models resnet18,mobilenet_v3_large,...]
                                              [--sizes 64,256,1024] [--threads 2]

MODEL is a torchvision architecture (random weights, a generated image folder of 224×224
images in 4 classes, big enough for the largest size) or ``sample:NAME`` / a spec path. Cost
must grow linearly in N (wall_U roughly flat across sizes) and peak RSS must not grow with N.
Writes bench/results/analyze_scaling.json and prints a table. Numbers belong in issue notes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_MODELS = "resnet18,mobilenet_v3_large,efficientnet_b0"
DEFAULT_SIZES = "64,256,1024"
CLASSES = 4
CALIB_PER_CLASS = 64  # workload.load_torchvision: max_calib 256 over the classes


def source_of(model: str) -> str:
    return model if model.startswith("sample:") or model.endswith(".py") or ":" in model else f"torchvision:{model}"


def images_for(n_eval: int) -> int:
    """Images in the folder so that its evaluation split holds ``n_eval`` samples: per class,
    ``k = min(64, round(n / 4))`` go to calibration and the rest to evaluation."""
    per = -(-n_eval // CLASSES)
    n = per
    while n - min(CALIB_PER_CLASS, round(n * 0.25)) < per:
        n += 1
    return n * CLASSES


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)}  # fmt: skip


def timed(cmd: list[str], threads: int, timeout: float) -> dict:
    """``cmd`` under /usr/bin/time -v: exit code, wall seconds, peak RSS, the last error line."""
    timev = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    try:
        r = subprocess.run(timev + cmd, capture_output=True, text=True, timeout=timeout, env=_env(threads))
        code, err, out = r.returncode, r.stderr, r.stdout
    except subprocess.TimeoutExpired:
        code, err, out = -9, f"error: timed out after {timeout:.0f} s", ""
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    if code and not errors:
        errors = [f"exit {code}: " + (err.strip().splitlines() or [""])[-1]]
    return {"code": code, "wall_s": wall, "peak_bytes": int(m.group(1)) * 1024 if m else None,
            "error": errors[-1] if errors else "", "stdout": out}  # fmt: skip


def measure_u(source: str, data: str | None, n: int, repeats: int = 3) -> dict:
    """One FP32 evaluation of the first ``n`` samples: ONNX Runtime on the exported graph, and PyTorch."""
    import torch

    from qanalysis.engine import run_session, session
    from qanalysis.graph import prepare
    from qanalysis.workload import load_workload, run_model

    wl = load_workload(source, data, eval_samples=n, calib_samples=1)
    qg = prepare(wl, None)
    sess = session(qg.float_path, threads=torch.get_num_threads())
    batches = [x for x, _ in wl.evaluation]

    def best(fn) -> float:
        fn(batches[0])  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for x in batches:
                fn(x)
            times.append(time.perf_counter() - t)
        return min(times)

    return {"n_eval": wl.n_eval, "onnx_s": best(lambda x: run_session(sess, x)), "torch_s": best(lambda x: run_model(wl.model, x))}


def run(model: str, data: Path | None, n: int, work: Path, threads: int, timeout: float) -> dict:
    source = source_of(model)
    py = sys.executable
    row: dict = {"model": model, "n_eval": n}
    d = ["--data", str(data)] if data is not None else []
    u = timed([py, __file__, "--measure-u", source, *d, "--n", str(n)], threads, timeout)
    if u["code"] != 0:
        return {**row, "error": "U: " + u["error"]}
    uj = json.loads(u["stdout"].strip().splitlines()[-1])
    row.update(n_eval=uj["n_eval"], U_s=uj["onnx_s"], torch_eval_s=uj["torch_s"])
    out = work / f"{model.replace('/', '_').replace(':', '_')}_{n}"
    a = timed([py, "-m", "qanalysis", "analyze", source, *d, "--eval-samples", str(n), "--out", str(out), "--force", "--quiet"],
              threads, timeout)  # fmt: skip
    row.update(ok=a["code"] == 0, wall_s=a["wall_s"], peak_rss_mb=(a["peak_bytes"] or 0) / 2**20, error=a["error"])
    if a["code"] == 0:
        s = json.loads((out / "summary.json").read_text())
        t = s.get("timings_s", {})
        row.update(
            layers=s.get("n_layers"), n_calib=s.get("n_calibration_samples"), sensitivity_s=t.get("sensitivity"),
            timings_s=t, chunk=s.get("sensitivity_chunk_samples"),
            bytes_per_sample_mb=(s.get("sensitivity_bytes_per_sample") or 0) / 2**20,
            wall_U=a["wall_s"] / uj["onnx_s"], sensitivity_U=(t.get("sensitivity") or 0) / uj["onnx_s"],
            wall_U_torch=a["wall_s"] / uj["torch_s"],
        )  # fmt: skip
    return row


def table(rows: list[dict]) -> str:
    cols = [("model", "{}"), ("n_eval", "{}"), ("layers", "{}"), ("U_s", "{:.2f}"), ("wall_s", "{:.1f}"),
            ("wall_U", "{:.1f}"), ("torch_eval_s", "{:.2f}"), ("wall_U_torch", "{:.1f}"), ("sensitivity_s", "{:.1f}"), ("sensitivity_U", "{:.1f}"), ("chunk", "{}"),
            ("peak_rss_mb", "{:.0f}"), ("error", "{}")]  # fmt: skip
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c, f in cols:
            v = r.get(c)
            cells.append("" if v is None or v == "" else (f.format(v) if not isinstance(v, str) else v[:120]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default {DEFAULT_MODELS})")
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"evaluation sizes, comma-separated (default {DEFAULT_SIZES})")
    ap.add_argument("--threads", type=int, default=2, help="OMP threads of every subprocess")
    ap.add_argument("--timeout", type=float, default=4 * 3600)
    ap.add_argument("--data", type=Path, help="an image folder to use instead of a generated one")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "analyze_scaling.json")
    ap.add_argument("--measure-u", metavar="SOURCE", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure_u:
        print(json.dumps(measure_u(args.measure_u, str(args.data) if args.data else None, args.n)))
        return
    models = [m for m in args.models.split(",") if m]
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="analyze-scaling-") as tmp:
        data = args.data
        if data is None and any(source_of(m).startswith("torchvision:") for m in models):
            from zoo import image_folder

            data = image_folder(Path(tmp) / "images", images_for(max(sizes)), classes=CLASSES)
        for m in models:
            for n in sizes:
                d = data if source_of(m).startswith("torchvision:") else None
                r = run(m, d, n, Path(tmp) / "runs", args.threads, args.timeout)
                rows.append(r)
                print(f"{m:24} N={r['n_eval']:5}  U {r.get('U_s', float('nan')):7.2f} s  analyze {r.get('wall_s', float('nan')):8.1f} s"
                      f" = {r.get('wall_U', float('nan')):6.1f} U  sensitivity {r.get('sensitivity_U', float('nan')):6.1f} U"
                      f"  peak RSS {r.get('peak_rss_mb', 0):6.0f} MB  {r.get('error', '')}", flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads, "sizes": sizes, "models": models}
    args.out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
