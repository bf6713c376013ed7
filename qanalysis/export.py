"""``export``: a config becomes deployable engines, verified against FP32 and the simulation.

Writes ``model_fp32.onnx``, ``model_int8.onnx`` (or ``model_fp16.onnx`` / the dynamic
engine in ``model_int8.onnx``), ``config.json`` and ``export.json``: PyTorch / ONNX FP32
metric, simulated metric, engine metric, layer-by-layer agreement of the engine's tensors
with the simulated ones (in quantization steps), sizes, latency (batch 1 and a larger
batch, mean ± std), throughput, peak memory, and — when the engine is not faster than
FP32 — why, from ONNX Runtime's profiler.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import onnx
import torch
from onnx import helper

from . import memory
from . import metrics as M
from .baseline import engine_peak_memory, first_sample, time_calls
from .engine import (build_dynamic_engine, build_fp16_engine, build_int8_engine, build_weight_only_engine, fp16_layers,
                     run_session, session)
from .graph import save_model
from .errors import ExportError
from .graph import prepare
from .scheme import ActivationSpec, Config, Scheme
from .simulate import SimPlan, Simulator, fake_quant
from .workload import Workload, run_model

Mode = Literal["int8", "dynamic", "fp16"]
Progress = Callable[[str], None]
QUANT_KERNELS = ("QLinear", "Integer", "QGemm", "QAttention", "DynamicQuantize", "MatMulNBits", "QuickGelu")


@dataclass
class LayerCheck:
    layer: str
    tensor: str
    sqnr_db: float
    max_err_steps: float
    frac_off_by_more_than_1: float
    agrees: bool


def _lat_text(lat: dict | None, default: float = float("nan")) -> str:
    """A ``baseline.Latency`` dict as the table prints it: median (IQR), "unstable" when flagged."""
    if not lat or "median_ms" not in lat:
        return f"{default:.3f}"
    return f"{lat['median_ms']:.3f} (IQR {lat['iqr_ms']:.3f})" + (" unstable" if lat.get("unstable") else "")


@dataclass
class ExportReport:
    mode: str
    fp32_metric: float
    fp32_onnx_metric: float
    engine_metric: float
    simulated_metric: float
    fp32_size_bytes: int
    int8_size_bytes: int
    fp32_latency_ms: float
    fp32_latency_std_ms: float
    int8_latency_ms: float
    int8_latency_std_ms: float
    float_layers: list[str]
    float_tensors: list[str]
    latency: dict[str, Any] = field(default_factory=dict)
    peak_memory_bytes: dict[str, int | None] = field(default_factory=dict)  # a fresh process loading and running each engine once
    peak_memory_note: str = ""  # why a peak memory is None
    layer_checks: list[dict[str, Any]] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    rewired_edges: list[list[str]] = field(default_factory=list)
    speed: dict[str, Any] = field(default_factory=dict)
    # model outputs on the evaluation set: SQNR (dB) of simulated vs engine, engine vs FP32 (ONNX),
    # simulated vs FP32, and margin_db = sim_vs_engine − engine_vs_fp32 (how far the simulation's
    # own error lies below the quantization error it predicts; ≥ 10 dB is the target)
    output_sqnr_db: dict[str, float] = field(default_factory=dict)
    # ONNX Runtime's session / quantize_static options picked by measurement (ort_options.OrtChoice):
    # chosen, every alternative tried (median ms, numerics vs the simulation), how to load the engine
    ort_options: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    fix_notes: list[str] = field(default_factory=list)
    weight_only: list[dict[str, Any]] = field(default_factory=list)  # MatMulNBits layers (engine.WeightOnlyLayer)
    timings_s: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def sim_engine_gap(self) -> float:
        return abs(self.simulated_metric - self.engine_metric)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sim_engine_gap"] = self.sim_engine_gap
        d["speedup_b1"] = self.fp32_latency_ms / self.int8_latency_ms if self.int8_latency_ms > 0 else None
        return d

    def table(self) -> str:
        lat = self.latency
        rows = [
            ("", "FP32", self.mode.upper() + " engine", "simulated"),
            ("metric", f"{self.fp32_onnx_metric:.3f}", f"{self.engine_metric:.3f}", f"{self.simulated_metric:.3f}"),
            ("size (MB)", f"{self.fp32_size_bytes / 1e6:.3f}", f"{self.int8_size_bytes / 1e6:.3f}", ""),
            ("latency b1 (ms, median)", _lat_text(lat.get("fp32_b1"), self.fp32_latency_ms),
             _lat_text(lat.get("engine_b1"), self.int8_latency_ms), ""),  # fmt: skip
        ]
        if "fp32_batch" in lat:
            b = lat["fp32_batch"]["batch"]
            rows.append((f"latency b{b} (ms/sample)", _lat_text(lat["fp32_batch"]), _lat_text(lat["engine_batch"]), ""))
            rows.append((f"throughput b{b} (/s)", f"{lat['fp32_batch']['throughput_per_s']:.0f}",
                         f"{lat['engine_batch']['throughput_per_s']:.0f}", ""))  # fmt: skip
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
        q = self.output_sqnr_db
        if q and q["margin_db"] is None:
            lines.append(f"output SQNR: simulated vs engine {q['sim_vs_engine']:.1f} dB; the engine's outputs equal FP32's "
                         "(no quantization error), so there is no margin to report")  # fmt: skip
        elif q:
            lines.append(f"output SQNR: simulated vs engine {q['sim_vs_engine']:.1f} dB, engine vs FP32 {q['engine_vs_fp32']:.1f} dB "
                         f"(margin {q['margin_db']:.1f} dB)")  # fmt: skip
        lines.append(f"float layers: {', '.join(self.float_layers) or 'none'}")
        if self.disagreements:
            lines.append(f"engine disagrees with the simulation on: {', '.join(self.disagreements)}")
        o = self.ort_options
        if o:
            tried = [t for t in o["tried"] if "median_ms" in t]
            lines.append(f"ONNX Runtime options (picked among {len(tried)} timed, {o['engine_builds']} extra build(s)): "
                         f"session {_fmt_opts(o['chosen']['session'])}; quantize_static {_fmt_opts(o['chosen']['build'])}")  # fmt: skip
        if self.speed.get("note"):
            lines.append(self.speed["note"])
        return "\n".join(lines)


def _fmt_opts(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _metric(wl: Workload, fn, sim: Simulator) -> tuple[float, torch.Tensor]:
    """``fn``'s outputs on the evaluation data, in chunks that fit the memory budget at one float
    run's live tensors per sample (whole batches when they fit), scored once."""
    outs = torch.cat([fn(x) for x in memory.chunks(wl.evaluation, lambda x: sim.footprint(x).float_live)])
    return wl.score(outs), outs


