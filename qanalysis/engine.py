"""ONNX Runtime engines: sessions, the INT8 engine of a config, verification, profiling.

``build_int8_engine`` produces the deployable QDQ model through ONNX Runtime's own
``quantize_static`` — with the simulation's scales and zero points passed as
``TensorQuantOverrides`` (no second calibration) and the float layers in
``nodes_to_exclude`` — and then makes the tensors agree with the simulation's plan:
ORT leaves the Q/DQ pair a quantized producer puts on its output even when the consumer is
excluded, so such edges are rewired to the float tensor (re-creating a ReLU that ORT had
fused into the producer when needed). The result: a layer kept in float reads a float
input and float weights, exactly as simulated.

A layer kept in ``fp16`` is stored in half precision for real: its weights, constants and
bias are FLOAT16 initializers, each read through a ``Cast`` to float, and its quantized-in-int8
inputs are rounded to half (``Cast`` to FLOAT16 and back), because ONNX Runtime's CPU
provider has no half-precision Conv/Gemm kernels on x86. That is the simulation's arithmetic
exactly (``simulate.py``: inputs and weights rounded to half, the op in float):
x̂ = float(half(x)), ŵ = float(half(w)).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from .errors import ExportError
from .workload import Inputs


# The session options ``session_options`` understands (``ort_options`` picks them by measurement).
OPT_LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC", "ORT_DISABLE_ALL")


def session_options(options: Mapping[str, Any] | None = None) -> ort.SessionOptions:
    """``{"graph_optimization_level": "ORT_ENABLE_EXTENDED", "intra_op_num_threads": 1,
    "allow_spinning": False}`` → ``ort.SessionOptions``; a missing key keeps ORT's default."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    o = dict(options or {})
    level = o.pop("graph_optimization_level", None)
    if level is not None:
        if level not in OPT_LEVELS:
            raise ExportError(f"unknown graph_optimization_level {level!r}; choose one of {', '.join(OPT_LEVELS)}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    threads = o.pop("intra_op_num_threads", None)
    if threads:
        so.intra_op_num_threads = int(threads)
    spin = o.pop("allow_spinning", None)
    if spin is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if o:
        raise ExportError(f"unknown session option(s) {', '.join(sorted(o))}")
    return so


def session(path: str | Path, *, threads: int | None = None, profile: bool = False,
            profile_prefix: str | None = None, options: Mapping[str, Any] | None = None,
            arena: bool = True) -> ort.InferenceSession:  # fmt: skip
    """An ONNX Runtime CPU session with ``options`` (``session_options``). ``arena=False``: each
    run's tensors are freed when it ends (the default arena keeps its largest run's memory for the
    session's life: right for timing, a waste for a session that scores the evaluation data once)."""
    so = session_options(options)
    if not arena:
        so.enable_cpu_mem_arena = False
    if threads:
        so.intra_op_num_threads = threads
    if profile:
        so.enable_profiling = True
        if profile_prefix:
            so.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ONNX Runtime cannot load {Path(path).name}: {str(e).splitlines()[0][:300]}") from None


def run_session(sess: ort.InferenceSession, inputs: Inputs) -> torch.Tensor:
    names = [i.name for i in sess.get_inputs()]
    feeds: Mapping[str, np.ndarray] = {n: t.numpy() for n, t in zip(names, inputs)}
    return torch.from_numpy(np.asarray(sess.run(None, feeds)[0])).float()


# --------------------------------------------------------------------------- building


@dataclass
class EngineBuild:
    path: Path
    excluded_nodes: list[str]
    rewired_edges: list[tuple[str, str]]  # (consumer node, tensor) that read float instead of Q/DQ
    missing_edges: list[tuple[str, str]]  # quantized in the simulation, not in the engine
    quantized_tensors: list[str]


def _np_zero_point(z: int, symmetric: bool) -> np.ndarray:
    return np.array(z, dtype=np.int8 if symmetric else np.uint8)


def _overrides(sim, plan, s8_activations: bool = False) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides: every quantized tensor's (scale, zero point) from the simulation.
    ``s8_activations``: an asymmetric uint8 grid written as int8 with the zero point shifted by
    128, the same grid: s·(q − z) = s·((q − 128) − (z − 128))."""
    a = sim.scheme.act
    out: dict[str, list[dict[str, Any]]] = {}
    # every tensor that shares an owner's grid, not only the owners: with some layers float or
    # weight-only, ORT may quantize a tensor (a Transpose's output) whose owner it leaves float,
    # and without an override it would take its own calibrated range, not the simulation's
    owners = set(sim.qg.act_owner.values()) | set(sim.qg.act_owner)
    shift = 128 if s8_activations and not a.symmetric else 0
    for t in sorted(owners):
        qp = sim.act_qparams(t)
        if qp is None:
            continue
        z = _np_zero_point(int(qp.zero_point) - shift, a.symmetric or shift > 0)
        out[t] = [{"scale": np.array(float(qp.scale), dtype=np.float32), "zero_point": z}]
    w_sym = sim.scheme.weights.symmetric
    for name, qp in sim.weight_qparams_override.items():  # exact weight grids (AdaRound)
        if qp.group is not None:  # a MatMulNBits block grid (GPTQ): written by build_weight_only_engine
            continue
        zdt = np.int8 if w_sym else np.uint8
        if qp.axis is not None and qp.scale.dim() == 1:
            chans = [{"scale": np.array(float(s), dtype=np.float32), "zero_point": np.array(int(z), dtype=zdt)}
                     for s, z in zip(qp.scale.tolist(), qp.zero_point.tolist())]  # fmt: skip
            chans[0]["axis"] = int(qp.axis)
            out[name] = chans
        else:
            out[name] = [{"scale": np.array(float(qp.scale), dtype=np.float32), "zero_point": np.array(int(qp.zero_point), dtype=zdt)}]
    return out


def check_engine_scheme(scheme, plan, sim) -> None:
    w, a = scheme.weights, scheme.act
    static = [l for l in sim.qg.layers if sim.is_static(plan.config, l)]
    if scheme.weight_only and not static:
        return  # weight-only layers are MatMulNBits (build_weight_only_engine), the rest float
    int4 = [l.name for l in static if sim.weight_bits(plan.config, l) != 8]
    if (w.bits != 8 and not scheme.weight_only) or int4:
        names = f" (layers {', '.join(int4[:5])})" if int4 and w.bits == 8 else ""
        raise ExportError(
            f"{w.bits if w.bits != 8 else 4}-bit weights{names} are simulated only: ONNX Runtime's CPU engine has no "
            "static int4 Conv/MatMul kernels; export with 8-bit weights or keep those layers in fp16"
        )
    if a.bits != 8:
        raise ExportError(f"{a.bits}-bit activations are simulated only: the ONNX Runtime engine runs 8-bit activations")
    if not isinstance(w.granularity, str):
        raise ExportError(
            "group-wise weights are simulated only for static engines (ONNX Runtime's block-wise kernels are "
            "weight-only MatMulNBits); export per-channel or per-tensor"
        )


# quantize_static options that change speed, not numbers (``ort_options`` picks them):
# "activation_type": "QUInt8" | "QInt8" (an asymmetric grid either way, see ``_overrides``),
# "DedicatedQDQPair": one Q/DQ pair per consumer instead of one shared pair.
BUILD_OPTIONS = ("activation_type", "DedicatedQDQPair")


def build_int8_engine(qg, sim, plan, out_path: Path, calib: Inputs, options: Mapping[str, Any] | None = None) -> EngineBuild:
    """The QDQ engine of ``plan`` (a SimPlan) via quantize_static, made tensor-exact;
    ``options``: see BUILD_OPTIONS."""
    from onnxruntime.quantization import QuantType

    from .graph import ort_quantize

    o = dict(options or {})
    unknown = sorted(set(o) - set(BUILD_OPTIONS))
    if unknown:
        raise ExportError(f"unknown build option(s) {', '.join(unknown)}; known: {', '.join(BUILD_OPTIONS)}")
    s8 = o.get("activation_type", "QUInt8") == "QInt8"
    extra: dict[str, Any] = {"TensorQuantOverrides": _overrides(sim, plan, s8_activations=s8)}
    if o.get("DedicatedQDQPair"):
        extra["DedicatedQDQPair"] = True
    kw = {"activation_type": QuantType.QInt8} if s8 else {}

    check_engine_scheme(sim.scheme, plan, sim)
    prog = qg.program
    float_nodes = [l.node_name for l in qg.layers if not sim.is_static(plan.config, l)]  # weight-only ones too
    tmp = out_path.with_name(f".{out_path.name}.ort-{os.getpid()}.onnx")
    # every quantized tensor's range comes from TensorQuantOverrides (the simulation's), so ORT's
    # own calibration pass needs one sample, not a batch: it runs a copy of the graph with every
    # tensor as an output and keeps them all (efficientnet_b0, 32 images: +1.5 GB resident)
    calib = tuple(t[:1] for t in calib)
    try:
        ort_quantize(
            qg.float_path, tmp, qg.input_names, [calib], sim.scheme,
            nodes_to_exclude=float_nodes, extra_options=extra, **kw,
        )  # fmt: skip
        model = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    rewired, missing = _align_with_plan(model, prog, qg, plan)
    _restore_float_weights(model, prog, qg, sim, plan)
    store_fp16(model, fp16_layers(qg, sim, plan))
    _prune(model)
    quantized = sorted({n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"})
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the INT8 engine failed ONNX's checker: {str(e).splitlines()[0][:300]}") from None
    _atomic_save(model, out_path)
    return EngineBuild(out_path, float_nodes, rewired, missing, quantized)


def _atomic_save(model: onnx.ModelProto, path: Path) -> None:
    """Write ``path`` through a temporary name; a model over 2 GB gets ``path.data`` beside it."""
    from .graph import is_large

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if is_large(model):
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)  # fmt: skip
        else:
            onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _align_with_plan(model: onnx.ModelProto, prog, qg, plan) -> tuple[list, list]:
    """Rewire engine edges the plan keeps float; report edges the plan quantizes but ORT does not."""
    g = model.graph
    q_in = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    dq_src = {n.output[0]: q_in[n.input[0]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in q_in}
    float_by_name = {n.name: n for n in prog.nodes}
    engine_names = {n.name for n in g.node}
    outputs = {o.name for o in g.output}
    new_nodes: list[onnx.NodeProto] = []
    made: dict[str, str] = {}
    rewired, missing = [], []

    def orig(t: str) -> str:
        return t[: -len("_QuantizeLinear_Input")] if t.endswith("_QuantizeLinear_Input") else t

    def float_source(raw: str) -> str:
        """The engine tensor holding the float value of float-graph tensor ``t``."""
        t = orig(raw)
        p = prog.producer.get(t)
        if p is not None and prog.nodes[p].op in ("Relu", "Clip") and prog.nodes[p].name not in engine_names:
            # ORT fused this activation into its producer (whose output now carries ``t``'s name)
            if t not in made:
                fn = prog.nodes[p]
                extra = [i for i in fn.inputs[1:]]
                node = helper.make_node(fn.op, [raw, *extra], [f"{t}_float"], name=f"{fn.name}_float")
                for k, v in fn.attrs.items():
                    node.attribute.append(helper.make_attribute(k, v))
                new_nodes.append(node)
                for i in extra:
                    if i and i in prog.initializers and not any(x.name == i for x in g.initializer):
                        g.initializer.append(onnx.numpy_helper.from_array(prog.initializers[i].numpy(), i))
                made[t] = f"{t}_float"
            return made[t]
        return raw

    seen_edges = set()
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        fn = float_by_name.get(n.name)
        if fn is None:
            continue
        for pos, name in enumerate(n.input):
            if name in dq_src:
                seen_edges.add((fn.index, pos))
                key = plan.edges.get((fn.index, pos))
                if key is None or key[0] not in ("q", "dyn"):  # float (fp16: rounded to half in store_fp16)
                    n.input[pos] = float_source(dq_src[name])
                    rewired.append((n.name, orig(dq_src[name])))
    for (i, pos), key in plan.edges.items():
        if key is not None and (i, pos) not in seen_edges and key[0] == "q":
            missing.append((prog.nodes[i].name, prog.nodes[i].inputs[pos]))
    # graph outputs ORT quantized but the plan keeps float
    for n in list(g.node):
        if n.op_type == "DequantizeLinear" and n.output[0] in outputs and n.input[0] in q_in:
            t = n.output[0]
            if t not in plan.outputs:
                raw = q_in[n.input[0]]
                for m in g.node:
                    for k, o in enumerate(m.output):
                        if o == raw:
                            m.output[k] = t
                for m in g.node:
                    if m.op_type == "QuantizeLinear" and m.input[0] == t and m.output[0] == n.input[0]:
                        m.input[0] = f"{t}__unused"
                n.output[0] = f"{t}__dq_unused"
    g.node.extend(new_nodes)
    _toposort(g)
    return rewired, missing


def _restore_float_weights(model, prog, qg, sim, plan) -> None:
    """A float layer's weights must be float in the engine, even if shared with a quantized one."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    dq_of_init = {n.output[0]: n.input[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    for l in qg.layers:
        if sim.is_static(plan.config, l):
            continue
        node = next((n for n in g.node if n.name == l.node_name), None)
        if node is None:
            continue
        for pos, name in enumerate(node.input):
            if name in dq_of_init:
                fname = prog.nodes[l.node].inputs[pos]
                if fname not in inits:
                    g.initializer.append(onnx.numpy_helper.from_array(prog.initializers[fname].numpy(), fname))
                    inits.add(fname)
                node.input[pos] = fname


@dataclass(frozen=True)
class Fp16Node:
    """What an ``fp16`` layer's node stores in half: input positions rounded to half (the
    activations), and input positions whose initializer is stored as FLOAT16."""

    inputs: tuple[int, ...]
    initializers: tuple[int, ...]


def fp16_layers(qg, sim, plan) -> dict[str, Fp16Node]:
    """ONNX node name → the half-precision tensors of the plan's ``fp16`` layers."""
    out: dict[str, Fp16Node] = {}
    for l in qg.layers:
        if sim.layer_format(plan.config, l).kind != "fp16":
            continue
        acts = tuple(sorted(p for (i, p), k in plan.edges.items() if i == l.node and k and k[0] == "fp16"))
        consts = [*l.weights, *l.consts, *([l.bias] if l.bias else [])]
        inits = tuple(sorted(p for p, name in consts if (plan.weights.get(name) or (None,))[0] == "fp16"))
        if acts or inits:
            out[l.node_name] = Fp16Node(acts, inits)
    return out


def fp16_extra_bytes(layer, program) -> int:
    """Bytes an ``fp16`` layer adds to the all-INT8 engine, as ``store_fp16`` stores it: each
    weight and constant element 2 bytes instead of 1 (int8), each bias element 2 bytes instead
    of 4 (int32). Per-channel scales and the Cast nodes (tens of bytes) are left out."""
    def n(name: str) -> int:
        return int(program.initializers[name].numel()) if name in program.initializers else 0

    wc = sum(n(w) for _, w in [*layer.weights, *layer.consts])
    b = n(layer.bias[1]) if layer.bias else 0
    return wc * (2 - 1) + b * (2 - 4)


def store_fp16(model: onnx.ModelProto, nodes: Mapping[str, Fp16Node]) -> None:
    """Store ``nodes``' initializers as FLOAT16 (read through ``Cast`` to float) and round their
    inputs to half (``Cast`` to FLOAT16 and back): ŵ = float(half(w)), x̂ = float(half(x))."""
    if not nodes:
        return
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    made: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(src: str, dst: str, to: int) -> None:
        new_nodes.append(helper.make_node("Cast", [src], [dst], name=f"{dst}_cast", to=to))

    for n in g.node:
        spec = nodes.get(n.name)
        if spec is None:
            continue
        for pos in spec.initializers:
            name = n.input[pos]
            t = inits.get(name)
            if t is None or t.data_type != onnx.TensorProto.FLOAT:
                raise ExportError(f"cannot store {name!r} of node {n.name} in fp16: it is not a float initializer of the engine")
            key = f"init:{name}"
            if key not in made:
                half = onnx.numpy_helper.to_array(t).astype(np.float16)
                g.initializer.append(onnx.numpy_helper.from_array(half, f"{name}_fp16"))
                cast(f"{name}_fp16", f"{name}_fp16_float", onnx.TensorProto.FLOAT)
                made[key] = f"{name}_fp16_float"
            n.input[pos] = made[key]
        for pos in spec.inputs:
            name = n.input[pos]
            key = f"act:{name}"
            if key not in made:
                cast(name, f"{name}_to_fp16", onnx.TensorProto.FLOAT16)
                cast(f"{name}_to_fp16", f"{name}_fp16_float", onnx.TensorProto.FLOAT)
                made[key] = f"{name}_fp16_float"
            n.input[pos] = made[key]
    g.node.extend(new_nodes)
    _toposort(g)


def _prune(model: onnx.ModelProto) -> None:
    g = model.graph
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def _toposort(g: onnx.GraphProto) -> None:
    produced = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    nodes, order = list(g.node), []
    pending = nodes
    while pending:
        progress, rest = False, []
        for n in pending:
            if all(i in produced for i in n.input):
                order.append(n)
                produced.update(n.output)
                progress = True
            else:
                rest.append(n)
        if not progress:
            order += rest
            break
        pending = rest
    del g.node[:]
    g.node.extend(order)


def build_dynamic_engine(float_path: Path, out_path: Path, float_nodes: list[str] | None = None,
                         fp16: Mapping[str, Fp16Node] | None = None) -> Path:  # fmt: skip
    """Weights-only INT8 for MatMul/Gemm-heavy models (activations quantized at run time);
    ``float_nodes`` (the config's float layers) are left in float, ``fp16`` ones stored in half."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .graph import quiet

    # quantize_dynamic first rewrites every Gemm into ``<name>_MatMul`` + ``<name>_Add``
    # (onnx_model.replace_gemm_with_matmul): exclude those names too, or a float Gemm is quantized
    excluded = [f"{n}{suf}" for n in float_nodes or [] for suf in ("", "_MatMul", "_Add")]
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}.onnx")
    try:
        with quiet():
            try:
                quantize_dynamic(str(float_path), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                                 nodes_to_exclude=excluded)  # fmt: skip
            except Exception as e:  # noqa: BLE001
                raise ExportError(f"ONNX Runtime's quantize_dynamic failed: {str(e).splitlines()[0][:300]}") from None
        m = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    if fp16:
        names = {n.name for n in m.graph.node}
        spec: dict[str, Fp16Node] = {}
        for name, f in fp16.items():
            if name in names or f"{name}_MatMul" not in names:
                spec[name] = f
                continue
            # a Gemm rewritten as MatMul(A, Bᵀ) + Add(·, C): positions 0, 1 → MatMul; 2 → Add
            spec[f"{name}_MatMul"] = Fp16Node(tuple(p for p in f.inputs if p == 0), tuple(p for p in f.initializers if p == 1))
            if 2 in f.initializers and f"{name}_Add" in names:
                spec[f"{name}_Add"] = Fp16Node((), (1,))
        store_fp16(m, spec)
        _prune(m)
    _atomic_save(m, out_path)
    return out_path


def build_fp16_engine(float_path: Path, out_path: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from .graph import quiet

    with quiet():
        try:
            m = convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"FP16 conversion failed: {str(e).splitlines()[0][:300]}") from None
    _atomic_save(m, out_path)
    return out_path


# --------------------------------------------------------------------------- profiling


@dataclass
class NodeTime:
    node: str
    op_type: str
    provider: str
    us: float  # median per run
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


def profile_nodes(path: Path, inputs: Inputs, runs: int = 10) -> list[NodeTime]:
    """Per-node kernel time (µs per run) from ONNX Runtime's profiler, with each node's
    inputs/outputs read from the optimized graph ORT actually ran (fused nodes included)."""
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(d) / "prof")
        so.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        try:
            sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"ONNX Runtime cannot load {Path(path).name}: {str(e).splitlines()[0][:300]}") from None
        for _ in range(3 + runs):
            run_session(sess, inputs)
        f = sess.end_profiling()
        events = json.loads(Path(f).read_text())
        io: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        opt = Path(d) / "optimized.onnx"
        if opt.exists():
            for n in onnx.load(str(opt), load_external_data=False).graph.node:
                io[n.name] = (tuple(n.input), tuple(n.output))
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        acc[(e["name"][: -len("_kernel_time")], args.get("op_name", "?"), args.get("provider", "?"))].append(float(e.get("dur", 0)))
    out = []
    for (node, op, prov), durs in acc.items():
        durs = sorted(durs[-runs:])  # the median: one preempted run must not make a layer "slow"
        ins, outs = io.get(node, ((), ()))
        out.append(NodeTime(node, op, prov, durs[len(durs) // 2] if durs else 0.0, ins, outs))
    return sorted(out, key=lambda t: -t.us)


def attribute_to_layers(times: list[NodeTime], qg) -> dict[str, float]:
    """µs per run per layer (module) name. ORT renames what it fuses, so a kernel is matched by
    its node name (``node_Conv_12_token_3``), a weight or bias it reads (``conv1.weight_bias``),
    or the fused output it is named after (``relu_1_nchwc``). Q/DQ kernels go to "(boundary Q/DQ)"."""
    prog = qg.program
    keys: dict[str, str] = {}
    for l in qg.layers:
        keys[l.node_name] = l.name
        for _, w in l.weights:
            keys[w] = l.name
        if l.bias:
            keys[l.bias[1]] = l.name
        keys[l.output] = l.name
        for c in prog.consumers.get(l.output, ()):
            if prog.nodes[c].op in ("Relu", "Clip"):
                keys[prog.nodes[c].outputs[0]] = l.name
    ordered = sorted(keys, key=len, reverse=True)

    def match(name: str) -> str | None:
        if name in keys:
            return keys[name]
        for k in ordered:
            if name.startswith(k + "_"):
                return keys[k]
        return None

    out: dict[str, float] = defaultdict(float)
    for t in times:
        if t.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            out["(boundary Q/DQ)"] += t.us
            continue
        layer = match(t.node) or next((keys[i] for i in t.inputs if i in keys and i in prog.initializers), None)
        out[layer or f"(other) {t.op_type}"] += t.us
    return dict(out)


# --------------------------------------------------------------------------- weight-only


@dataclass
class WeightOnlyLayer:
    """One MatMulNBits node of a weight-only engine and how its weight was written."""

    layer: str
    node: str  # the MatMulNBits node
    bits: int
    block_size: int
    symmetric: bool
    k: int
    n: int
    ort_identical: bool  # ORT's own quantizer produced the very same integers, scales and zero points


def _gemm_to_matmul(model: onnx.ModelProto, node_name: str) -> str:
    """Rewrite Gemm ``node_name`` (transA = 0, alpha = beta = 1) as MatMul(A, W[K, N]) (+ Add(·, C)),
    the form MatMulNBits quantizes; returns the MatMul's name. W is transposed when transB = 1."""
    g = model.graph
    node = next(n for n in g.node if n.name == node_name)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inits = {t.name: t for t in g.initializer}
    w = onnx.numpy_helper.to_array(inits[node.input[1]])
    if attrs.get("transB", 0):
        w = np.ascontiguousarray(w.T)
    wname = f"{node.input[1]}_kn"
    g.initializer.append(onnx.numpy_helper.from_array(w.astype(np.float32), wname))
    has_c = len(node.input) > 2 and node.input[2]
    mm_out = f"{node.output[0]}_matmul" if has_c else node.output[0]
    new = [helper.make_node("MatMul", [node.input[0], wname], [mm_out], name=f"{node_name}_MatMul")]
    if has_c:
        new.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node_name}_Add"))
    idx = list(g.node).index(node)
    g.node.remove(node)
    for k, n in enumerate(new):
        g.node.insert(idx + k, n)
    return f"{node_name}_MatMul"


