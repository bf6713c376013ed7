"""The ONNX ops the simulator runs, as a registry: ONNX op type → a function of torch tensors.

Each op is one function ``fn(args, attrs) → Tensor | sequence of Tensors`` registered with
``@register_op("Conv")``: ``args`` are the node's inputs in ONNX order (``None`` for an
omitted optional input), ``attrs`` its attributes as Python values (tensors for tensor
attributes). Supporting a new model's op is one decorated function here and nothing else;
``tests/test_ops.py`` checks every registered op against ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .errors import ExportError

OpFn = Callable[[list, dict], Any]
OPS: dict[str, OpFn] = {}

TORCH_DTYPES = {
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


class UnsupportedOpError(ExportError):
    """A graph uses an ONNX op the simulator has no implementation for."""


def register_op(op_type: str) -> Callable[[OpFn], OpFn]:
    """Decorator: ``@register_op("Relu")`` makes the function the simulator's ``Relu``."""

    def add(fn: OpFn) -> OpFn:
        if op_type in OPS:
            raise ValueError(f"ONNX op {op_type} is registered twice")
        OPS[op_type] = fn
        return fn

    return add


def list_ops() -> list[str]:
    """The ONNX op types the simulator runs, sorted."""
    return sorted(OPS)


def get_op(op_type: str, node: str | None = None) -> OpFn:
    """The implementation of ``op_type``; an UnsupportedOpError naming the op and node if none."""
    try:
        return OPS[op_type]
    except KeyError:
        where = f" (node {node!r})" if node is not None else ""
        raise UnsupportedOpError(f"ONNX op {op_type}{where} is not supported by the simulator yet") from None


# ---------------------------------------------------------------------- helpers


def _ints(t: Any) -> list[int]:
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(x) for x in t.reshape(-1).tolist()]
    return [int(x) for x in t]


def _opt(args: Sequence, pos: int) -> Any:
    """Input ``pos`` if the node has it, else None (trailing optional inputs may be absent)."""
    return args[pos] if len(args) > pos else None


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


def _axes(args, a, pos=1):
    if len(args) > pos and args[pos] is not None:
        return _ints(args[pos])
    return _ints(a.get("axes"))


def _prod(x: torch.Tensor, axes: list[int], keep: bool) -> torch.Tensor:
    for ax in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.prod(dim=ax, keepdim=keep)
    return x


def _reduce(args, a, fn: Callable[[torch.Tensor, list[int], bool], torch.Tensor]) -> torch.Tensor:
    x = args[0]
    axes = _axes(args, a)
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return fn(x, axes, keep)


# ---------------------------------------------------------------------- convolution, linear, pooling


@register_op("Conv")
def conv(args, a):
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


@register_op("ConvTranspose")
def conv_transpose(args, a):
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


@register_op("Gemm")
def gemm(args, a):
    """Y = alpha · A' B' + beta · C, A' = Aᵀ if transA, B' = Bᵀ if transB."""
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


@register_op("MatMul")
def matmul(args, a):
    return torch.matmul(args[0], args[1])


@register_op("Einsum")
def einsum(args, a):
    return torch.einsum(a["equation"], *args)


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


@register_op("MaxPool")
def max_pool(args, a):
    return _pool(args, a, "max")


@register_op("AveragePool")
def average_pool(args, a):
    return _pool(args, a, "avg")


@register_op("GlobalAveragePool")
def global_average_pool(args, a):
    return args[0].mean(dim=tuple(range(2, args[0].dim())), keepdim=True)


@register_op("GlobalMaxPool")
def global_max_pool(args, a):
    return args[0].amax(dim=tuple(range(2, args[0].dim())), keepdim=True)


# ---------------------------------------------------------------------- normalization


@register_op("LayerNormalization")
def layer_normalization(args, a):
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    axis = a.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))


@register_op("BatchNormalization")
def batch_normalization(args, a):
    x, s, b, m, v = args[:5]
    return F.batch_norm(x, m, v, s, b, False, 0.0, a.get("epsilon", 1e-5))


@register_op("InstanceNormalization")
def instance_normalization(args, a):
    return F.instance_norm(args[0], weight=args[1], bias=args[2], eps=a.get("epsilon", 1e-5))


@register_op("Softmax")
def softmax(args, a):
    return torch.softmax(args[0], dim=a.get("axis", -1))


@register_op("LogSoftmax")
def log_softmax(args, a):
    return torch.log_softmax(args[0], dim=a.get("axis", -1))


