"""Command line: argument parsing and error printing only (the work is in the core).

    qanalysis samples
    qanalysis analyze MODEL --out DIR [--config CONFIG.json] [--data DIR]
                      [--eval-samples N] [--calib-samples N] [--memory-budget 2GB]  (every model command)
    qanalysis search  MODEL --max-drop PCT [--objective latency|size] --out DIR [--config CONFIG.json]
    qanalysis export  MODEL --out DIR [--config CONFIG.json] [--mode int8|dynamic|fp16]
    qanalysis compare MODEL --configs A.json B.json ... --out DIR

MODEL is ``sample:NAME``, ``torchvision:ARCH[@WEIGHTS.pt]`` (with ``--data``) or a spec
file path. Errors print one ``error: ...`` line on stderr and exit 2; progress goes to
stderr; results go to files in ``--out``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import QAnalysisError
from .outputs import Staging, staged


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops, its staging folder is removed."""

    signum = signal.SIGTERM


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other error
        raise QAnalysisError(f"{message} (see '{self.prog} --help')")


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of samples, 1 or more; got {text!r}")
    return n


def _progress(quiet: bool):
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qanalysis", description="Will INT8 hurt my model? Per-layer quantization analysis for ONNX Runtime.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    sub.add_parser("samples", help="list the bundled sample workloads")

    def bounds(c: argparse.ArgumentParser) -> None:
        from .memory import parse_bytes

        c.add_argument("--eval-samples", type=_count, metavar="N", help="use only the first N evaluation samples")
        c.add_argument("--calib-samples", type=_count, metavar="N", help="use only the first N calibration samples")
        c.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE", default=None,
                       help="bytes of tensors the run may hold at once, e.g. 2GB (default), 512M; K/M/G are powers of 1024")  # fmt: skip

    def model_cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("model", metavar="MODEL", help="sample:NAME | torchvision:ARCH[@WEIGHTS.pt] | path/to/spec.py")
        c.add_argument("--out", required=True, help="output folder (new or empty; see --force)")
        c.add_argument("--force", action="store_true", help="replace the results of a previous qanalysis run in --out")
        c.add_argument("--config", type=Path, help="config JSON (scheme, per-layer precision, fixes)")
        c.add_argument("--data", type=Path, help="image folder (one sub-folder per class) for torchvision models")
        c.add_argument("--quiet", action="store_true", help="no progress on stderr")
        bounds(c)
        return c

    model_cmd("analyze", "per-layer sensitivity, outliers, recommendations and a verdict")
    s = model_cmd("search", "greedy mixed-precision search under a metric budget; Pareto fronts")
    s.add_argument("--max-drop", required=True, type=float, metavar="PCT", help="allowed metric drop (points)")
    s.add_argument("--objective", choices=["latency", "size"], default="latency")
    s.add_argument("--int4", action="store_true", help="also try int4 weights (simulated only: not exportable to ORT)")
    e = model_cmd("export", "verified ONNX Runtime engines for a config")
    e.add_argument("--mode", choices=["int8", "dynamic", "fp16"], default="int8",
                   help="int8: static QDQ engine (default); dynamic: weights-only INT8; fp16")  # fmt: skip
    c = sub.add_parser("compare", help="FP32 and each config side by side: simulated, engine, size, latency")
    c.add_argument("model", metavar="MODEL", help="sample:NAME | torchvision:ARCH[@WEIGHTS.pt] | path/to/spec.py")
    c.add_argument("--configs", required=True, nargs="+", type=Path, metavar="CONFIG.json",
                   help="config files; each one's label is its file stem")  # fmt: skip
    c.add_argument("--out", required=True, help="output folder (new or empty; see --force)")
    c.add_argument("--force", action="store_true", help="replace the results of a previous qanalysis run in --out")
    c.add_argument("--data", type=Path, help="image folder (one sub-folder per class) for torchvision models")
    c.add_argument("--quiet", action="store_true", help="no progress on stderr")
    bounds(c)
    return p


def _output(args: argparse.Namespace):
    """The run's staging folder: results move into ``--out`` only if the run succeeds."""
    return staged(args.out, command=args.cmd, force=args.force, argv=args.argv)


def _wrote(st: Staging) -> str:
    """``wrote a.csv, b.json, int8/ (4 files) to DIR``: only what this run wrote."""
    top: dict[str, int] = {}
    for rel in st.written:
        parts = Path(rel).parts
        key = parts[0] if len(parts) == 1 else parts[0] + "/"
        top[key] = top.get(key, 0) + 1
    shown = [k if not k.endswith("/") else f"{k} ({n} file{'s' if n > 1 else ''})" for k, n in sorted(top.items())]
    return f"wrote {', '.join(shown)} to {st.out}"


def _summary_line(s: dict) -> str:
    return (
        f"{s['model']}: FP32 {s['fp32_metric']:.2f} → INT8 {s['int8_metric']:.2f} "
        f"({s['metric_name']}), drop {s['drop']:.2f} points → {s['verdict']}"
    )


