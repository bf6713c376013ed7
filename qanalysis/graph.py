"""The quantizable layers, in execution order, as ONNX Runtime will see them.

``prepare(workload)`` does what a user's deployment does: export the PyTorch model to
ONNX (the dynamo exporter folds BatchNorm into the convolutions), run ORT's
``quant_pre_process``, then ask ORT's own ``quantize_static`` (QDQ) which tensors it
puts Q/DQ pairs on. That *plan* (which edges are quantized, which initializers are
int8 weights or int32 biases, which tensors share quantization parameters, which ReLUs
are fused away) is read back from the QDQ model, so the simulation quantizes exactly
the tensors the engine quantizes, for any architecture, instead of re-implementing
ORT's rules by hand.

Layers are named by PyTorch module qualified names (``layer1.0.conv2``); ops that have
no module of their own (a residual ``Add``, an attention ``MatMul``) are named
``<module>:<op>`` (``layer1.0:add``, ``blocks.0.attn:matmul_1``).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import onnx
import torch

from .errors import ExportError
from .interpreter import Program
from .scheme import Scheme
from .workload import Inputs, Workload

OPSET = 18
# ORT shares the input's scale for these ops' outputs (QDQDirect8BitOp & friends).
# Ops whose constant input ORT quantizes with the *weight* type. Not Gather: ORT's QDQGather
# quantizes its data (an embedding table) like an activation tensor, per tensor, on the
# activation grid, and its output shares those parameters.
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LayerNormalization", "InstanceNormalization",
              "BatchNormalization", "Einsum"}  # fmt: skip
PASSTHROUGH_OPS = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "MaxPool", "AveragePool", "Slice",
    "Resize", "Split", "Gather", "GatherElements", "Pad", "TopK", "Identity", "Expand", "Tile",
}  # fmt: skip


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and log lines."""
    out, err = io.StringIO(), io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "onnxscript", "onnxruntime", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _first_line_of(e: BaseException) -> str:
    text = str(e)
    for line in text.splitlines():
        if "Unsupported" in line or "aten." in line or "not supported" in line.lower():
            return line.strip()[:300]
    return (text.splitlines() or [type(e).__name__])[0][:300]


def export_onnx(model: torch.nn.Module, example: Inputs, path: Path) -> Path:
    """PyTorch → one ONNX file, dynamic batch on every input, opset 18.

    The dynamo exporter first (it keeps parameter names and module scopes); the
    TorchScript exporter as a fallback for models torch.export cannot trace.
    """
    if example[0].shape[0] == 1:  # avoid the exporter specializing a batch of 1
        example = tuple(torch.cat([t, t]) for t in example)
    batch = torch.export.Dim("batch", min=1)
    errors = []
    with quiet():
        try:
            torch.onnx.export(
                model, example, str(path), dynamo=True, opset_version=OPSET,
                dynamic_shapes=tuple({0: batch} for _ in example), optimize=True,
            )  # fmt: skip
            return path
        except Exception as e:  # noqa: BLE001
            errors.append(_first_line_of(e))
        try:
            names = [f"input_{i}" for i in range(len(example))]
            torch.onnx.export(
                model, example, str(path), dynamo=False, opset_version=17, input_names=names,
                output_names=["output"], dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
            )  # fmt: skip
            return path
        except Exception as e:  # noqa: BLE001
            errors.append(_first_line_of(e))
    raise ExportError(f"ONNX export failed: {errors[0]}" + (f" (TorchScript exporter: {errors[1]})" if len(errors) > 1 else ""))


# protobuf cannot serialize a model over 2 GB; above this, weights live in an external-data file
LARGE_MODEL_BYTES = 1_800_000_000


def is_large(model: onnx.ModelProto) -> bool:
    return sum(t.ByteSize() for t in model.graph.initializer) > LARGE_MODEL_BYTES