# ---------------------------------------------------------------------- elementwise arithmetic


@register_op("Add")
def add(args, a):
    return torch.add(args[0], args[1])


@register_op("Sub")
def sub(args, a):
    return torch.sub(args[0], args[1])


@register_op("Mul")
def mul(args, a):
    return torch.mul(args[0], args[1])


@register_op("Div")
def div(args, a):
    """Integer division truncates toward zero, as ONNX Runtime's."""
    x, y = args[0], args[1]
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


@register_op("Pow")
def pow_(args, a):
    return torch.pow(args[0], args[1])


@register_op("Mod")
def mod(args, a):
    x, y = args
    return torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y)


@register_op("Max")
def max_(args, a):
    return torch.stack(torch.broadcast_tensors(*args)).amax(0)


@register_op("Min")
def min_(args, a):
    return torch.stack(torch.broadcast_tensors(*args)).amin(0)


@register_op("Sum")
def sum_(args, a):
    return sum(args[1:], args[0])


@register_op("Equal")
def equal(args, a):
    return torch.eq(args[0], args[1])


@register_op("Greater")
def greater(args, a):
    return torch.gt(args[0], args[1])


@register_op("GreaterOrEqual")
def greater_or_equal(args, a):
    return torch.ge(args[0], args[1])


@register_op("Less")
def less(args, a):
    return torch.lt(args[0], args[1])


@register_op("LessOrEqual")
def less_or_equal(args, a):
    return torch.le(args[0], args[1])


@register_op("And")
def and_(args, a):
    return torch.logical_and(args[0], args[1])


@register_op("Or")
def or_(args, a):
    return torch.logical_or(args[0], args[1])


@register_op("Xor")
def xor(args, a):
    return torch.logical_xor(args[0], args[1])


@register_op("Not")
def not_(args, a):
    return torch.logical_not(args[0])


@register_op("BitwiseAnd")
def bitwise_and(args, a):
    return torch.bitwise_and(args[0], args[1])


@register_op("BitwiseOr")
def bitwise_or(args, a):
    return torch.bitwise_or(args[0], args[1])


@register_op("Where")
def where(args, a):
    return torch.where(args[0].bool(), args[1], args[2])


@register_op("IsNaN")
def is_nan(args, a):
    return torch.isnan(args[0])


@register_op("IsInf")
def is_inf(args, a):
    return torch.isinf(args[0])


# ---------------------------------------------------------------------- elementwise math


@register_op("Sqrt")
def sqrt(args, a):
    return torch.sqrt(args[0])


@register_op("Exp")
def exp(args, a):
    return torch.exp(args[0])


@register_op("Log")
def log(args, a):
    return torch.log(args[0])


@register_op("Neg")
def neg(args, a):
    return torch.neg(args[0])


@register_op("Abs")
def abs_(args, a):
    return torch.abs(args[0])


@register_op("Reciprocal")
def reciprocal(args, a):
    return torch.reciprocal(args[0])


@register_op("Floor")
def floor(args, a):
    return torch.floor(args[0])


@register_op("Ceil")
def ceil(args, a):
    return torch.ceil(args[0])


@register_op("Round")
def round_(args, a):
    """Half to even, as ONNX."""
    return torch.round(args[0])


@register_op("Sign")
def sign(args, a):
    return torch.sign(args[0])


@register_op("Erf")
def erf(args, a):
    return torch.erf(args[0])


@register_op("Sin")
def sin(args, a):
    return torch.sin(args[0])


@register_op("Cos")
def cos(args, a):
    return torch.cos(args[0])


@register_op("Atan")
def atan(args, a):
    return torch.atan(args[0])


@register_op("CumSum")
def cum_sum(args, a):
    return torch.cumsum(args[0], int(args[1]))


# ---------------------------------------------------------------------- activations


@register_op("Relu")
def relu(args, a):
    return F.relu(args[0])


@register_op("Tanh")
def tanh(args, a):
    return torch.tanh(args[0])


@register_op("Sigmoid")
def sigmoid(args, a):
    return torch.sigmoid(args[0])


@register_op("LeakyRelu")
def leaky_relu(args, a):
    return F.leaky_relu(args[0], a.get("alpha", 0.01))


@register_op("Elu")
def elu(args, a):
    return F.elu(args[0], a.get("alpha", 1.0))


@register_op("Selu")
def selu(args, a):
    return F.selu(args[0])