def _simulated(wl: Workload, sim: Simulator, plan: SimPlan) -> tuple[float, torch.Tensor]:
    outs = sim.outputs(wl.evaluation, plan)  # chunked by the budget (Simulator.outputs)
    return wl.score(outs), outs


def output_sqnr(fp32: torch.Tensor, engine: torch.Tensor, simulated: torch.Tensor) -> dict[str, float]:
    """SQNR (dB) between the three engines' outputs on the evaluation set; ``margin_db`` =
    sim_vs_engine − engine_vs_fp32: the simulation predicts the engine only where its own error
    is well below the quantization error. None where the engine equals FP32 (an all-float
    config): there is no quantization error to predict, and a "negative margin" against the
    capped 150 dB read as a failure (digits_vit's all-float config: −15.8 dB)."""
    d = {"sim_vs_engine": M.sqnr_db(engine, simulated), "engine_vs_fp32": M.sqnr_db(fp32, engine),
         "sim_vs_fp32": M.sqnr_db(fp32, simulated)}  # fmt: skip
    d["margin_db"] = None if d["engine_vs_fp32"] >= M.SQNR_CAP_DB else d["sim_vs_engine"] - d["engine_vs_fp32"]
    return d


def layer_checks(wl: Workload, sim: Simulator, plan: SimPlan, engine_path: Path, n_batches: int = 2) -> list[LayerCheck]:
    """Each quantized layer output of the engine against the simulation *given the engine's own
    inputs to that layer* (so a difference is the layer's, not inherited from upstream).

    Every tensor the engine dequantizes is exposed as an extra output of a debug copy; the
    simulator re-runs only the layer's node (and a ReLU fused into it) on those inputs.

    Memory: the layers are checked in groups whose engine tensors and kept simulated tensors fit
    half the memory budget at one sample (one group for small graphs); per group the engine hands
    back only that group's tensors and the simulated run keeps only what its re-runs read, and
    each batch runs in chunks that fit the budget (``memory.chunks``) at what one sample holds at
    once. Whole batches when they fit (the numbers of an unchunked run); the sums over chunks
    add up to those of the whole batch up to float rounding."""
    qg = sim.qg
    prog = qg.program
    m = onnx.load(str(engine_path))
    q_in = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    dq_of: dict[str, str] = {}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in q_in:
            src = q_in[n.input[0]]
            src = src[: -len("_QuantizeLinear_Input")] if src.endswith("_QuantizeLinear_Input") else src
            dq_of.setdefault(src, n.output[0])
    existing = {o.name for o in m.graph.output}
    # a weight-only layer reads a float tensor the engine never dequantizes: read it as is, so a
    # check through that layer starts from the engine's own input (not the simulation's upstream)
    produced = {o for n in m.graph.node for o in n.output}
    wo_inputs = {prog.nodes[l.node].inputs[0] for l in qg.layers if sim.layer_format(plan.config, l).kind == "w"}
    wo_inputs = {t for t in wo_inputs if t in produced and t not in dq_of}
    for name in [*dq_of.values(), *sorted(wo_inputs)]:
        if name not in existing:
            m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    tmp = engine_path.with_name(f".{engine_path.name}.debug-{os.getpid()}.onnx")
    try:
        save_model(m, tmp)
        sess = session(tmp, arena=False)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".data").unlink(missing_ok=True)
    out_names = [o.name for o in sess.get_outputs()]
    targets: list[tuple[str, str, set[int]]] = []  # (layer, quantized output tensor, nodes to run)
    def chain(l) -> set[int]:
        """The layer's node, and a weight-only MatMul feeding it (its output is never dequantized
        in the engine: the check starts from that MatMul's input)."""
        nodes = {l.node}
        for t in prog.nodes[l.node].inputs:
            p = prog.producer.get(t)
            if t and t not in dq_of and p in qg.by_node and sim.layer_format(plan.config, qg.by_node[p]).kind == "w":
                nodes.add(p)
        return nodes

    for l in qg.layers:
        base = chain(l)
        cands = [(l.output, base)] + [(o, base | {i}) for o, i in _activation_outputs(qg, l.output)]
        for t, nodes in cands:
            if t in dq_of:
                targets.append((l.name, t, nodes))
                break
    acc: dict[str, list] = defaultdict(lambda: [0.0, 0.0, 0.0, 0, 0])  # sig, noise, max steps, n off, n
    batches = wl.evaluation[:n_batches]
    if not batches or not targets:
        return []
    fp0 = sim.footprint(batches[0][0])

    # each check's tensors, once: the engine tensors it reads (its target and the inputs of its
    # nodes) and the simulated tensors its re-run reads
    exposed = set(dq_of) | wo_inputs
    needs = [(({t} | _inputs_of(prog, nodes)) & exposed, _inputs_of(prog, nodes) - set(prog.initializers)) for _, t, nodes in targets]

    def held(engine: set[str], read: set[str]) -> int:
        """Bytes per sample a group's checks hold besides a run's live tensors: the engine's
        exposed tensors twice (ONNX Runtime's buffers and the arrays it hands back; counted once,
        efficientnet_b0's layer checks peaked at 6.7 GB resident under a 2 GiB budget) and the
        simulated tensors kept for the re-runs."""
        return 2 * fp0.kept(engine) + fp0.kept(read)

    # the layers in groups whose exposed and kept tensors fit half the budget at one sample: one
    # engine run and one simulated run per group and chunk (swin_t exposes 0.6 GB a sample; all
    # at once, its checks grew the process by 1.3 GB on 2 images)
    groups: list[tuple[list, set[str], set[str]]] = [([], set(), set())]
    for tgt, (eng, rd) in zip(targets, needs):
        group, engine, read = groups[-1]
        if group and held(engine | eng, read | rd) > memory.current_budget() // 2:
            group, engine, read = [], set(), set()
            groups.append((group, engine, read))
        group.append(tgt)
        engine |= eng
        read |= rd
    with torch.inference_mode():
        for group, engine, read in groups:
            fetch_of = {t: dq_of.get(t, t) for t in engine}
            fetch = sorted(set(fetch_of.values()) & set(out_names))
            base = held(engine, read)

            def per_sample(x, base=base) -> int:
                fp = sim.footprint(x)
                # a run's own live tensors (the engine's and one simulated), and a layer's comparison
                # (its re-run output and fake-quantized copy, the float64 squares and the steps:
                # uncounted, resnet50's checks on 32 images peaked at 1.5 GB over the process's base)
                return base + fp.float_live + fp.live + 7 * fp.largest

            for x in memory.chunks(batches, per_sample):
                feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), x)}
                res = dict(zip(fetch, sess.run(fetch, feeds)))
                env = sim.run(dict(zip(qg.input_names, x)), plan, keep=read)
                engine_env = {t: torch.from_numpy(res[d]).float() for t, d in fetch_of.items() if d in res}
                del res
                for layer, t, nodes in group:
                    qp = sim.act_qparams(t)
                    if qp is None or t not in engine_env:
                        continue
                    local = {**env, **{k: v for k, v in engine_env.items() if k in _inputs_of(prog, nodes)}}
                    got = sim.run(dict(zip(qg.input_names, x)), plan, env=local, nodes=nodes, keep=True)
                    s = fake_quant(got[t], qp)
                    e = engine_env[t]
                    if e.shape != s.shape:
                        continue
                    steps = (e - s).abs() / float(qp.scale)
                    a = acc[layer]
                    a[0] += float((s.double() ** 2).sum())
                    a[1] += float(((s - e).double() ** 2).sum())
                    a[2] = max(a[2], float(steps.max()))
                    a[3] += int((steps > 1.01).sum())
                    a[4] += steps.numel()
                del env, engine_env
    out = []
    for layer, t, _ in targets:
        a = acc.get(layer)
        if not a or not a[4]:
            continue
        sq = M.SQNR_CAP_DB if a[1] <= 0 else min(M.SQNR_CAP_DB, 10 * math.log10(max(a[0], 1e-30) / a[1]))
        frac = a[3] / a[4]
        out.append(LayerCheck(layer, t, sq, a[2], frac, agrees=frac <= 0.01))
    return out


