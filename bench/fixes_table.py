"""The fixes on every bundled sample: simulated task metric and output SQNR against FP32.

    python bench/fixes_table.py [--schemes W4A8 W3A8] [--seeds 0 1] [--samples digits_cnn ...]

For each sample and scheme: FP32, PTQ (round-to-nearest), and PTQ plus each fix alone
(CLE, SmoothQuant, bias correction, AdaRound, QAT); AdaRound and QAT once per seed. Prints two
markdown tables (metric; output SQNR vs the FP32 model in dB) and writes
bench/results/fixes_table.json. Simulated only: ONNX Runtime's engine has no 4/3-bit kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qanalysis import metrics as M
from qanalysis.analysis import prepare_simulator
from qanalysis.fixes import adaround, qat
from qanalysis.graph import prepare
from qanalysis.scheme import Config
from qanalysis.workload import list_samples, load_sample

SCHEMES = {
    "W4A8": {"weights": {"bits": 4}},
    "W3A8": {"weights": {"bits": 3}},
    "W8A8": {},
}
SEEDED = {"adaround": adaround, "qat": qat}


def run(wl, scheme: dict, fixes: tuple[str, ...]) -> tuple[float, torch.Tensor, float]:
    cfg = Config.from_dict({"scheme": scheme, "fixes": list(fixes)})
    qg = prepare(wl, cfg.scheme)
    t = time.perf_counter()
    sim, *_ = prepare_simulator(wl, qg, cfg)
    plan = sim.plan(cfg)
    with torch.inference_mode():
        out = torch.cat([sim.output(sim.run(dict(zip(qg.input_names, x)), plan)) for x, _ in wl.evaluation])
    return wl.score(out), out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", nargs="+", default=list_samples())
    p.add_argument("--schemes", nargs="+", default=["W4A8", "W3A8"], choices=list(SCHEMES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--fixes", nargs="+", default=["cle", "smoothquant", "bias_correction", "adaround", "qat"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny tensors: 1 avoids OpenMP oversubscription)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for name in args.samples:
        wl = load_sample(name)
        for sname in args.schemes:
            scheme = SCHEMES[sname]
            qg = prepare(wl, Config.from_dict({"scheme": scheme}).scheme)
            with torch.inference_mode():
                fp_out = torch.cat([qg.program.run(dict(zip(qg.input_names, x)))[qg.program.outputs[0]] for x, _ in wl.evaluation])
            row = {"sample": name, "scheme": sname, "fp32": wl.score(fp_out)}
            m, out, dt = run(wl, scheme, ())
            row["ptq"] = {"metric": m, "sqnr_db": M.sqnr_db(fp_out, out), "seconds": dt}
            for fix in args.fixes:
                seeds = args.seeds if fix in SEEDED else [None]
                runs = []
                for s in seeds:
                    if s is not None:
                        SEEDED[fix].SEED = s
                    m, out, dt = run(wl, scheme, (fix,))
                    runs.append({"seed": s, "metric": m, "sqnr_db": M.sqnr_db(fp_out, out), "seconds": dt})
                row[fix] = runs
            results.append(row)
            print(f"{name} {sname}: done", file=sys.stderr, flush=True)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fixes_table.json").write_text(json.dumps({"results": results, "adaround_iters": adaround.ITERS,
                                                          "qat_epochs": qat.EPOCHS, "qat_lr": qat.LR}, indent=2))  # fmt: skip

    def cell(v, key: str, nd: int) -> str:
        if isinstance(v, dict):
            return f"{v[key]:.{nd}f}"
        vals = [r[key] for r in v]
        return " / ".join(f"{x:.{nd}f}" for x in vals)

    for key, title, nd in (("metric", "simulated task metric (accuracy %, R² % for diabetes_mlp)", 2),
                           ("sqnr_db", "model-output SQNR vs FP32 (dB)", 1)):  # fmt: skip
        print(f"\n### {title}; seeded fixes: seed {' / '.join(map(str, args.seeds))}\n")
        head = ["sample", "scheme", "FP32", "PTQ (RTN)"] + args.fixes
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in results:
            cells = [r["sample"], r["scheme"], f"{r['fp32']:.2f}" if key == "metric" else "", cell(r["ptq"], key, nd)]
            cells += [cell(r[f], key, nd) for f in args.fixes]
            print("| " + " | ".join(cells) + " |")
    print(f"\nAdaRound {adaround.ITERS} iterations per layer; QAT {qat.EPOCHS} epochs, Adam lr {qat.LR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