@register_op("PRelu")
def prelu(args, a):
    return torch.where(args[0] >= 0, args[0], args[0] * args[1])


@register_op("HardSigmoid")
def hard_sigmoid(args, a):
    """y = clamp(alpha · x + beta, 0, 1)."""
    return torch.clamp(a.get("alpha", 0.2) * args[0] + a.get("beta", 0.5), 0, 1)


@register_op("HardSwish")
def hard_swish(args, a):
    return F.hardswish(args[0])


@register_op("Softplus")
def softplus(args, a):
    return F.softplus(args[0])


@register_op("Mish")
def mish(args, a):
    return F.mish(args[0])


@register_op("Gelu")
def gelu(args, a):
    return F.gelu(args[0], approximate="tanh" if a.get("approximate", "none") == "tanh" else "none")


@register_op("Clip")
def clip(args, a):
    x = args[0]
    lo = args[1] if len(args) > 1 and args[1] is not None else a.get("min")
    hi = args[2] if len(args) > 2 and args[2] is not None else a.get("max")
    if lo is not None:
        x = torch.clamp(x, min=float(lo))
    if hi is not None:
        x = torch.clamp(x, max=float(hi))
    return x


# ---------------------------------------------------------------------- reductions


@register_op("ReduceMean")
def reduce_mean(args, a):
    return _reduce(args, a, lambda x, ax, k: x.mean(dim=ax, keepdim=k))


@register_op("ReduceSum")
def reduce_sum(args, a):
    return _reduce(args, a, lambda x, ax, k: x.sum(dim=ax, keepdim=k))


@register_op("ReduceMax")
def reduce_max(args, a):
    return _reduce(args, a, lambda x, ax, k: x.amax(dim=ax, keepdim=k))


@register_op("ReduceMin")
def reduce_min(args, a):
    return _reduce(args, a, lambda x, ax, k: x.amin(dim=ax, keepdim=k))


@register_op("ReduceProd")
def reduce_prod(args, a):
    return _reduce(args, a, _prod)


@register_op("ReduceL2")
def reduce_l2(args, a):
    """sqrt(Σ x²) over the axes."""
    return _reduce(args, a, lambda x, ax, k: x.pow(2).sum(dim=ax, keepdim=k).sqrt())


@register_op("ArgMax")
def arg_max(args, a):
    return args[0].argmax(dim=a.get("axis", 0), keepdim=bool(a.get("keepdims", 1)))


# ---------------------------------------------------------------------- types and shapes


@register_op("Identity")
def identity(args, a):
    return args[0]


@register_op("Dropout")
def dropout(args, a):
    return args[0]


@register_op("Cast")
def cast(args, a):
    return args[0].to(TORCH_DTYPES[a["to"]])


@register_op("CastLike")
def cast_like(args, a):
    return args[0].to(args[1].dtype)


@register_op("Shape")
def shape(args, a):
    s = list(args[0].shape)
    start, end = a.get("start", 0), a.get("end", None)
    return torch.tensor(s[start:end], dtype=torch.int64)


@register_op("Size")
def size(args, a):
    return torch.tensor(args[0].numel(), dtype=torch.int64)


