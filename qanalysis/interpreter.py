"""Execute an ONNX graph with PyTorch ops, one node at a time.

Why: the simulation must see the graph ONNX Runtime quantizes (after export, BatchNorm
folding and ``quant_pre_process``), tensor by tensor, so that fake quantization can be put
on exactly the edges where ORT puts Q/DQ pairs. Running the same graph in torch also gives
autograd (for AdaRound and QAT) and cheap partial re-execution: when only some edges
change, only the nodes downstream of them run again.

``Program.run`` takes an environment (tensor name → tensor), a subset of nodes to run,
and a per-edge transform ``edge(node_index, input_position, value) → value``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from .errors import ExportError

EdgeFn = Callable[[int, int, torch.Tensor], torch.Tensor]

_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def to_torch(t: onnx.TensorProto) -> torch.Tensor:
    arr = numpy_helper.to_array(t)
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.array(arr, copy=True))


@dataclass
class Node:
    index: int
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


def _attr(a: onnx.AttributeProto) -> Any:
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        return to_torch(v)
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [x.decode() for x in v]
    return v


class Program:
    """A float ONNX graph as a list of nodes plus torch initializers."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.initializers: dict[str, torch.Tensor] = {t.name: to_torch(t) for t in g.initializer}
        init_names = set(self.initializers)
        self.inputs = [i.name for i in g.input if i.name not in init_names]
        self.outputs = [o.name for o in g.output]
        self.nodes: list[Node] = []
        for n in g.node:
            if n.op_type == "Constant":
                (a,) = n.attribute
                v = _attr(a)
                if not isinstance(v, torch.Tensor):
                    v = torch.tensor(v)
                self.initializers[n.output[0]] = v
                continue
            if n.domain not in ("", "ai.onnx"):
                raise ExportError(f"ONNX node {n.name!r} uses op {n.domain}::{n.op_type}, which the simulator does not run")
            if n.op_type not in OPS:
                raise ExportError(f"ONNX op {n.op_type} (node {n.name!r}) is not supported by the simulator yet")
            self.nodes.append(
                Node(
                    index=len(self.nodes),
                    name=n.name,
                    op=n.op_type,
                    inputs=list(n.input),
                    outputs=list(n.output),
                    attrs={a.name: _attr(a) for a in n.attribute},
                    meta={p.key: p.value for p in n.metadata_props},
                )
            )
        self.producer: dict[str, int] = {o: n.index for n in self.nodes for o in n.outputs}
        self.consumers: dict[str, list[int]] = {}
        for n in self.nodes:
            for t in n.inputs:
                if t:
                    self.consumers.setdefault(t, []).append(n.index)
        self._last_use: dict[str, int] = {}
        for n in self.nodes:
            for t in n.inputs:
                if t:
                    self._last_use[t] = n.index

    # ------------------------------------------------------------------ structure
    def descendants(self, start: Iterable[int]) -> set[int]:
        """Node indices reachable from ``start`` (included) along data edges."""
        todo, seen = list(start), set(start)
        while todo:
            i = todo.pop()
            for o in self.nodes[i].outputs:
                for c in self.consumers.get(o, ()):
                    if c not in seen:
                        seen.add(c)
                        todo.append(c)
        return seen

    # ------------------------------------------------------------------ execution
    def run(
        self,
        feeds: Mapping[str, torch.Tensor],
        *,
        env: Mapping[str, torch.Tensor] | None = None,
        nodes: Iterable[int] | None = None,
        edge: EdgeFn | None = None,
        edge_nodes: set[int] | None = None,
        weights: Mapping[str, torch.Tensor] | None = None,
        keep: bool | set[str] = False,
    ) -> dict[str, torch.Tensor]:
        """Run ``nodes`` (default all, always in graph order) and return the environment.

        ``env`` supplies already-computed tensors (a cached FP32 pass, say); ``weights``
        replaces initializers (fake-quantized weights); ``edge`` transforms the value a
        node reads on an input edge, for the nodes in ``edge_nodes`` (default all).
        With ``keep=False`` intermediate tensors are dropped after their last use, so only
        graph outputs are returned; ``keep=True`` keeps everything; a set keeps those.
        """
        scope: dict[str, torch.Tensor] = dict(self.initializers)
        if weights:
            scope.update(weights)
        if env:
            scope.update(env)
        scope.update(feeds)
        order = range(len(self.nodes)) if nodes is None else sorted(set(nodes))
        outs = set(self.outputs)
        keep_set = keep if isinstance(keep, set) else set()
        for i in order:
            n = self.nodes[i]
            args = []
            for pos, t in enumerate(n.inputs):
                if not t:
                    args.append(None)
                    continue
                try:
                    v = scope[t]
                except KeyError:
                    raise ExportError(f"tensor {t!r} needed by node {n.name!r} was not computed") from None
                if edge is not None and (edge_nodes is None or i in edge_nodes):
                    v = edge(i, pos, v)
                args.append(v)
            try:
                res = OPS[n.op](args, n.attrs)
            except ExportError:
                raise
            except Exception as e:  # noqa: BLE001 - name the node that failed
                raise ExportError(f"simulating ONNX node {n.name!r} ({n.op}) failed: {type(e).__name__}: {e}") from None
            if not isinstance(res, (list, tuple)):
                res = (res,)
            for name, v in zip(n.outputs, res):
                if name:
                    scope[name] = v
            # free what no later node reads; in a partial run too: a tensor whose last reader is in
            # ``order`` is read by no later node of it, and ``env``'s own tensors stay in ``env``
            if keep is not True:
                for t in n.inputs:
                    if t and self._last_use.get(t) == i and t not in outs and t not in keep_set and t not in self.initializers:
                        scope.pop(t, None)
        if keep is True:  # computed tensors only: never hand initializers back as an env
            return {k: v for k, v in scope.items() if k not in self.initializers and not (weights and k in weights)}
        result = {o: scope[o] for o in self.outputs if o in scope}
        for k in keep_set:
            if k in scope:
                result[k] = scope[k]
        return result


