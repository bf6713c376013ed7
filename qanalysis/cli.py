"""Command line: argument parsing and error printing only (the work is in the core).

    qanalysis samples
    qanalysis analyze MODEL --out DIR [--config CONFIG.json] [--data DIR]
                      [--eval-samples N] [--calib-samples N] [--memory-budget 768MB]  (every model command)
    qanalysis search  MODEL --max-drop PCT [--objective latency|size] --out DIR [--config CONFIG.json]
    qanalysis export  MODEL --out DIR [--config CONFIG.json] [--mode int8|dynamic|fp16]
    qanalysis compare MODEL --configs A.json B.json ... --out DIR
    qanalysis validate ENGINE... --data DIR|--spec S --out DIR;  diff A B;  experiment GRID.toml --out DIR

The four model commands are one shape (check arguments, load, run + write, print): MODEL_COMMANDS.

MODEL is ``sample:NAME``, ``torchvision:ARCH[@WEIGHTS.pt]`` (with ``--data``) or a spec
file path. Errors print one ``error: ...`` line on stderr and exit 2; progress goes to
stderr; results go to files in ``--out``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

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
        # elapsed time and resident memory now: which phase costs what, as the run goes
        if not quiet:
            from .memory import rss_now

            print(f"[{time.perf_counter() - t0:6.1f}s {rss_now() / 1e9:5.2f} GB] {msg}", file=sys.stderr, flush=True)

    return say


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qanalysis", description="Will INT8 hurt my model? Per-layer quantization analysis for ONNX Runtime.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    sub.add_parser("samples", help="list the bundled sample workloads")

    def metric_arg(c: argparse.ArgumentParser) -> None:
        c.add_argument("--metric", choices=["accuracy", "top5", "agreement"], default="accuracy",
                       help="accuracy: the model's own metric (default; top-1 on an image folder); top5: top-5 accuracy; "
                        "agreement: top-1 agreement with the FP32 model's own predictions (a pretrained head on "
                        "a folder whose sub-folders are not its classes)")  # fmt: skip

    def bounds(c: argparse.ArgumentParser) -> None:
        from .memory import parse_bytes

        c.add_argument("--eval-samples", type=_count, metavar="N", help="use only the first N evaluation samples")
        c.add_argument("--calib-samples", type=_count, metavar="N", help="use only the first N calibration samples")
        c.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE", default=None,
                       help="bytes of tensors the run may hold at once, e.g. 768MB (default), 2GB; K/M/G are powers of 1024")  # fmt: skip

    def model_cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("model", metavar="MODEL", help="sample:NAME | torchvision:ARCH[@WEIGHTS.pt] | path/to/spec.py")
        c.add_argument("--out", required=True, help="output folder (new or empty; see --force)")
        c.add_argument("--force", action="store_true", help="replace the results of a previous qanalysis run in --out")
        c.add_argument("--config", type=Path, help="config JSON (scheme, per-layer precision, fixes)")
        c.add_argument("--data", type=Path, help="image folder (one sub-folder per class) for torchvision models")
        metric_arg(c)
        c.add_argument("--quiet", action="store_true", help="no progress on stderr")
        bounds(c)
        return c

    an = model_cmd("analyze", "per-layer sensitivity, outliers, recommendations and a verdict")
    an.add_argument("--repeats", type=int, default=1, metavar="K",
                    help="redraw the calibration samples K times (seeded): mean ± std of the INT8 metric and of each layer's sensitivity")  # fmt: skip
    s = model_cmd("search", "greedy mixed-precision search under a metric budget; Pareto fronts")
    s.add_argument("--max-drop", required=True, metavar="DROP",
                   help="allowed metric drop: points (1.5), or a percentage of the FP32 metric (5%%); for lower-is-better "
                        "metrics (perplexity) a drop is a rise")  # fmt: skip
    s.add_argument("--objective", choices=["latency", "size"], default="latency")
    s.add_argument("--formats", action=argparse.BooleanOptionalAction, default=None,
                   help="also choose weight-only W8/W4 (group 32 or 128) per MatMul/Gemm layer (MatMulNBits engines); "
                        "default: on for language models")  # fmt: skip
    s.add_argument("--no-fixes", action="store_true",
                   help="do not try whole-model fixes (CLE, bias correction, calibration, granularity) before keeping layers in float")  # fmt: skip
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
    metric_arg(c)
    c.add_argument("--quiet", action="store_true", help="no progress on stderr")
    bounds(c)
    v = sub.add_parser("validate", help="score any ONNX engine on your data: metric, per class, predictions, latency, size")
    v.add_argument("engines", nargs="+", type=Path, metavar="ENGINE.onnx")
    _data_args(v)
    v.add_argument("--out", required=True, help="output folder (new or empty; see --force)")
    v.add_argument("--force", action="store_true", help="replace the results of a previous qanalysis run in --out")
    v.add_argument("--quiet", action="store_true", help="no progress on stderr")
    x = sub.add_parser("experiment", help="run a grid of models × schemes × calibrations × fixes × seeds from a TOML plan (resumable)")
    x.add_argument("plan", type=Path, metavar="PLAN.toml")
    x.add_argument("--out", required=True, help="output folder; an interrupted experiment resumes there")
    x.add_argument("--quiet", action="store_true", help="no progress on stderr")
    d = sub.add_parser("diff", help="compare two results files (or engines) with a paired bootstrap interval and McNemar's test")
    d.add_argument("a", type=Path, metavar="A", help="reference: a .results.json from validate, or an engine .onnx (with --data)")
    d.add_argument("b", type=Path, metavar="B", help="candidate: likewise")
    _data_args(d)
    d.add_argument("--out", help="also write diff.json and diff_per_class.csv here")
    d.add_argument("--force", action="store_true", help="replace the results of a previous qanalysis run in --out")
    d.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _data_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--data", type=Path, help="image folder, one sub-folder per class")
    c.add_argument("--spec", type=Path, help="spec file supplying evaluation_batches() and evaluate() instead of --data")
    c.add_argument("--size", type=int, default=224, help="center-crop size (default 224)")
    c.add_argument("--resize", type=int, default=256, help="short side before the crop (0: none; default 256)")
    c.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406), metavar=("R", "G", "B"))
    c.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225), metavar=("R", "G", "B"))
    c.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    c.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")


def _eval_data(args: argparse.Namespace):
    from .validate import image_folder_data, spec_data

    if (args.data is None) == (args.spec is None):
        raise QAnalysisError("give the evaluation data as exactly one of --data DIR or --spec SPEC.py")
    if args.spec is not None:
        return spec_data(args.spec)
    return image_folder_data(args.data, size=args.size, resize=args.resize or None, mean=tuple(args.mean),
                             std=tuple(args.std), layout=args.layout)  # fmt: skip


def _stems(paths: Sequence[Path]) -> list[str]:
    """A results-file name per engine: its stem, with its folder where two stems collide."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def _validate(args: argparse.Namespace) -> int:
    from .validate import validate_engine

    say = _progress(args.quiet)
    if (args.data is None) == (args.spec is None):
        raise QAnalysisError("give the evaluation data as exactly one of --data DIR or --spec SPEC.py")
    for path in args.engines:
        if not path.is_file():
            raise QAnalysisError(f"engine not found: {path}")
    with _output(args) as st:
        data = _eval_data(args)
        rows = []
        for path, stem in zip(args.engines, _stems(args.engines)):
            say(f"validating {path} on {data.name} ({sum(len(t) for _, t in data.batches)} samples)")
            r = validate_engine(path, data, threads=args.threads)
            r.save(st.path, stem)
            rows.append(r)
    for r in rows:
        extra = f", top-5 {r.top5:.2f}" if r.top5 is not None else ""
        flag = " (unstable timing)" if r.latency.get("unstable") else ""
        print(f"{r.engine}: {r.metric_name} {r.metric:.2f}{extra} on {r.n} samples; "
              f"{r.latency['median_ms']:.3f} ms median at batch 1{flag}; {r.size_bytes / 1e6:.2f} MB")  # fmt: skip
    print(_wrote(st))
    return 0