@register_op("Reshape")
def reshape(args, a):
    """A 0 in the shape copies the input's dimension unless allowzero."""
    x, shape = args[0], _ints(args[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@register_op("Flatten")
def flatten(args, a):
    """(d0, …, dn) → (d0·…·d(axis−1), d(axis)·…·dn)."""
    x = args[0]
    if a.get("axis", 1) == 0:
        return x.reshape(1, -1)
    return x.reshape(int(np.prod(x.shape[: a.get("axis", 1) % max(x.dim(), 1)] or [1])), -1)


@register_op("Transpose")
def transpose(args, a):
    return args[0].permute(a.get("perm") or list(reversed(range(args[0].dim()))))


@register_op("Squeeze")
def squeeze(args, a):
    x = args[0]
    axes = _axes(args, a)
    if not axes:
        return x.squeeze()
    axes = sorted(ax % x.dim() for ax in axes)
    for ax in reversed(axes):
        x = x.squeeze(ax)
    return x


@register_op("Unsqueeze")
def unsqueeze(args, a):
    x = args[0]
    axes = _axes(args, a)
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


@register_op("Expand")
def expand(args, a):
    """Numpy-style broadcast of the input to ``shape`` (a 1 in shape keeps the input's dim)."""
    x, shape = args[0], _ints(args[1])
    nd = max(x.dim(), len(shape))
    xs = [1] * (nd - x.dim()) + list(x.shape)
    ss = [1] * (nd - len(shape)) + shape
    target = [max(p, q) if q != 1 else p for p, q in zip(xs, ss)]
    return x.reshape(xs).expand(target)


@register_op("Tile")
def tile(args, a):
    return args[0].repeat(_ints(args[1]))


@register_op("ConstantOfShape")
def constant_of_shape(args, a):
    v = a.get("value")
    shape = _ints(args[0])
    if v is None:
        return torch.zeros(shape, dtype=torch.float32)
    return torch.full(shape, v.reshape(-1)[0].item(), dtype=v.dtype)


@register_op("Range")
def range_(args, a):
    s, l, d = (x.item() for x in args[:3])
    return torch.arange(s, l, d, dtype=args[0].dtype)


@register_op("Trilu")
def trilu(args, a):
    k = int(args[1]) if len(args) > 1 and args[1] is not None else 0
    return torch.triu(args[0], k) if a.get("upper", 1) else torch.tril(args[0], k)


@register_op("OneHot")
def one_hot(args, a):
    """out[..., i, ...] = values[1] where i == index (negative indices count from depth), else values[0]."""
    idx, depth, values = args[0].long(), int(args[1]), args[2]
    axis = a.get("axis", -1)
    idx = torch.where(idx < 0, idx + depth, idx)
    oh = F.one_hot(idx.clamp(0, depth - 1), depth).to(values.dtype)
    out = oh * (values[1] - values[0]) + values[0]
    return out.movedim(-1, axis) if axis != -1 else out


@register_op("NonZero")
def non_zero(args, a):
    return torch.stack(torch.nonzero(args[0], as_tuple=True)).long()


# ---------------------------------------------------------------------- slicing, joining, indexing


@register_op("Concat")
def concat(args, a):
    return torch.cat([x for x in args if x is not None], dim=a["axis"])


@register_op("Split")
def split(args, a):
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


@register_op("Slice")
def slice_(args, a):
    x = args[0]
    starts, ends = _ints(args[1]), _ints(args[2])
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    idx: list[Any] = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= x.dim()
        n = x.shape[ax]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            idx[ax] = slice(s, e, st)
        else:  # negative step: gather the indices explicitly
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < -1 or (e < 0 and e > -n - 1 and e != -1) else e))
            rng = list(range(s, e, st))
            idx[ax] = torch.tensor(rng, dtype=torch.long) if rng else torch.tensor([], dtype=torch.long)
    out = x
    for ax, ix in enumerate(idx):
        if isinstance(ix, torch.Tensor):
            out = out.index_select(ax, ix)
        elif ix != slice(None):
            sl: list[Any] = [slice(None)] * out.dim()
            sl[ax] = ix
            out = out[tuple(sl)]
    return out


@register_op("Gather")
def gather(args, a):
    """out[i0, …, j…, …] = x[i0, …, idx[j…], …] along ``axis``; negative indices wrap."""
    x, idx = args[0], args[1].long()
    axis = a.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1 :]))


@register_op("GatherElements")
def gather_elements(args, a):
    return torch.gather(args[0], a.get("axis", 0), args[1].long())


@register_op("GatherND")
def gather_nd(args, a):
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


@register_op("ScatterND")
def scatter_nd(args, a):
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


# ---------------------------------------------------------------------- resampling


@register_op("Resize")
def resize(args, a):
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


@register_op("Pad")
def pad(args, a):
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


# ---------------------------------------------------------------------- recurrent (LSTM, GRU, RNN)
# ONNX semantics, layout 0: X [seq, batch, input]; W [dirs, gates·hidden, input]; R [dirs,
# gates·hidden, hidden]; B [dirs, 2·gates·hidden] = (Wb, Rb); sequence_lens [batch];
# initial_h (and initial_c) [dirs, batch, hidden]. Outputs Y [seq, dirs, batch, hidden] (zero
# past a sequence's length), Y_h (and Y_c) [dirs, batch, hidden], the state at each sequence's
# last valid step. ORT's quantizer keeps these ops in float.