# ---------------------------------------------------------------------- op set


def _ints(t: Any) -> list[int]:
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(x) for x in t.reshape(-1).tolist()]
    return [int(x) for x in t]


def _pads_for_torch(pads: list[int], nd: int) -> tuple[list[int], list[int] | None]:
    """ONNX pads [b1..bn, e1..en] → symmetric torch padding or an explicit F.pad list."""
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        return begin, None
    fpad: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        fpad += [b, e]
    return [0] * nd, fpad


def _auto_pad(x: torch.Tensor, a: dict, kernel: list[int], strides: list[int], dil: list[int]) -> list[int]:
    mode = a.get("auto_pad", "NOTSET")
    nd = len(kernel)
    if mode in ("NOTSET", "VALID"):
        return _ints(a.get("pads")) or [0] * (2 * nd)
    pads_b, pads_e = [], []
    for i in range(nd):
        size = x.shape[2 + i]
        out = math.ceil(size / strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size)
        small, big = total // 2, total - total // 2
        if mode == "SAME_UPPER":
            pads_b.append(small)
            pads_e.append(big)
        else:
            pads_b.append(big)
            pads_e.append(small)
    return pads_b + pads_e


def _conv(args, a):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    nd = w.dim() - 2
    strides = a.get("strides") or [1] * nd
    dil = a.get("dilations") or [1] * nd
    kernel = a.get("kernel_shape") or list(w.shape[2:])
    pads = _auto_pad(x, a, kernel, strides, dil)
    pad, fpad = _pads_for_torch(pads, nd)
    if fpad:
        x = F.pad(x, fpad)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, stride=strides, padding=pad, dilation=dil, groups=a.get("group", 1))


