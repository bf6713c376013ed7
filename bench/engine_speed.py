"""Benchmark: FP32 engine vs the qanalysis INT8 engine vs the plain `quantize_static` recipes a
user would write, on torchvision resnet18 (random weights), batch 1 and 32, this CPU.

    .venv/bin/python bench/engine_speed.py [--images 64]

Prints a table and writes bench/results/engine_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from analyze_speed import random_image_folder  # noqa: E402
from qanalysis.baseline import time_calls  # noqa: E402
from qanalysis.calibrate import collect_stats  # noqa: E402
from qanalysis.engine import build_int8_engine, run_session, session  # noqa: E402
from qanalysis.graph import prepare, quiet  # noqa: E402
from qanalysis.scheme import Config, Scheme  # noqa: E402
from qanalysis.simulate import Simulator  # noqa: E402
from qanalysis.workload import load_workload  # noqa: E402


def plain_recipe(src: Path, dst: Path, wl, activation_type) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class R(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": x[0].numpy()} for x in wl.calibration])

        def get_next(self):
            return next(self.it, None)

    with quiet():
        quantize_static(str(src), str(dst), R(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=activation_type, weight_type=QuantType.QInt8)  # fmt: skip
    return dst


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=64)
    args = p.parse_args()
    from onnxruntime.quantization import QuantType

    tmp = Path(tempfile.mkdtemp())
    wl = load_workload("torchvision:resnet18", random_image_folder(tmp / "img", args.images))
    qg = prepare(wl)
    stats = collect_stats(qg.program, wl.calibration, qg.quantized_tensors, histograms=False)
    sim = Simulator(qg, stats, Scheme())
    engines = {
        "fp32": qg.float_path,
        "qanalysis int8": build_int8_engine(qg, sim, sim.plan(Config()), tmp / "qa.onnx", wl.calibration[0]).path,
        "quantize_static defaults (int8 acts)": plain_recipe(qg.float_path, tmp / "plain_s8.onnx", wl, QuantType.QInt8),
        "quantize_static uint8 acts": plain_recipe(qg.float_path, tmp / "plain_u8.onnx", wl, QuantType.QUInt8),
    }
    x32 = torch.cat([x[0] for x, _ in wl.evaluation])[:32]
    x1 = x32[:1]
    rows = []
    for name, path in engines.items():
        s = session(path)
        b1 = time_calls(lambda: run_session(s, (x1,)), 1, repeats=50, budget_s=20)
        b32 = time_calls(lambda: run_session(s, (x32,)), 32, repeats=8, budget_s=30)
        rows.append({"engine": name, "b1_ms": b1.median_ms, "b1_iqr_ms": b1.iqr_ms, "b32_ms_per_sample": b32.median_ms,
                     "b32_throughput": b32.throughput, "bytes": Path(path).stat().st_size})  # fmt: skip
    fp = rows[0]["b1_ms"]
    print(f"{'engine':40} {'b1 ms':>14} {'b32 ms/sample':>14} {'speedup b1':>10} {'MB':>7}")
    for r in rows:
        print(f"{r['engine']:40} {r['b1_ms']:8.2f} IQR {r['b1_iqr_ms']:4.2f} {r['b32_ms_per_sample']:14.2f} "
              f"{fp / r['b1_ms']:9.2f}x {r['bytes'] / 1e6:7.2f}")  # fmt: skip
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "engine_speed.json").write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2))


if __name__ == "__main__":
    np.random.seed(0)
    main()