_ACTIVATIONS: dict[str, tuple[int, Callable[..., torch.Tensor]]] = {
    # name: (how many of activation_alpha / activation_beta it consumes, f(x, alpha, beta))
    "Sigmoid": (0, lambda x, al, be: torch.sigmoid(x)),
    "Tanh": (0, lambda x, al, be: torch.tanh(x)),
    "Relu": (0, lambda x, al, be: torch.relu(x)),
    "Softsign": (0, lambda x, al, be: x / (1 + x.abs())),
    "Softplus": (0, lambda x, al, be: F.softplus(x)),
    "LeakyRelu": (1, lambda x, al, be: F.leaky_relu(x, al)),
    "ThresholdedRelu": (1, lambda x, al, be: torch.where(x > al, x, torch.zeros_like(x))),
    "Elu": (1, lambda x, al, be: F.elu(x, al)),
    "HardSigmoid": (2, lambda x, al, be: torch.clamp(al * x + be, 0, 1)),
    "Affine": (2, lambda x, al, be: al * x + be),
    "ScaledTanh": (2, lambda x, al, be: al * torch.tanh(be * x)),
}
_ACT_DEFAULTS = {"LeakyRelu": (0.01, 0.0), "ThresholdedRelu": (1.0, 0.0), "Elu": (1.0, 0.0),
                 "HardSigmoid": (0.2, 0.5), "Affine": (1.0, 0.0), "ScaledTanh": (1.0, 1.0)}  # fmt: skip


def _activations(a: dict, op: str, defaults: list[str], dirs: int) -> list[list[Callable]]:
    """The ``activations`` attribute as one list of functions per direction; alpha and beta are
    consumed in the order of the activations that take them."""
    names = a.get("activations") or defaults * dirs
    if len(names) != len(defaults) * dirs:
        raise ExportError(f"{op} with {len(names)} activations for {dirs} direction(s) is not valid ONNX")
    alphas, betas = list(a.get("activation_alpha") or []), list(a.get("activation_beta") or [])
    fns = []
    for name in names:
        key = next((k for k in _ACTIVATIONS if k.lower() == name.lower()), None)
        if key is None:
            raise ExportError(f"{op} activation {name} is not supported by the simulator yet")
        n, f = _ACTIVATIONS[key]
        al, be = _ACT_DEFAULTS.get(key, (0.0, 0.0))
        if n >= 1 and alphas:
            al = alphas.pop(0)
        if n >= 2 and betas:
            be = betas.pop(0)
        fns.append(lambda x, f=f, al=al, be=be: f(x, al, be))
    k = len(defaults)
    return [fns[d * k : (d + 1) * k] for d in range(dirs)]