def _conv_transpose(args, a):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    nd = w.dim() - 2
    strides = a.get("strides") or [1] * nd
    dil = a.get("dilations") or [1] * nd
    pads = _ints(a.get("pads")) or [0] * (2 * nd)
    if pads[:nd] != pads[nd:]:
        raise ExportError("ConvTranspose with asymmetric pads is not supported by the simulator")
    outpad = a.get("output_padding") or [0] * nd
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    return fn(x, w, b, stride=strides, padding=pads[:nd], output_padding=outpad, groups=a.get("group", 1), dilation=dil)


def _gemm(args, a):
    A, B = args[0], args[1]
    C = args[2] if len(args) > 2 else None
    if a.get("transA", 0):
        A = A.transpose(0, 1)
    if a.get("transB", 0):
        B = B.transpose(0, 1)
    y = a.get("alpha", 1.0) * (A @ B)
    if C is not None:
        y = y + a.get("beta", 1.0) * C
    return y


def _pool(args, a, kind):
    x = args[0]
    kernel = a["kernel_shape"]
    nd = len(kernel)
    strides = a.get("strides") or [1] * nd
    dil = a.get("dilations") or [1] * nd
    pads = _auto_pad(x, a, kernel, strides, dil)
    pad, fpad = _pads_for_torch(pads, nd)
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "max":
        if fpad:
            x = F.pad(x, fpad, value=float("-inf"))
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        return fn(x, kernel, strides, pad, dil, ceil_mode=ceil)
    include = bool(a.get("count_include_pad", 0))
    if fpad:
        if not include:
            raise ExportError("AveragePool with asymmetric pads is not supported by the simulator")
        x = F.pad(x, fpad)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return fn(x, kernel, strides, pad, ceil_mode=ceil, count_include_pad=include)


def _reshape(args, a):
    x, shape = args[0], _ints(args[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _axes(args, a, pos=1):
    if len(args) > pos and args[pos] is not None:
        return _ints(args[pos])
    return _ints(a.get("axes"))


def _squeeze(args, a):
    x = args[0]
    axes = _axes(args, a)
    if not axes:
        return x.squeeze()
    axes = sorted(ax % x.dim() for ax in axes)
    for ax in reversed(axes):
        x = x.squeeze(ax)
    return x


def _unsqueeze(args, a):
    x = args[0]
    axes = _axes(args, a)
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _reduce(fn):
    def run(args, a):
        x = args[0]
        axes = _axes(args, a)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, axes, keep)

    return run


def _slice(args, a):
    x = args[0]
    starts, ends = _ints(args[1]), _ints(args[2])
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    idx: list[Any] = [slice(None)] * x.dim()
    flips = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= x.dim()
        n = x.shape[ax]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            idx[ax] = slice(s, e, st)
        else:  # negative step: slice then flip
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < -1 or (e < 0 and e > -n - 1 and e != -1) else e))
            if e < -1:
                e = -1
            rng = list(range(s, e, st))
            idx[ax] = torch.tensor(rng, dtype=torch.long) if rng else torch.tensor([], dtype=torch.long)
            flips.append(ax)
    out = x
    for ax, ix in enumerate(idx):
        if isinstance(ix, torch.Tensor):
            out = out.index_select(ax, ix)
        elif ix != slice(None):
            sl: list[Any] = [slice(None)] * out.dim()
            sl[ax] = ix
            out = out[tuple(sl)]
    return out


def _split(args, a):
    x = args[0]
    axis = a.get("axis", 0)
    if len(args) > 1 and args[1] is not None:
        sizes = _ints(args[1])
    elif a.get("split"):
        sizes = list(a["split"])
    else:
        n = a.get("num_outputs")
        if n is None:
            raise ExportError("Split without sizes or num_outputs is not supported")
        total = x.shape[axis]
        chunk = math.ceil(total / n)
        sizes = [chunk] * (n - 1) + [total - chunk * (n - 1)]
    return list(torch.split(x, sizes, dim=axis))