def _results(path: Path, args: argparse.Namespace, data_cache: dict):
    from .validate import Results, validate_engine

    if path.suffix == ".onnx":
        if "data" not in data_cache:
            data_cache["data"] = _eval_data(args)
        _progress(args.quiet)(f"validating {path}")
        return validate_engine(path, data_cache["data"], threads=args.threads)
    if not path.is_file():
        raise QAnalysisError(f"results file not found: {path}")
    return Results.load(path)


def _diff(args: argparse.Namespace) -> int:
    from .report import write_csv, write_json
    from .validate import diff, spec_data

    cache: dict = {}
    a, b = _results(args.a, args, cache), _results(args.b, args, cache)
    evaluate, higher = None, True
    if args.spec is not None:
        data = cache["data"] if "data" in cache else spec_data(args.spec)
        evaluate, higher = data.evaluate, data.higher_is_better
    d = diff(a, b, evaluate=evaluate, higher_is_better=higher)
    if args.out:
        import pandas as pd

        with _output(args) as st:
            write_json(d.to_dict(), st.path / "diff.json")
            if d.per_class:
                write_csv(pd.DataFrame(d.per_class), st.path / "diff_per_class.csv")
    print(d.table())
    if args.out:
        print(_wrote(st))
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from .experiment import RESULT_FILES, Plan, run_plan, write_results
    from .outputs import Incremental

    plan = Plan.load(args.plan)
    say = _progress(args.quiet)
    inc = Incremental(args.out, command="experiment", argv=args.argv)
    if inc.resumed:
        say(f"resuming in {inc.out}")
    df = run_plan(plan, inc.out, progress=say, record=inc.add)
    for name in RESULT_FILES:
        inc.add(inc.out / name)
    write_results(df, inc.out, plan)
    from .experiment import aggregate

    agg = aggregate(df)
    for _, r in agg.iterrows():
        print(f"{r['model']:<24} {r['scheme']:<12} {r['calibration']:<10} {r['fixes']:<12} "
              f"{r['metric_mean']:.2f} ± {r['metric_std']:.2f} (FP32 {r['fp32_metric']:.2f}, {r['seeds']} seed(s))")  # fmt: skip
    print(f"wrote {', '.join(RESULT_FILES)} and cells/ ({len(df)} cells) to {inc.out}")
    return 0


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