def _inputs_of(prog, nodes: set[int]) -> set[str]:
    return {i for n in nodes for i in prog.nodes[n].inputs if i}


def _activation_outputs(qg, t: str) -> list[tuple[str, int]]:
    """(output, node index) of the ReLU/Clip that ORT fuses into the producer of ``t``."""
    prog = qg.program
    return [(prog.nodes[c].outputs[0], c) for c in prog.consumers.get(t, ()) if prog.nodes[c].op in ("Relu", "Clip")]


def _speed_note(fp32_path: Path, engine_path: Path, x1, fp32_ms: float, q_ms: float, qg) -> dict[str, Any]:
    """Kernel time per op type and per layer, both engines (``speed.speed_report``); when the
    engine is not faster, ``note`` names the ops and layers that cost the time, in ms."""
    from .speed import speed_report

    rep = speed_report(fp32_path, engine_path, x1, qg, fp32_ms=fp32_ms, int8_ms=q_ms)
    d = rep.to_dict()
    ops = rep.by_op[rep.by_op["int8_us"] > 0]["op_type"]
    d["quantized_kernels"] = sorted(o for o in ops if any(k in o for k in QUANT_KERNELS))
    d["float_compute_kernels"] = sorted(o for o in ops if o in ("Conv", "Gemm", "MatMul", "ConvTranspose", "FusedConv", "FusedMatMul"))
    if q_ms >= fp32_ms:
        d["note"] = rep.explanation()
    return d