def _gather(args, a):
    x, idx = args[0], args[1].long()
    axis = a.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1 :]))


def _gather_nd(args, a):
    data, idx = args[0], args[1].long()
    b = a.get("batch_dims", 0)
    k = idx.shape[-1]
    bshape = list(data.shape[:b])
    nb = int(np.prod(bshape)) if bshape else 1
    d = data.reshape(nb, *data.shape[b:])
    ix = idx.reshape(nb, -1, k)
    ix = torch.where(ix < 0, ix + torch.tensor(d.shape[1 : 1 + k]), ix)
    bi = torch.arange(nb).reshape(nb, 1).expand(nb, ix.shape[1])
    out = d[(bi, *[ix[..., j] for j in range(k)])]
    return out.reshape(*bshape, *idx.shape[b:-1], *data.shape[b + k :])


def _scatter_nd(args, a):
    data, idx, upd = args[0].clone(), args[1].long(), args[2]
    k = idx.shape[-1]
    flat_idx = idx.reshape(-1, k)
    flat_upd = upd.reshape(-1, *data.shape[k:])
    red = a.get("reduction", "none")
    for i in range(flat_idx.shape[0]):
        key = tuple(flat_idx[i].tolist())
        if red == "add":
            data[key] += flat_upd[i]
        elif red == "mul":
            data[key] *= flat_upd[i]
        else:
            data[key] = flat_upd[i]
    return data


def _cast(args, a):
    return args[0].to(_DTYPES[a["to"]])


def _clip(args, a):
    x = args[0]
    lo = args[1] if len(args) > 1 and args[1] is not None else a.get("min")
    hi = args[2] if len(args) > 2 and args[2] is not None else a.get("max")
    if lo is not None:
        x = torch.clamp(x, min=float(lo))
    if hi is not None:
        x = torch.clamp(x, max=float(hi))
    return x


def _layernorm(args, a):
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    axis = a.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))


def _batchnorm(args, a):
    x, s, b, m, v = args[:5]
    return F.batch_norm(x, m, v, s, b, False, 0.0, a.get("epsilon", 1e-5))


def _instancenorm(args, a):
    return F.instance_norm(args[0], weight=args[1], bias=args[2], eps=a.get("epsilon", 1e-5))


def _softmax(fn):
    def run(args, a):
        return fn(args[0], dim=a.get("axis", -1))

    return run


def _resize(args, a):
    x = args[0]
    scales = args[2] if len(args) > 2 and args[2] is not None and args[2].numel() else None
    sizes = args[3] if len(args) > 3 and args[3] is not None else None
    mode = a.get("mode", "nearest")
    kw: dict[str, Any] = {}
    if sizes is not None:
        kw["size"] = _ints(sizes)[2:]
    else:
        kw["scale_factor"] = [float(s) for s in scales.tolist()[2:]]
    if mode == "nearest":
        return F.interpolate(x, mode="nearest", **kw)
    align = a.get("coordinate_transformation_mode", "half_pixel") == "align_corners"
    m = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
    return F.interpolate(x, mode=m, align_corners=align, **kw)