def _ci(lo_hi) -> str:
    """" (95% CI a to b)", or nothing when the interval is unknown."""
    import math

    lo, hi = lo_hi if lo_hi else (None, None)
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f" (95% CI {lo:.2f} to {hi:.2f})"


def _summary_line(s: dict) -> str:
    worth = f"; one sample = {s['one_sample_worth']:.2f} points" if s.get("one_sample_worth") else ""
    if not s.get("higher_is_better", True):  # perplexity: judged by its relative increase
        return (
            f"{s['model']}: FP32 {s['fp32_metric']:.3f} → INT8 {s['int8_metric']:.3f} ({s['metric_name']}, lower is better), "
            f"increase {s['drop']:+.3f}{_ci(s.get('drop_ci95'))} = {s['drop_relative_pct']:+.2f} % relative → {s['verdict']}"
        )
    return (
        f"{s['model']}: FP32 {s['fp32_metric']:.2f} → INT8 {s['int8_metric']:.2f} "
        f"({s['metric_name']}), drop {s['drop']:.2f} points{_ci(s.get('drop_ci95'))}{worth} → {s['verdict']}"
    )


# --------------------------------------------------------------------------- model commands
# analyze, search, export and compare share one shape: check the arguments (a bad config or budget
# fails before any work), load the workload, run the core and write its files into the staging
# folder, then print what the user reads. Each is one row of MODEL_COMMANDS.