def export(
    wl: Workload,
    config: Config | None = None,
    out: Path | None = None,
    *,
    mode: Mode = "int8",
    progress: Progress | None = None,
    repeats: int = 30,
    check_layers: bool = True,
    tune_ort: bool = True,
) -> ExportReport:
    """Build and verify the engines for ``config``; files go to ``out``."""
    from .quantized import check_config, prepare_simulator

    config = config or Config()
    say = progress or (lambda m: None)
    if out is None:
        raise ExportError("export needs an output folder")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    say("exporting to ONNX and reading ONNX Runtime's quantization plan")
    qg = prepare(wl, config.scheme, progress=say)
    check_config(config, qg)
    timings["export_and_plan"] = time.perf_counter() - t
    t = time.perf_counter()
    say(f"calibrating ({'weight-only' if config.scheme.weight_only else config.scheme.act.calibration})" + (f" and applying {', '.join(config.fixes)}" if config.fixes else ""))
    scheme = config.scheme
    if mode == "dynamic":
        scheme = Scheme(weights=scheme.weights, activations=ActivationSpec(**{**scheme.act.__dict__, "dynamic": True}))
    sim_config = Config(scheme=scheme, layers=config.layers, fixes=config.fixes)
    original = qg
    sim, _, fix_notes, _ = prepare_simulator(wl, qg, sim_config, progress=say)
    qg = sim.qg  # the fixed graph: its weights are what the engine carries
    if mode == "fp16":
        sim_config = Config(scheme=scheme, layers={l.name: "fp16" for l in qg.layers})
    plan = sim.plan(sim_config)
    timings["calibration"] = time.perf_counter() - t

    fp32_path = out / "model_fp32.onnx"  # the original float model: the FP32 reference
    tmp = fp32_path.with_name(f".{fp32_path.name}.tmp-{os.getpid()}")
    data = original.float_path.with_name(original.float_path.name + ".data")
    if data.exists():  # over 2 GB: the weights beside the model, under the name the model records
        onnx.save_model(onnx.load(str(original.float_path)), str(tmp), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=fp32_path.name + ".data", size_threshold=1024)  # fmt: skip
    else:
        shutil.copyfile(original.float_path, tmp)
    os.replace(tmp, fp32_path)
    t = time.perf_counter()
    say(f"building the {mode} engine")
    build, wo_layers = None, []
    weight_only = mode == "int8" and any(sim.layer_format(sim_config, l).kind == "w" for l in qg.layers)
    if weight_only:  # MatMulNBits for the weight-only layers (QDQ for the static ones, if any)
        eng_path = out / "model_int8.onnx"
        build, wo_layers = build_weight_only_engine(qg, sim, plan, eng_path, wl.calibration[0])
    elif mode == "int8":
        eng_path = out / "model_int8.onnx"
        build = build_int8_engine(qg, sim, plan, eng_path, wl.calibration[0])
    elif mode == "dynamic":
        float_nodes = [l.node_name for l in qg.layers if sim.weight_bits(sim_config, l) is None]
        eng_path = build_dynamic_engine(qg.float_path, out / "model_int8.onnx", float_nodes, fp16_layers(qg, sim, plan))
    elif mode == "fp16":
        eng_path = build_fp16_engine(qg.float_path, out / "model_fp16.onnx")
    else:
        raise ExportError(f"unknown export mode {mode!r}; choose int8, dynamic or fp16")
    timings["engine_build"] = time.perf_counter() - t

    ort_choice, eng_opts, fp32_opts = None, None, None
    if tune_ort:
        from .ort_options import choose

        t = time.perf_counter()
        check = tuple(v[:8] for v in wl.evaluation[0][0])
        with torch.inference_mode():
            ref = sim.output(sim.run(dict(zip(qg.input_names, check)), plan))
        memory.release(0)  # the engine build's and this run's freed tensors (efficientnet_b0: 0.9 GB)
        builds: dict[Path, Any] = {}

        def rebuild(opts: dict[str, Any], path: Path) -> Path:
            builds[path] = build_int8_engine(qg, sim, plan, path, wl.calibration[0], opts)
            return path

        static = mode == "int8" and not weight_only
        ort_choice, chosen = choose(eng_path, rebuild if static else None, first_sample(check), check, ref,
                                    repeats=max(10, repeats), progress=say)  # fmt: skip
        if chosen != eng_path:
            build = builds[chosen]
            os.replace(chosen, eng_path)
            build.path = eng_path
        eng_opts = ort_choice.session
        # FP32 runs with the same threads and spinning (a fair comparison) at its own best level
        fp32_opts = {k: v for k, v in eng_opts.items() if k != "graph_optimization_level"}
        timings["ort_options"] = time.perf_counter() - t

    t = time.perf_counter()
    say("verifying: FP32 (PyTorch, ONNX), simulated and engine metrics")
    with torch.inference_mode():
        torch_metric, _ = _metric(wl, lambda x: run_model(wl.model, x), sim)
    # sessions without an arena score the data (an arena would hold a batch's tensors to the end)
    fp32_sess = session(fp32_path, options=fp32_opts, arena=False)
    eng_sess = session(eng_path, options=eng_opts, arena=False)
    onnx_metric, fp32_outs = _metric(wl, lambda x: run_session(fp32_sess, x), sim)
    engine_metric, engine_outs = _metric(wl, lambda x: run_session(eng_sess, x), sim)
    del fp32_sess, eng_sess
    memory.release(0)
    sim_metric, sim_outs = _simulated(wl, sim, plan)
    memory.release(0)
    out_sqnr = output_sqnr(fp32_outs, engine_outs, sim_outs)
    checks: list[LayerCheck] = []
    if mode == "int8" and check_layers and (build is not None):
        say("comparing the engine's layer outputs with the simulation")
        checks = layer_checks(wl, sim, plan, eng_path)
    memory.release(0)  # the checks' freed tensors, before the timing sessions allocate theirs
    timings["verification"] = time.perf_counter() - t

    t = time.perf_counter()
    say("timing FP32 and engine (batch 1 and a full batch)")
    xb = wl.evaluation[0][0]
    x1 = first_sample(xb)
    nb = int(xb[0].shape[0])
    lat = {}
    # one engine's session at a time: its arena holds a full batch's activations (swin_v2_t, 16
    # images: both sessions, then the profiler's, took the export to 4.3 GB)
    for name, path, opts in (("fp32", fp32_path, fp32_opts), ("engine", eng_path, eng_opts)):
        sess = session(path, options=opts)
        lat[f"{name}_b1"] = time_calls(lambda: run_session(sess, x1), 1, repeats=repeats)
        lat[f"{name}_batch"] = time_calls(lambda: run_session(sess, xb), nb, repeats=max(5, repeats // 3))
        del sess
        memory.release(0)
    peaks = {"fp32": engine_peak_memory(fp32_path, xb), "engine": engine_peak_memory(eng_path, xb)}
    mem = {k: p.bytes for k, p in peaks.items()}
    speed = _speed_note(fp32_path, eng_path, x1, lat["fp32_b1"].median_ms, lat["engine_b1"].median_ms, qg)
    timings["timing"] = time.perf_counter() - t
    float_layers = [l.name for l in qg.layers if sim.weight_bits(sim_config, l) is None]
    rep = ExportReport(
        mode="weight-only" if weight_only and build is None else ("int8+weight-only" if weight_only else mode),
        fp32_metric=torch_metric,
        fp32_onnx_metric=onnx_metric,
        engine_metric=engine_metric,
        simulated_metric=sim_metric,
        fp32_size_bytes=os.path.getsize(fp32_path),
        int8_size_bytes=os.path.getsize(eng_path),
        fp32_latency_ms=lat["fp32_b1"].median_ms,
        fp32_latency_std_ms=lat["fp32_b1"].std_ms,
        int8_latency_ms=lat["engine_b1"].median_ms,
        int8_latency_std_ms=lat["engine_b1"].std_ms,
        float_layers=float_layers,
        float_tensors=plan.float_tensors(qg) if mode == "int8" else [],
        latency={k: v.to_dict() for k, v in lat.items()},
        peak_memory_bytes=mem,
        peak_memory_note="; ".join(dict.fromkeys(f"{k}: {p.note}" for k, p in peaks.items() if p.note)),
        layer_checks=[asdict(c) for c in checks],
        disagreements=sorted({c.layer for c in checks if not c.agrees} | ({f"{n} ({t})" for n, t in build.missing_edges} if build else set())),
        rewired_edges=[list(e) for e in build.rewired_edges] if build else [],
        speed=speed,
        output_sqnr_db=out_sqnr,
        ort_options={**ort_choice.to_dict(), "fp32_session": fp32_opts} if ort_choice else {},
        config=sim_config.to_dict(),
        fix_notes=fix_notes,
        weight_only=[asdict(w) for w in wo_layers],
        timings_s=timings,
        files={"fp32": fp32_path.name, "engine": eng_path.name},
    )
    return rep