def _pad(args, a):
    x = args[0]
    pads = _ints(args[1]) if len(args) > 1 and args[1] is not None else _ints(a.get("pads"))
    value = float(args[2]) if len(args) > 2 and args[2] is not None and args[2].numel() else 0.0
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(x.dim()))
    nd = len(axes)
    full_b, full_e = [0] * x.dim(), [0] * x.dim()
    for k, ax in enumerate(axes):
        full_b[ax % x.dim()] = pads[k]
        full_e[ax % x.dim()] = pads[nd + k]
    fpad: list[int] = []
    for b, e in zip(reversed(full_b), reversed(full_e)):
        fpad += [b, e]
    mode = a.get("mode", "constant")
    if mode == "constant":
        return F.pad(x, fpad, value=value)
    return F.pad(x, fpad[: 2 * (x.dim() - 2)], mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _gelu(args, a):
    return F.gelu(args[0], approximate="tanh" if a.get("approximate", "none") == "tanh" else "none")


def _shape(args, a):
    s = list(args[0].shape)
    start, end = a.get("start", 0), a.get("end", None)
    return torch.tensor(s[start:end], dtype=torch.int64)


def _constant_of_shape(args, a):
    v = a.get("value")
    shape = _ints(args[0])
    if v is None:
        return torch.zeros(shape, dtype=torch.float32)
    return torch.full(shape, v.reshape(-1)[0].item(), dtype=v.dtype)


def _range(args, a):
    s, l, d = (x.item() for x in args[:3])
    return torch.arange(s, l, d, dtype=args[0].dtype)


def _expand(args, a):
    x, shape = args[0], _ints(args[1])
    nd = max(x.dim(), len(shape))
    xs = [1] * (nd - x.dim()) + list(x.shape)
    ss = [1] * (nd - len(shape)) + shape
    target = [max(p, q) if q != 1 else p for p, q in zip(xs, ss)]
    return x.reshape(xs).expand(target)


def _trilu(args, a):
    k = int(args[1]) if len(args) > 1 and args[1] is not None else 0
    return torch.triu(args[0], k) if a.get("upper", 1) else torch.tril(args[0], k)


def _where(args, a):
    return torch.where(args[0].bool(), args[1], args[2])


def _einsum(args, a):
    return torch.einsum(a["equation"], *args)


def _bin(fn):
    return lambda args, a: fn(args[0], args[1])


def _un(fn):
    return lambda args, a: fn(args[0])


def _div(x, y):
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _mod(args, a):
    x, y = args
    return torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y)