def build_weight_only_engine(qg, sim, plan, out_path: Path, calib: Inputs) -> tuple[EngineBuild | None, list[WeightOnlyLayer]]:
    """The engine of a plan with weight-only layers: MatMulNBits for them, through ONNX Runtime's
    own ``MatMulNBitsQuantizer`` (accuracy_level 0: float32 compute), with the simulation's very
    integers, scales and zero points written into its initializers; the statically quantized
    layers of the plan (if any) are built first as QDQ (``build_int8_engine``, weight-only layers
    excluded there, so they stay float MatMuls until MatMulNBits replaces them); fp16 layers are
    stored in half. ``ort_identical`` says per layer whether ORT's RTN gave the same integers
    (it must, unless a fix such as GPTQ chose them)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from .graph import quiet

    config = plan.config
    wo = [l for l in qg.layers if sim.layer_format(config, l).kind == "w"]
    if not wo:
        raise ExportError("the config has no weight-only layer")
    bad = sorted({sim.layer_format(config, l).bits for l in wo} - {4, 8})
    if bad:
        raise ExportError(f"{bad[0]}-bit weight-only layers are simulated only: ONNX Runtime's MatMulNBits engines "
                          "are built for 4- and 8-bit weights")  # fmt: skip
    build = None
    if any(sim.is_static(config, l) for l in qg.layers):
        tmp = out_path.with_name(f".{out_path.name}.qdq-{os.getpid()}.onnx")
        try:
            build = build_int8_engine(qg, sim, plan, tmp, calib)
            model = onnx.load(str(tmp))
        finally:
            tmp.unlink(missing_ok=True)
    else:
        model = onnx.load(str(qg.float_path))
        store_fp16(model, fp16_layers(qg, sim, plan))
    # the node MatMulNBits replaces, per layer; Gemms become MatMul (+ Add) first
    target: dict[str, str] = {}
    for l in wo:
        target[l.name] = _gemm_to_matmul(model, l.node_name) if sim.layout(l) == "nk" and qg.program.nodes[l.node].op == "Gemm" else l.node_name
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    sym = sim.scheme.weights.symmetric

    def fmt(l) -> tuple[int, int]:  # (bits, block): a layer's own block ("w4g128") or the scheme's
        f = sim.layer_format(config, l)
        return f.bits, f.block or sim.scheme.block_size()

    out: list[WeightOnlyLayer] = []
    for bits, block in sorted({fmt(l) for l in wo}):
        mine = {target[l.name] for l in wo if fmt(l) == (bits, block)}
        q = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=sym, accuracy_level=None,
                                 nodes_to_exclude=[n for n in matmuls if n not in mine])  # fmt: skip
        with quiet():
            try:
                q.process()
            except Exception as e:  # noqa: BLE001
                raise ExportError(f"ONNX Runtime's MatMulNBits quantizer failed: {str(e).splitlines()[0][:300]}") from None
        model = q.model.model
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = {n.name: n for n in g.node}
    for l in wo:
        bits, block = fmt(l)
        wname = qg.program.nodes[l.node].inputs[1]
        node = nodes.get(f"{target[l.name]}_Q{bits}")
        if node is None or node.op_type != "MatMulNBits":
            raise ExportError(f"ONNX Runtime's quantizer left layer {l.name} without a MatMulNBits node")
        b, s, z = sim.block_quant(plan, wname).packed()
        ort_b = onnx.numpy_helper.to_array(inits[node.input[1]])
        ort_s = onnx.numpy_helper.to_array(inits[node.input[2]])
        ort_z = onnx.numpy_helper.to_array(inits[node.input[3]]) if len(node.input) > 3 and node.input[3] else None
        same = (ort_b.shape == b.shape and np.array_equal(ort_b, b) and np.array_equal(ort_s.reshape(s.shape), s)
                and (z is None) == (ort_z is None) and (z is None or np.array_equal(ort_z.reshape(z.shape), z)))  # fmt: skip
        inits[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(b.reshape(ort_b.shape), node.input[1]))
        inits[node.input[2]].CopyFrom(onnx.numpy_helper.from_array(s.reshape(ort_s.shape), node.input[2]))
        if z is not None:
            inits[node.input[3]].CopyFrom(onnx.numpy_helper.from_array(z.reshape(ort_z.shape), node.input[3]))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out.append(WeightOnlyLayer(l.name, node.name, bits, int(attrs["block_size"]), sym, int(attrs["K"]), int(attrs["N"]), bool(same)))
    _prune(model)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the weight-only engine failed ONNX's checker: {str(e).splitlines()[0][:300]}") from None
    _atomic_save(model, out_path)
    return build, out