@dataclass(frozen=True)
class ModelCommand:
    check: Callable[[argparse.Namespace], Any]  # → what run needs from the arguments, parsed
    run: Callable[..., Any]  # (workload, args, checked, say, out folder) → result; writes its files
    show: Callable[[Any, argparse.Namespace], None]  # prints the result's lines (stdout; warnings on stderr)


def _run_model_command(cmd: ModelCommand, args: argparse.Namespace) -> int:
    from .workload import load_workload

    checked = cmd.check(args)
    say = _progress(args.quiet)
    with _output(args) as st:
        say(f"loading {args.model}")
        wl = load_workload(args.model, args.data, metric=args.metric, eval_samples=args.eval_samples,
                           calib_samples=args.calib_samples)  # fmt: skip
        result = cmd.run(wl, args, checked, say, st.path)
    cmd.show(result, args)
    print(_wrote(st))
    return 0


def _load_config(args: argparse.Namespace):
    from .scheme import Config

    return Config.load(args.config)


def _analyze_check(args: argparse.Namespace):
    if args.repeats < 1:
        raise QAnalysisError(f"--repeats must be at least 1, got {args.repeats}")
    return _load_config(args)


def _analyze_run(wl, args: argparse.Namespace, config, say, out: Path):
    from .analysis import analyze
    from .memory import release
    from .report import write_analysis

    a = analyze(wl, config, progress=say)
    rep = None
    if args.repeats > 1:
        from .repeats import analyze_repeats

        rep = analyze_repeats(wl, config, args.repeats, progress=say, first=a)
    release(0)  # the analysis' freed tensors, before the report's figures allocate theirs
    say(f"writing {args.out}")
    write_analysis(a, out, repeats=rep)
    return a, rep


def _analyze_show(result, args: argparse.Namespace) -> None:
    a, rep = result
    s = a.summary()
    for w in a.warnings:  # loud, even with --quiet: the numbers below may not mean what they say
        print(f"warning: {w}", file=sys.stderr)
    print(_summary_line(s))
    # ties on the (coarse) metric drop are broken by the end-to-end output SQNR, lowest first
    top = a.layers_frame().sort_values(["metric_drop", "e2e_sqnr_db"], ascending=[False, True]).head(5)
    if rep is not None:
        r = rep.summary()
        print(f"over {r['k']} calibration draws: INT8 {r['int8_metric_mean']:.2f} ± {r['int8_metric_std']:.2f}; "
              f"layer ranking stability (Spearman vs the first draw) {r['rank_stability_spearman']:.2f}")  # fmt: skip
    print("most sensitive layers (metric drop with only that layer quantized):")
    for _, r in top.iterrows():
        print(f"  {r['layer']:<40} {r['metric_drop']:+.3f}{_ci((r['metric_drop_ci_low'], r['metric_drop_ci_high']))}  {r['recommendation']}")


def _search_check(args: argparse.Namespace):
    from .search import Budget

    return Budget.parse(args.max_drop), _load_config(args)


def _search_run(wl, args: argparse.Namespace, checked, say, out: Path):
    from .analysis import analyze
    from .memory import release
    from .report import write_search
    from .search import search

    budget, config = checked
    a = analyze(wl, config, progress=say, baseline=False, previews=0)
    release(0)  # the analysis' freed tensors, before the engines are built and profiled
    for w in a.warnings:
        print(f"warning: {w}", file=sys.stderr)
    res = search(a, budget, objective=args.objective, progress=say, formats=args.formats,
                 try_fixes=not args.no_fixes)  # fmt: skip
    write_search(res, a, out)  # pareto.csv, search.json, config.json, report.html
    return a, res