OPS: dict[str, Callable[[list, dict], Any]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _bin(torch.matmul),
    "Add": _bin(torch.add),
    "Sub": _bin(torch.sub),
    "Mul": _bin(torch.mul),
    "Div": _bin(_div),
    "Pow": _bin(torch.pow),
    "Mod": _mod,
    "Max": lambda args, a: torch.stack(torch.broadcast_tensors(*args)).amax(0),
    "Min": lambda args, a: torch.stack(torch.broadcast_tensors(*args)).amin(0),
    "Sum": lambda args, a: sum(args[1:], args[0]),
    "Equal": _bin(torch.eq),
    "Greater": _bin(torch.gt),
    "GreaterOrEqual": _bin(torch.ge),
    "Less": _bin(torch.lt),
    "LessOrEqual": _bin(torch.le),
    "And": _bin(torch.logical_and),
    "Or": _bin(torch.logical_or),
    "Not": _un(torch.logical_not),
    "Sqrt": _un(torch.sqrt),
    "Exp": _un(torch.exp),
    "Log": _un(torch.log),
    "Neg": _un(torch.neg),
    "Abs": _un(torch.abs),
    "Reciprocal": _un(torch.reciprocal),
    "Floor": _un(torch.floor),
    "Ceil": _un(torch.ceil),
    "Round": _un(torch.round),
    "Sign": _un(torch.sign),
    "Erf": _un(torch.erf),
    "Tanh": _un(torch.tanh),
    "Sin": _un(torch.sin),
    "Cos": _un(torch.cos),
    "Sigmoid": _un(torch.sigmoid),
    "Relu": _un(F.relu),
    "LeakyRelu": lambda args, a: F.leaky_relu(args[0], a.get("alpha", 0.01)),
    "Elu": lambda args, a: F.elu(args[0], a.get("alpha", 1.0)),
    "HardSigmoid": lambda args, a: torch.clamp(a.get("alpha", 0.2) * args[0] + a.get("beta", 0.5), 0, 1),
    "HardSwish": _un(F.hardswish),
    "Softplus": _un(F.softplus),
    "Mish": _un(F.mish),
    "Gelu": _gelu,
    "Clip": _clip,
    "Softmax": _softmax(torch.softmax),
    "LogSoftmax": _softmax(torch.log_softmax),
    "Identity": _un(lambda x: x),
    "Dropout": lambda args, a: args[0],
    "Cast": _cast,
    "CastLike": lambda args, a: args[0].to(args[1].dtype),
    "Reshape": _reshape,
    "Flatten": lambda args, a: args[0].reshape(
        int(np.prod(args[0].shape[: a.get("axis", 1) % max(args[0].dim(), 1)] or [1])), -1
    )
    if a.get("axis", 1) != 0
    else args[0].reshape(1, -1),
    "Transpose": lambda args, a: args[0].permute(a.get("perm") or list(reversed(range(args[0].dim())))),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda args, a: torch.cat([x for x in args if x is not None], dim=a["axis"]),
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "GatherElements": lambda args, a: torch.gather(args[0], a.get("axis", 0), args[1].long()),
    "GatherND": _gather_nd,
    "ScatterND": _scatter_nd,
    "IsNaN": _un(torch.isnan),
    "IsInf": _un(torch.isinf),
    "Xor": _bin(torch.logical_xor),
    "BitwiseAnd": _bin(torch.bitwise_and),
    "BitwiseOr": _bin(torch.bitwise_or),
    "Atan": _un(torch.atan),
    "Selu": lambda args, a: F.selu(args[0]),
    "PRelu": lambda args, a: torch.where(args[0] >= 0, args[0], args[0] * args[1]),
    "OneHot": lambda args, a: _one_hot(args, a),
    "NonZero": lambda args, a: torch.stack(torch.nonzero(args[0], as_tuple=True)).long(),
    "Shape": _shape,
    "Size": lambda args, a: torch.tensor(args[0].numel(), dtype=torch.int64),
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Expand": _expand,
    "Tile": lambda args, a: args[0].repeat(_ints(args[1])),
    "Where": _where,
    "Trilu": _trilu,
    "Einsum": _einsum,
    "CumSum": lambda args, a: torch.cumsum(args[0], int(args[1])),
    "MaxPool": lambda args, a: _pool(args, a, "max"),
    "AveragePool": lambda args, a: _pool(args, a, "avg"),
    "GlobalAveragePool": lambda args, a: args[0].mean(dim=tuple(range(2, args[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda args, a: args[0].amax(dim=tuple(range(2, args[0].dim())), keepdim=True),
    "ReduceMean": _reduce(lambda x, ax, k: x.mean(dim=ax, keepdim=k)),
    "ReduceSum": _reduce(lambda x, ax, k: x.sum(dim=ax, keepdim=k)),
    "ReduceMax": _reduce(lambda x, ax, k: x.amax(dim=ax, keepdim=k)),
    "ReduceMin": _reduce(lambda x, ax, k: x.amin(dim=ax, keepdim=k)),
    "ReduceProd": _reduce(lambda x, ax, k: _prod(x, ax, k)),
    "ReduceL2": _reduce(lambda x, ax, k: x.pow(2).sum(dim=ax, keepdim=k).sqrt()),
    "ArgMax": lambda args, a: args[0].argmax(dim=a.get("axis", 0), keepdim=bool(a.get("keepdims", 1))),
    "LayerNormalization": _layernorm,
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _instancenorm,
    "Resize": _resize,
    "Pad": _pad,
}


def _one_hot(args, a):
    idx, depth, values = args[0].long(), int(args[1]), args[2]
    axis = a.get("axis", -1)
    idx = torch.where(idx < 0, idx + depth, idx)
    oh = F.one_hot(idx.clamp(0, depth - 1), depth).to(values.dtype)
    out = oh * (values[1] - values[0]) + values[0]
    return out.movedim(-1, axis) if axis != -1 else out


def _prod(x: torch.Tensor, axes: list[int], keep: bool) -> torch.Tensor:
    for ax in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.prod(dim=ax, keepdim=keep)
    return x