def _analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .report import write_analysis
    from .scheme import Config
    from .workload import load_workload

    config = Config.load(args.config)
    say = _progress(args.quiet)
    with _output(args) as st:
        say(f"loading {args.model}")
        wl = load_workload(args.model, args.data, eval_samples=args.eval_samples, calib_samples=args.calib_samples)
        a = analyze(wl, config, progress=say)
        say(f"writing {st.out}")
        write_analysis(a, st.path)
    s = a.summary()
    for w in a.warnings:  # loud, even with --quiet: the numbers below may not mean what they say
        print(f"warning: {w}", file=sys.stderr)
    print(_summary_line(s))
    # ties on the (coarse) metric drop are broken by the end-to-end output SQNR, lowest first
    top = a.layers_frame().sort_values(["metric_drop", "e2e_sqnr_db"], ascending=[False, True]).head(5)
    print("most sensitive layers (metric drop with only that layer quantized):")
    for _, r in top.iterrows():
        print(f"  {r['layer']:<40} {r['metric_drop']:+.3f}  {r['recommendation']}")
    print(_wrote(st))
    return 0


def _search(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .report import write_csv, write_json
    from .scheme import Config
    from .search import search
    from .workload import load_workload

    config = Config.load(args.config)
    say = _progress(args.quiet)
    with _output(args) as st:
        out = st.path
        say(f"loading {args.model}")
        wl = load_workload(args.model, args.data, eval_samples=args.eval_samples, calib_samples=args.calib_samples)
        a = analyze(wl, config, progress=say, baseline=False, previews=0)
        for w in a.warnings:
            print(f"warning: {w}", file=sys.stderr)
        res = search(a, args.max_drop, objective=args.objective, progress=say, allow_int4=args.int4)
        write_csv(res.frame(), out / "pareto.csv")
        write_json(res.summary(), out / "search.json")
        write_json(res.chosen.to_dict(), out / "config.json")
    s = res.summary()
    chosen = res.evaluated[res.chosen_id]
    print(f"{wl.name}: FP32 {a.fp32_metric:.2f}, all-INT8 drop {a.drop:.2f} → chosen config drop {chosen.drop:.2f} "
          f"(budget {args.max_drop}) with {len(s['float_layers'])} float layer(s): {', '.join(s['float_layers']) or 'none'}")  # fmt: skip
    if s["measured_latency_ms"] is not None:
        print(f"latency: predicted {s['predicted_latency_ms']:.3f} ms, measured {s['measured_latency_ms']:.3f} ms "
              f"({s['latency_prediction_error_pct']:+.1f}%); all-INT8 {s['int8_latency_ms']:.3f} ms, FP32 {s['fp32_latency_ms']:.3f} ms")  # fmt: skip
    print(f"{s['n_evaluations']} config evaluations for {s['n_layers']} layers in {s['seconds']:.1f} s")
    for n in s["notes"]:
        print(f"note: {n}")
    print(_wrote(st))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export
    from .report import write_json
    from .scheme import Config
    from .workload import load_workload

    config = Config.load(args.config)
    say = _progress(args.quiet)
    with _output(args) as st:
        out = st.path
        say(f"loading {args.model}")
        wl = load_workload(args.model, args.data, eval_samples=args.eval_samples, calib_samples=args.calib_samples)
        rep = export(wl, config, out, mode=args.mode, progress=say)
        write_json(rep.config, out / "config.json")
        write_json(rep.to_dict(), out / "export.json")
    print(rep.table())
    print(_wrote(st))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare, load_configs
    from .report import write_csv, write_json
    from .workload import load_workload

    configs = load_configs(args.configs)
    say = _progress(args.quiet)
    with _output(args) as st:
        out = st.path
        say(f"loading {args.model}")
        wl = load_workload(args.model, args.data, eval_samples=args.eval_samples, calib_samples=args.calib_samples)
        res = compare(wl, configs, out, progress=say)
        write_csv(res.to_frame(), out / "compare.csv")
        write_json(res.to_dict(), out / "compare.json")
    print(f"{wl.name} ({wl.metric_name}):")
    print(res.table())
    print(_wrote(st))
    return 0


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. called from a worker): leave signals alone
        previous = None
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
        args.argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
        if args.cmd == "samples":
            from .workload import list_samples

            for n in list_samples():
                print(n)
            return 0
        from .memory import memory_budget

        run = {"analyze": _analyze, "export": _export, "search": _search, "compare": _compare}.get(args.cmd)
        if run is None:  # pragma: no cover
            raise QAnalysisError(f"unknown command {args.cmd}")
        with memory_budget(args.memory_budget):
            return run(args)
    except QAnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        name = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        print(f"error: {name}; the output folder holds no partial results", file=sys.stderr)
        return 128 + int(signum)
    except BrokenPipeError:  # `qanalysis ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