def _search_show(result, args: argparse.Namespace) -> None:
    a, res = result
    s = res.summary()
    chosen = res.evaluated[res.chosen_id]
    print(f"{a.workload.name}: FP32 {a.fp32_metric:.2f}, all-INT8 drop {a.drop:.2f}{_ci((a.drop_interval.low, a.drop_interval.high))}"
          f" → chosen config drop {chosen.drop:.2f}{_ci(chosen.drop_ci95)} "
          f"(budget {res.budget}{' = ' + format(res.max_drop, '.4g') if res.budget.endswith('%') else ''}) with {len(s['float_layers'])} float layer(s): {', '.join(s['float_layers']) or 'none'}"
          f"{' and fixes ' + ', '.join(res.chosen.fixes) if res.chosen.fixes else ''}")  # fmt: skip
    if s["measured_latency_ms"] is not None:
        print(f"latency (median, batch 1, timed together): chosen {s['measured_latency_ms']:.3f} ms (predicted "
              f"{s['predicted_latency_ms']:.3f}, {s['latency_prediction_error_pct']:+.1f}%); all-INT8 {s['int8_latency_ms']:.3f} ms, "
              f"FP32 {s['fp32_latency_ms']:.3f} ms{' (unstable timing)' if s['latency_unstable'] else ''}")  # fmt: skip
    print(f"{s['n_evaluations']} config evaluations for {s['n_layers']} layers, {s['engine_builds']} engine(s) built, in {s['seconds']:.1f} s")
    if s["layer_formats"]:
        print(f"weight-only layers: {', '.join(f'{n} {f}' for n, f in s['layer_formats'].items())}")
    for n in s["notes"]:
        print(f"note: {n}")


def _export_run(wl, args: argparse.Namespace, config, say, out: Path):
    from .export import export
    from .report import write_json

    rep = export(wl, config, out, mode=args.mode, progress=say)
    write_json(rep.config, out / "config.json")
    write_json(rep.to_dict(), out / "export.json")
    return rep, config


def _export_show(result, args: argparse.Namespace) -> None:
    rep, config = result
    print(rep.table())
    if rep.int8_latency_ms >= rep.fp32_latency_ms and not config.layers:
        print(f"warning: this {rep.mode.upper()} engine ({rep.int8_latency_ms:.3f} ms) is not faster than FP32 ({rep.fp32_latency_ms:.3f} ms); "
              f"`qanalysis search {args.model} --objective latency --max-drop 1` looks for a faster mixed-precision config",
              file=sys.stderr)  # fmt: skip


def _compare_check(args: argparse.Namespace):
    from .compare import load_configs

    return load_configs(args.configs)


def _compare_run(wl, args: argparse.Namespace, configs, say, out: Path):
    from .compare import compare
    from .report import write_csv, write_json

    res = compare(wl, configs, out, progress=say)
    write_csv(res.to_frame(), out / "compare.csv")
    write_json(res.to_dict(), out / "compare.json")
    return wl, res


def _compare_show(result, args: argparse.Namespace) -> None:
    wl, res = result
    print(f"{wl.name} ({wl.metric_name}):")
    print(res.table())


MODEL_COMMANDS: dict[str, ModelCommand] = {
    "analyze": ModelCommand(_analyze_check, _analyze_run, _analyze_show),
    "search": ModelCommand(_search_check, _search_run, _search_show),
    "export": ModelCommand(_load_config, _export_run, _export_show),
    "compare": ModelCommand(_compare_check, _compare_run, _compare_show),
}


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

        commands = {"validate": _validate, "diff": _diff, "experiment": _experiment}
        with memory_budget(getattr(args, "memory_budget", None)):
            if args.cmd in MODEL_COMMANDS:
                return _run_model_command(MODEL_COMMANDS[args.cmd], args)
            if args.cmd not in commands:  # pragma: no cover
                raise QAnalysisError(f"unknown command {args.cmd}")
            return commands[args.cmd](args)
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