def preprocess(src: Path, dst: Path) -> Path:
    """ORT's quant_pre_process (shape inference + basic graph optimization), names made unique.

    The exporter may write weights to ``src.data`` beside the model; ORT's pre-processing works
    in a temporary folder where that file is not found, so the model is handed over in memory
    (under 2 GB) or with an external-data file of its own (``dst.data``, over 2 GB)."""
    from onnxruntime.quantization import quant_pre_process

    model = onnx.load(str(src))  # external data read from beside src
    large = is_large(model)
    extra = dict(save_as_external_data=True, all_tensors_to_one_file=True, external_data_location=dst.name + ".data") if large else {}
    if not large and any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(src), load_external_data=False).graph.initializer):
        src = save_model(model, src.with_name(src.stem + ".inline.onnx"))  # one self-contained file
    del model
    with quiet():
        try:
            quant_pre_process(str(src), str(dst), **extra)
        except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs (e.g. BERT)
            try:
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, **extra)
            except Exception as e:  # noqa: BLE001
                raise ExportError(f"ONNX Runtime's quant_pre_process failed: {_first_line_of(e)}") from None
    m = onnx.load(str(dst))
    seen: set[str] = set()
    changed = False
    for i, n in enumerate(m.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
            changed = True
        seen.add(n.name)
    if changed:
        save_model(m, dst)
    return dst


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """One file, or (over 2 GB) the model plus ``path.data`` with its weights."""
    if is_large(model):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)  # fmt: skip
    else:
        onnx.save_model(model, str(path))
    return path