def _reverse_padded(x: torch.Tensor, lens: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence of ``x`` [seq, batch, ...] within its own length; padding stays put."""
    if lens is None:
        return x.flip(0)
    t = torch.arange(x.shape[0]).unsqueeze(1)  # [seq, 1]
    idx = torch.where(t < lens, lens - 1 - t, t)  # [seq, batch]
    return torch.gather(x, 0, idx.reshape(*idx.shape, *[1] * (x.dim() - 2)).expand_as(x))


def _scan(step, xw, states, lens, reverse):
    """Run ``step(x_t, states) → states`` over time; returns (Y [seq, batch, hidden], final states).

    States stop changing past a sequence's length, and Y is zero there, as ONNX Runtime's."""
    if reverse:
        xw = _reverse_padded(xw, lens)
    ys = []
    for t in range(xw.shape[0]):
        new = step(xw[t], states)
        if lens is None:
            states = new
            ys.append(new[0])
        else:
            live = (t < lens).unsqueeze(1)  # [batch, 1]
            states = tuple(torch.where(live, n, s) for n, s in zip(new, states))
            ys.append(torch.where(live, new[0], torch.zeros_like(new[0])))
    y = torch.stack(ys) if ys else xw.new_zeros(0, *states[0].shape)
    return (_reverse_padded(y, lens) if reverse else y), states


def _recurrent(args, a, op: str, gates: int, n_states: int, defaults: list[str], cell) -> tuple:
    """Shared driver: input projections for all steps at once, then ``cell`` per direction."""
    x, w, r = args[0], args[1], args[2]
    b, lens, h0 = _opt(args, 3), _opt(args, 4), _opt(args, 5)
    c0 = _opt(args, 6) if n_states == 2 else None
    if a.get("layout", 0) != 0:
        raise ExportError(f"{op} with layout=1 (batch first) is not supported by the simulator yet")
    direction = a.get("direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    hidden = a.get("hidden_size") or r.shape[-1]
    batch = x.shape[1]
    acts = _activations(a, op, defaults, dirs)
    clip = a.get("clip")
    lens = lens.long() if lens is not None else None
    ys, finals = [], []
    for d in range(dirs):
        wb = b[d, : gates * hidden] if b is not None else None
        rb = b[d, gates * hidden :] if b is not None else None
        xw = torch.matmul(x, w[d].transpose(0, 1))
        if wb is not None:
            xw = xw + wb
        zero = x.new_zeros(batch, hidden)
        states = (h0[d] if h0 is not None else zero,) + ((c0[d] if c0 is not None else zero,) if n_states == 2 else ())
        reverse = direction == "reverse" or d == 1
        y, st = _scan(lambda xt, s, d=d, rb=rb: cell(xt, s, r[d], rb, acts[d], clip, a, args, d), xw, states, lens, reverse)
        ys.append(y)
        finals.append(st)
    y = torch.stack(ys, dim=1)  # [seq, dirs, batch, hidden]
    return (y, *(torch.stack([f[k] for f in finals]) for k in range(n_states)))


def _cell_clip(v: torch.Tensor, clip: float | None) -> torch.Tensor:
    return v if clip is None else torch.clamp(v, -clip, clip)


def _lstm_cell(xt, s, r, rb, act, clip, a, args, d):
    """i, o, f, c gates: i = σ(x·Wiᵀ + h·Riᵀ + Pi⊙C + b), f likewise (or 1 − i with input_forget),
    c̃ = g(…), C' = f⊙C + i⊙c̃, o = σ(… + Po⊙C'), H' = o⊙h(C')."""
    f, g, h = act
    hp, cp = s
    gates = xt + torch.matmul(hp, r.transpose(0, 1))
    if rb is not None:
        gates = gates + rb
    gi, go, gf, gc = gates.chunk(4, dim=-1)
    p = _opt(args, 7)
    if p is not None:
        pi, po, pf = p[d].chunk(3)
        gi, gf = gi + pi * cp, gf + pf * cp
    i = f(_cell_clip(gi, clip))
    fg = 1 - i if a.get("input_forget", 0) else f(_cell_clip(gf, clip))
    c = fg * cp + i * g(_cell_clip(gc, clip))
    if p is not None:
        go = go + po * c
    o = f(_cell_clip(go, clip))
    return o * h(c), c


def _gru_cell(xt, s, r, rb, act, clip, a, args, d):
    """z, r, h gates: z = σ(x·Wzᵀ + h·Rzᵀ + b), r likewise, h̃ = g(x·Whᵀ + (r⊙h)·Rhᵀ + Rbh + Wbh)
    or, with linear_before_reset, g(x·Whᵀ + r⊙(h·Rhᵀ + Rbh) + Wbh); H' = (1 − z)⊙h̃ + z⊙h."""
    f, g = act
    (hp,) = s
    n = hp.shape[-1]
    xz, xr, xh = xt.chunk(3, dim=-1)
    rz_rr = torch.matmul(hp, r[: 2 * n].transpose(0, 1))
    if rb is not None:
        rz_rr = rz_rr + rb[: 2 * n]
    hz, hr = rz_rr.chunk(2, dim=-1)
    z = f(_cell_clip(xz + hz, clip))
    rg = f(_cell_clip(xr + hr, clip))
    rh, rbh = r[2 * n :].transpose(0, 1), (rb[2 * n :] if rb is not None else 0)
    if a.get("linear_before_reset", 0):
        hh = g(_cell_clip(xh + rg * (torch.matmul(hp, rh) + rbh), clip))
    else:
        hh = g(_cell_clip(xh + torch.matmul(rg * hp, rh) + rbh, clip))
    return ((1 - z) * hh + z * hp,)


def _rnn_cell(xt, s, r, rb, act, clip, a, args, d):
    """H' = f(x·Wᵀ + h·Rᵀ + Wb + Rb)."""
    (f,) = act
    (hp,) = s
    v = xt + torch.matmul(hp, r.transpose(0, 1))
    if rb is not None:
        v = v + rb
    return (f(_cell_clip(v, clip)),)


@register_op("LSTM")
def lstm(args, a):
    return _recurrent(args, a, "LSTM", 4, 2, ["Sigmoid", "Tanh", "Tanh"], _lstm_cell)


@register_op("GRU")
def gru(args, a):
    return _recurrent(args, a, "GRU", 3, 1, ["Sigmoid", "Tanh"], _gru_cell)


@register_op("RNN")
def rnn(args, a):
    return _recurrent(args, a, "RNN", 1, 1, ["Tanh"], _rnn_cell)