class _Reader:
    """A CalibrationDataReader over a few batches (the plan only needs the structure)."""

    def __init__(self, names: list[str], batches: list[Inputs]):
        self._it = iter([{n: t.numpy() for n, t in zip(names, b)} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def ort_quant_types(scheme: Scheme) -> dict:
    """The quantize_static arguments that give ORT's default engine for a scheme."""
    from onnxruntime.quantization import QuantType

    a, w = scheme.act, scheme.weights
    return dict(
        per_channel=w.granularity != "per_tensor",
        activation_type=QuantType.QInt8 if a.symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8 if w.symmetric else QuantType.QUInt8,
        extra_options={"ActivationSymmetric": a.symmetric, "WeightSymmetric": w.symmetric},
    )


def ort_quantize(src: Path, dst: Path, input_names: list[str], batches: list[Inputs], scheme: Scheme, **extra) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    kw = ort_quant_types(scheme)
    kw["extra_options"] = {**kw["extra_options"], **extra.pop("extra_options", {})}
    kw.update(extra)  # e.g. activation_type: an override of the scheme's default (engine.build_int8_engine)
    with quiet():
        try:
            large = (src.with_name(src.name + ".data")).exists()  # a model over 2 GB keeps its weights beside it
            quantize_static(
                str(src), str(dst), _Reader(input_names, batches), quant_format=QuantFormat.QDQ,
                calibrate_method=CalibrationMethod.MinMax, use_external_data_format=large, **kw,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"ONNX Runtime's quantize_static failed: {_first_line_of(e)}") from None
    return dst


# --------------------------------------------------------------------------- the plan


@dataclass
class Layer:
    """One quantizable op: its quantized activation inputs, int8 weights and int32 bias."""

    name: str
    node: int
    node_name: str
    op_type: str
    act_inputs: list[tuple[int, str]]  # (input position, tensor)
    weights: list[tuple[int, str]]  # (input position, initializer) quantized like weights
    bias: tuple[int, str] | None  # int32 bias, scale = s_x · s_w
    output: str
    consts: list[tuple[int, str]]  # constant inputs ORT quantizes like activations (own range)
    params: int
    order: int = 0
    module: str = ""  # the leaf module (Linear, Conv…) this op belongs to, if any

    @property
    def weight(self) -> str | None:
        return self.weights[0][1] if self.weights else None


@dataclass
class QuantGraph:
    program: Program
    float_path: Path
    layers: list[Layer]
    act_owner: dict[str, str]  # quantized tensor → tensor whose range gives its qparams
    weight_axis: dict[str, int | None]  # weight initializer → per-channel axis in ORT's plan
    edges: set[tuple[int, int]]  # (node index, input position) that read a Q/DQ'd tensor
    output_quant: set[str]  # graph outputs ORT quantizes
    input_names: list[str]
    workdir: Path
    export_note: str = ""
    by_name: dict[str, Layer] = field(default_factory=dict)
    # removes ``workdir`` once no QuantGraph (copies made by fixes included) holds it
    owner: object = field(default=None, repr=False, compare=False)
    by_node: dict[int, Layer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {l.name: l for l in self.layers}
        self.by_node = {l.node: l for l in self.layers}

    def node_name(self, layer: str) -> str:
        """Module name → ONNX node name (``layer1.0.conv2`` → ``node_Conv_12``)."""
        return self.layer(layer).node_name

    def layer_of_node(self, node_name: str) -> str | None:
        """ONNX node name → module name; ``None`` for nodes that are not quantizable layers."""
        for l in self.layers:
            if l.node_name == node_name:
                return l.name
        return None

    @property
    def quantized_tensors(self) -> set[str]:
        return set(self.act_owner)

    def layer(self, name: str) -> Layer:
        from .errors import ConfigError

        if name not in self.by_name:
            close = [n for n in self.by_name if name.split(".")[-1] in n][:5]
            raise ConfigError(
                f"unknown layer {name!r}" + (f"; did you mean {', '.join(close)}?" if close else f"; layers are {', '.join(list(self.by_name)[:8])}...")
            )
        return self.by_name[name]


def _module_path_from_legacy(node_name: str) -> str:
    segs = [s for s in node_name.strip("/").split("/")[:-1] if s]
    cur = ""
    for s in segs:
        if not cur or s.startswith(cur + "."):
            cur = s
        else:
            cur = f"{cur}.{s}"
    return cur


_LEAF_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "Embedding", "LayerNorm")
_LEAF_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather", "LayerNormalization")


def _module_of(node, modules: dict[str, str], scopes_by_name: dict[str, str]) -> tuple[str, bool]:
    """(module path, is it the node's own leaf module)."""
    scopes = node.meta.get("pkg.torch.onnx.name_scopes") or scopes_by_name.get(node.name)
    if scopes:
        try:
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            parts = []
        mods = [p for p in parts[:-1] if p]
        if mods:
            return mods[-1], modules.get(mods[-1]) in _LEAF_TYPES
        return "", False
    if node.name.startswith("/"):
        path = _module_path_from_legacy(node.name)
        return path, modules.get(path) in _LEAF_TYPES
    return "", False


def _name_layers(prog: Program, layers: list[Layer], model: torch.nn.Module, scopes_by_name: dict[str, str]) -> None:
    param_names = {n for n, _ in model.named_parameters()}
    modules = {n: type(m).__name__ for n, m in model.named_modules()}
    counts: dict[str, int] = {}
    used: set[str] = set()
    for l in layers:
        node = prog.nodes[l.node]
        name = ""
        w = l.weight
        mod, leaf = _module_of(node, modules, scopes_by_name)
        if getattr(model, "proto", None) is not None and node.name and node.name not in scopes_by_name:
            name = node.name  # an ONNX file without module scopes: its node names
        # The exporter's module scope first: weight names can mislead (the ONNX optimizer merges
        # identical initializers, e.g. every LayerNorm weight of a freshly initialized BERT).
        if leaf and node.op in _LEAF_OPS:
            name = mod
        elif w and w.endswith(".weight") and w in param_names and node.op in _LEAF_OPS:
            name = w[: -len(".weight")]  # a conv with a folded BatchNorm is scoped to the BN
        if leaf:
            l.module = mod
        elif name:
            l.module = name
        if not name:
            op = node.op.lower()
            key = f"{mod}:{op}"
            k = counts.get(key, 0)
            counts[key] = k + 1
            name = (f"{mod}:{op}" if mod else op) + (f"_{k}" if k else "")
        base, i = name, 1
        while name in used:
            name = f"{base}_{i}"
            i += 1
        used.add(name)
        l.name = name


def read_plan(qdq: onnx.ModelProto, prog: Program) -> tuple[dict, dict, set, set, dict]:
    """Read ORT's QDQ model back onto the float graph's node indices and tensor names."""
    inits = {t.name: t for t in qdq.graph.initializer}
    float_tensors = set(prog.initializers) | set(prog.inputs) | {o for n in prog.nodes for o in n.outputs}

    def orig(name: str) -> str:
        for suf in ("_QuantizeLinear_Input", "_DequantizeLinear_Output"):
            if name.endswith(suf) and name[: -len(suf)] in float_tensors:
                return name[: -len(suf)]
        return name

    q_of: dict[str, tuple[str, str]] = {}  # Q output → (float tensor, scale name)
    for n in qdq.graph.node:
        if n.op_type == "QuantizeLinear":
            q_of[n.output[0]] = (orig(n.input[0]), n.input[1])
    dq: dict[str, tuple] = {}  # DQ output → ("act", tensor, scale) | ("init", name, dtype, axis)
    for n in qdq.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        src = n.input[0]
        axis = next((a.i for a in n.attribute if a.name == "axis"), None)
        if src in q_of:
            t, s = q_of[src]
            dq[n.output[0]] = ("act", t, s)
        elif src in inits:
            base = src[: -len("_quantized")] if src.endswith("_quantized") else src
            sc = inits.get(n.input[1])
            per_ch = sc is not None and len(sc.dims) > 0 and int(np.prod(sc.dims)) > 1
            dq[n.output[0]] = ("init", base, inits[src].data_type, axis if per_ch else None)
    # Group tensors that share a scale initializer; the owner is the one ORT named it after.
    groups: dict[str, list[str]] = {}
    for t, s in q_of.values():
        groups.setdefault(s, []).append(t)
    act_owner: dict[str, str] = {}
    for s, ts in groups.items():
        owner = next((t for t in ts if s == f"{t}_scale"), ts[0])
        for t in ts:
            act_owner[t] = owner
    by_name = {n.name: n for n in prog.nodes}
    edges: set[tuple[int, int]] = set()
    weights: dict[int, list[tuple[int, str, int, int | None]]] = {}
    for n in qdq.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        fn = by_name.get(n.name)
        if fn is None:
            continue
        for pos, i in enumerate(n.input):
            if i in dq:
                kind = dq[i]
                if kind[0] == "act":
                    edges.add((fn.index, pos))
                else:  # the float graph's own initializer at that input (ORT may rename its copy)
                    fname = fn.inputs[pos] if pos < len(fn.inputs) and fn.inputs[pos] in prog.initializers else kind[1]
                    weights.setdefault(fn.index, []).append((pos, fname, kind[2], kind[3]))
    output_quant = {t for t, _ in q_of.values() if t in set(prog.outputs)}
    return act_owner, weights, edges, output_quant, {}


def build_layers(prog: Program, act_owner: dict, weights: dict, edges: set) -> tuple[list[Layer], dict[str, int | None]]:
    layers: list[Layer] = []
    weight_axis: dict[str, int | None] = {}
    for n in prog.nodes:
        act = [(pos, n.inputs[pos]) for (i, pos) in sorted(edges) if i == n.index]
        ws = weights.get(n.index, [])
        if not act and not ws:
            continue
        if not ws and (n.op in PASSTHROUGH_OPS or n.op not in _ORT_QUANT_OPS):
            continue  # shares its input's grid, or ORT runs it in float between DQ and Q
        # ORT quantizes a *weight* input of Conv/Gemm/MatMul/norms with the weight type; any
        # other constant input (an Add's bias after a MatMul, a positional embedding, a Mul's
        # scale) it quantizes like an activation: its own min/max, the activation grid.
        is_weight_op = n.op in WEIGHT_OPS
        wlist = [(p, name) for p, name, dt, _ in ws if dt != onnx.TensorProto.INT32 and is_weight_op]
        clist = [(p, name) for p, name, dt, _ in ws if dt != onnx.TensorProto.INT32 and not is_weight_op]
        blist = [(p, name) for p, name, dt, _ in ws if dt == onnx.TensorProto.INT32]
        for p, name, dt, ax in ws:
            if dt != onnx.TensorProto.INT32:
                weight_axis[name] = ax
        params = sum(int(prog.initializers[name].numel()) for _, name in wlist + blist + clist if name in prog.initializers)
        layers.append(
            Layer(
                name="",
                node=n.index,
                node_name=n.name,
                op_type=n.op,
                act_inputs=act,
                weights=wlist,
                consts=clist,
                bias=blist[0] if blist else None,
                output=n.outputs[0],
                params=params,
                order=len(layers),
            )
        )
    return layers, weight_axis


def _ort_quant_ops() -> set[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QDQRegistry) | set(QLinearOpsRegistry)


_ORT_QUANT_OPS = _ort_quant_ops()
# QuantGraphs alive in this process, by workload and scheme: a graph (and its temporary folder)
# lives as long as some analysis, export or caller holds it, not as long as the process.
_CACHE: weakref.WeakValueDictionary[tuple, QuantGraph] = weakref.WeakValueDictionary()
_ENTRY_FILES = ("scopes.json", "model_fp32.onnx", "plan_qdq.onnx")
_MANIFEST = "manifest.json"


class Workdir:
    """A temporary folder removed when the last object holding this token is collected, at
    interpreter exit (Ctrl-C included), or on ``cleanup()``."""

    def __init__(self, path: Path):
        self.path = path
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(path), ignore_errors=True)

    def cleanup(self) -> None:
        self._finalizer()


def _disk_cache(workload: Workload, scheme: Scheme) -> Path | None:
    """~/.cache/qanalysis/<hash of weights, input shapes, scheme flags, versions>: the export,
    pre-processing and plan of a model are reused across processes (the dashboard's first load).
    ``QANALYSIS_CACHE=0`` turns it off."""
    import hashlib

    root = os.environ.get("QANALYSIS_CACHE", str(Path.home() / ".cache" / "qanalysis"))
    if root in ("0", "", "off"):
        return None
    import onnxruntime

    h = hashlib.sha1()
    h.update(type(workload.model).__qualname__.encode())  # not __module__: spec modules get unique names
    h.update(str(getattr(workload.model, "sha256", "")).encode())  # an ONNX file given as the model
    for k, v in workload.model.state_dict().items():
        h.update(k.encode())
        h.update(str((tuple(v.shape), str(v.dtype))).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    for t in workload.calibration[0]:
        h.update(str((tuple(t.shape[1:]), str(t.dtype))).encode())
    # the trailing number is the entry format (4: with a manifest of checksums)
    h.update(repr((scheme.act.symmetric, scheme.weights.symmetric, scheme.weights.granularity == "per_tensor",
                   torch.__version__, onnx.__version__, onnxruntime.__version__, OPSET, 4)).encode())  # fmt: skip
    return Path(root) / h.hexdigest()[:24]


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(entry: Path, wd: Path) -> Literal["hit", "miss", "bad"]:
    """Copy a cache entry's files into ``wd`` and check the copies against its manifest (written
    last when the entry was stored, so an entry without a valid one is incomplete or damaged)."""
    if not entry.exists():
        return "miss"
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        sums = manifest["sha256"]
        if not isinstance(sums, dict) or not set(_ENTRY_FILES) <= set(sums) or \
                not all(n in _ENTRY_FILES or n.endswith(".onnx.data") for n in sums):  # fmt: skip
            return "bad"
        for n in sums:  # the entry's files, with the external-data files of large models
            shutil.copyfile(entry / n, wd / n)
            if _sha256(wd / n) != sums[n]:
                return "bad"
    except (OSError, ValueError, KeyError, TypeError):
        return "bad"
    return "hit"


def _store(dst: Path, wd: Path) -> None:
    """Write a cache entry atomically: files and then the manifest into a staging folder beside
    ``dst``, renamed into place. A damaged entry already there is replaced; a valid one that a
    concurrent run stored first is kept. The cache is an optimization: failures are ignored."""
    import time
    import uuid

    if dst.parent.is_dir():  # staging left by a killed run (an hour is far longer than any store)
        for old in dst.parent.glob(f".{dst.name}.*-*"):
            with contextlib.suppress(OSError):
                if time.time() - old.stat().st_mtime > 3600:
                    shutil.rmtree(old, ignore_errors=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        files = list(_ENTRY_FILES) + sorted(p.name for p in wd.glob("*.onnx.data") if p.name.split(".onnx")[0] + ".onnx" in _ENTRY_FILES)
        for n in files:
            shutil.copyfile(wd / n, tmp / n)
        (tmp / _MANIFEST).write_text(json.dumps({"sha256": {n: _sha256(tmp / n) for n in files}}))
        try:
            os.replace(tmp, dst)
        except OSError:  # dst exists: another run stored it, or it is the damaged entry we rebuilt
            with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.check-") as d:
                if _fetch(dst, Path(d)) == "hit":
                    return
            bad = dst.with_name(f".{dst.name}.bad-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(dst, bad)
            shutil.rmtree(bad, ignore_errors=True)
            os.replace(tmp, dst)
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_onnx(proto: onnx.ModelProto, path: Path) -> Path:
    """Write ``proto``; weights go to an external-data file beside it when the model is large
    (protobuf cannot hold more than 2 GB in one file)."""
    big = sum(t.ByteSize() for t in proto.graph.initializer) > 1_500_000_000
    onnx.save_model(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=path.name + ".data" if big else None)  # fmt: skip
    return path


def _build(workload: Workload, scheme: Scheme, wd: Path) -> None:
    """Export, pre-process and plan into ``wd``: the cache entry's files."""
    proto = getattr(workload.model, "proto", None)  # an ONNX file given as the model: no export
    # the export and the plan need the graph's structure, not the data: two samples, then one.
    # ORT's calibration pass behind the plan keeps every tensor of the graph for its batch
    # (resnet101 on a batch of 64: 7.3 GB resident)
    example = tuple(t[:2] for t in workload.calibration[0])
    raw = _save_onnx(proto, wd / "exported.onnx") if proto is not None else export_onnx(workload.model, example, wd / "exported.onnx")
    # the exporter's module scopes per node (quant_pre_process may drop node metadata)
    scopes = {n.name: p.value for n in onnx.load(str(raw), load_external_data=False).graph.node
              for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes"}  # fmt: skip
    (wd / "scopes.json").write_text(json.dumps(scopes))
    pre = preprocess(raw, wd / "model_fp32.onnx")
    for f in wd.glob("exported*"):  # the raw export is not needed any more
        f.unlink(missing_ok=True)
    g = onnx.load(str(pre), load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    inputs = [i.name for i in g.input if i.name not in inits]
    if len(inputs) != len(workload.calibration[0]):
        raise ExportError(f"the exported graph has {len(inputs)} inputs but the batches have {len(workload.calibration[0])} tensors")
    ort_quantize(pre, wd / "plan_qdq.onnx", inputs, [tuple(t[:1] for t in example)], scheme)


def _read(workload: Workload, wd: Path, owner: Workdir | None) -> QuantGraph:
    pre = wd / "model_fp32.onnx"
    prog = Program(onnx.load(str(pre)))
    if len(prog.inputs) != len(workload.calibration[0]):
        raise ExportError(
            f"the exported graph has {len(prog.inputs)} inputs but the batches have {len(workload.calibration[0])} tensors"
        )
    scopes = json.loads((wd / "scopes.json").read_text())
    if not isinstance(scopes, dict):
        raise TypeError("scopes.json is not an object")
    act_owner, weights, edges, output_quant, _ = read_plan(onnx.load(str(wd / "plan_qdq.onnx")), prog)
    layers, weight_axis = build_layers(prog, act_owner, weights, edges)
    if not layers:
        raise ExportError("ONNX Runtime found nothing to quantize in this model (no Conv, Gemm, MatMul, Add... ops)")
    _name_layers(prog, layers, workload.model, scopes)
    workload.input_names = list(prog.inputs)
    return QuantGraph(
        program=prog,
        float_path=pre,
        layers=layers,
        act_owner=act_owner,
        weight_axis=weight_axis,
        edges=edges,
        output_quant=output_quant,
        input_names=list(prog.inputs),
        workdir=wd,
        owner=owner,
    )


def prepare(workload: Workload, scheme: Scheme | None = None, workdir: Path | None = None, *,
            progress: Callable[[str], None] | None = None) -> QuantGraph:  # fmt: skip
    """Export, pre-process and read ORT's QDQ plan for ``workload`` under ``scheme``.

    The files live in ``workdir``, or in a temporary folder removed with the last QuantGraph
    that uses it (or at exit, Ctrl-C included). A damaged disk-cache entry is rebuilt and the
    rebuild is said on ``progress`` (default: the ``qanalysis`` logger)."""
    scheme = scheme or Scheme()
    key = (id(workload), id(workload.model), scheme.act.symmetric, scheme.weights.symmetric,
           scheme.weights.granularity == "per_tensor")  # fmt: skip
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    say = progress or logging.getLogger("qanalysis").warning
    owner = None
    if workdir:
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
    else:
        wd = Path(tempfile.mkdtemp(prefix="qanalysis-"))
        owner = Workdir(wd)
    try:
        cached = _disk_cache(workload, scheme)
        state = _fetch(cached, wd) if cached is not None else "off"
        qg = None
        if state == "hit":
            try:
                qg = _read(workload, wd, owner)
            except ExportError:
                raise  # the model's own problem, the same after a rebuild
            except Exception:  # noqa: BLE001 - files that passed their checksums and still do not load
                state = "bad"
        if qg is None:
            if state == "bad":
                say(f"cache entry {cached} was corrupt; rebuilt")
            _build(workload, scheme, wd)
            qg = _read(workload, wd, owner)
            if cached is not None:
                _store(cached, wd)
    except BaseException:
        if owner is not None:
            owner.cleanup()
        raise
    _CACHE[key] = qg
    return qg
