"""Fake-quantized execution of the float ONNX graph for a config.

Quantization is a property of *edges* (a tensor as read by one node) and of weights:

* an edge into a layer is quantized iff that layer is quantized (``int8``/``int4``); a
  layer kept in ``fp16`` reads its input rounded to half precision, one in ``fp32`` reads
  it untouched — so a float layer's input really is float;
* an edge into an op ORT runs in float or shares its input's grid (ReduceMean, MaxPool,
  Reshape…) is quantized iff the layer that produced the tensor is quantized and some
  quantized layer (or the graph output) reads the result: that is the Q/DQ pair the
  producer's int8 kernel emits;
* weights are fake-quantized with the scheme's weight spec, biases to int32 with scale
  s_x·s_w, exactly as ``quantize_static`` writes them;
* a *weight-only* layer (``"w8"``/``"w4"``, or every MatMul/Gemm of a scheme with
  ``activations: null``) reads float inputs and float bias, and its weight W[K, N] is
  quantized in blocks along K exactly as ONNX Runtime's ``MatMulNBits`` quantizer (MLAS's
  ``BlockwiseQuantizer``) does — see ``block_quantize``. The engine runs MatMulNBits at
  ``accuracy_level`` 0 (float32 compute: dequantize, then an fp32 GEMM), so the simulation
  computes x · Ŵ in float32 with Ŵ = (q − z)·s.

Under the default scheme and an all-int8 config this reproduces the Q/DQ placement of
ORT's own ``quantize_static`` QDQ model (read in ``graph.read_plan``), which is what lets
the simulated metric predict the engine's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Hashable, Mapping

import torch

from . import memory
from .calibrate import TensorStats, calibration_range
from .graph import Layer, QuantGraph
from .ops import get_op
from .errors import ConfigError
from .scheme import ALL_LAYERS, Config, QParams, QRange, Scheme, WeightSpec, compute_scale_zp, weight_only_format


def broadcast_qparams(qp: QParams, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) shaped to broadcast against ``x`` (per-channel along ``qp.axis``)."""
    s, z = qp.scale, qp.zero_point.to(x.dtype)
    if qp.axis is not None and s.dim() == 1 and x.dim() > 1:
        shape = [1] * x.dim()
        shape[qp.axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return s, z


def fake_quant(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """x̂ = s · (clamp(round(x / s) + z, qmin, qmax) − z); round half to even, as ONNX Runtime."""
    s, z = broadcast_qparams(qp, x)
    if torch.is_grad_enabled() and (x.requires_grad or s.requires_grad):
        q = torch.clamp(torch.round(x / s) + z, qp.qrange.qmin, qp.qrange.qmax)
        return (q - z) * s
    # the same operations in place on one new tensor: a copy of x, not five (memory.Footprint)
    q = x / s
    return q.round_().add_(z).clamp_(qp.qrange.qmin, qp.qrange.qmax).sub_(z).mul_(s)


def quantize_weight(w: torch.Tensor, spec: WeightSpec, axis: int | None, bits: int) -> tuple[torch.Tensor, QParams]:
    """Weights as ``quantize_static`` stores them: per tensor, per channel along ``axis``, or
    in groups of ``spec.granularity`` along the reduction dimension (simulation only)."""
    qr = QRange.for_bits(bits, spec.symmetric)
    g = spec.granularity
    if g == "per_tensor" or axis is None or w.dim() < 2:
        s, z = compute_scale_zp(w.min(), w.max(), qr, spec.symmetric)
        qp = QParams(s, z, qr)
        return fake_quant(w, qp), qp
    axis = axis % w.dim()
    moved = w.movedim(axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    if g == "per_channel":
        s, z = compute_scale_zp(flat.amin(1), flat.amax(1), qr, spec.symmetric)
        qp = QParams(s, z, qr, axis=axis)
        return fake_quant(w, qp), qp
    # group-wise: groups of g consecutive reduction elements per output channel
    k = flat.shape[1]
    pad = (-k) % g
    padded = torch.nn.functional.pad(flat, (0, pad)) if pad else flat
    grouped = padded.reshape(flat.shape[0], -1, g)
    s, z = compute_scale_zp(grouped.amin(2), grouped.amax(2), qr, spec.symmetric)
    qp = QParams(s, z, qr, axis=None, group=g)
    q = torch.clamp(torch.round(grouped / s[..., None]) + z[..., None], qr.qmin, qr.qmax)
    deq = ((q - z[..., None]) * s[..., None]).reshape(flat.shape[0], -1)[:, :k]
    return deq.reshape(moved.shape).movedim(0, axis), qp


def int32_bias(b: torch.Tensor, bias_scale: torch.Tensor) -> torch.Tensor:
    """The int32 bias quantize_static writes (as float64): clip(round(b / s_b)), the division
    in float64 (ORT's quantize_bias_static_impl), half to even; s_b = fp32(s_x · s_w). In float32
    the quotient of b = 41708.5·s_b (ULP-near a tie) rounds the other way."""
    q = torch.round(b.double() / bias_scale.double())
    return torch.clamp(q, -(2.0**31), 2.0**31 - 1)


def bias_safe_weight_scale(input_scale: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor,
                           per_channel: bool) -> torch.Tensor:  # fmt: skip
    """ORT's ``_adjust_weight_scale_for_int32_bias``: when s_x · s_w is so small that the int32 bias
    b / (s_x · s_w) would overflow, quantize_static raises the (symmetric int8) weight scale until it
    fits: s_w · ratio, ratio = 1.0001 · 2·|b|max / (2³² − 2) / (s_x · s_w), in float64, cast back to
    float32; per tensor with the bias's absolute max, per channel with each channel's |b|. The
    weights then round to fewer levels (random googlenet's fc: s_w × 242,513, every weight 0 or ±1),
    and a simulation without it clips the bias to ±2³¹ and reads noise where the engine reads the bias."""
    qrange = float(2**31 - 1) - float(-(2**31) + 1)
    sx = float(input_scale.reshape(-1)[0])
    b = bias.double().reshape(-1)
    sw = weight_scale.double().clone()
    if not per_channel or sw.dim() == 0 or sw.numel() == 1:
        absmax = max(abs(min(float(b.min()), 0.0)), abs(max(float(b.max()), 0.0))) if b.numel() else 0.0
        smallest = 1.0001 * (2.0 * absmax) / qrange
        cand = sx * float(sw.reshape(-1)[0])
        if 0.0 < cand < smallest:
            return (sw * (smallest / cand)).to(weight_scale.dtype)
        return weight_scale
    smallest = 1.0001 * (2.0 * b.abs()) / qrange
    cand = sx * sw
    low = (cand < smallest) & (cand > 0.0)
    if not bool(low.any()):
        return weight_scale
    return torch.where(low, sw * (smallest / torch.where(low, cand, torch.ones_like(cand))), sw).to(weight_scale.dtype)


# --------------------------------------------------------------------------- weight-only


def roundf(x: torch.Tensor) -> torch.Tensor:
    """C's ``roundf``: round half away from zero (MLAS), unlike torch.round's half to even."""
    r = torch.round(x)
    t = torch.trunc(x)
    tie = (x - t).abs() == 0.5
    return torch.where(tie, t + torch.sign(x), r)


@dataclass(frozen=True)
class BlockQuant:
    """A MatMul weight W[K, N] quantized in blocks of ``block`` rows along K per column n, as
    ``MatMulNBits`` stores it: W[k, n] ≈ s[n, k // block] · (q[n, k] − z[n, k // block]).

    ``q``: [N, K] uint8 in [0, 2^bits − 1]; ``scale``: [N, ⌈K/block⌉] float32;
    ``zero_point``: same shape, uint8 (2^(bits−1) for a symmetric scheme, which stores none)."""

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    block: int
    symmetric: bool

    @property
    def k(self) -> int:
        return int(self.q.shape[1])

    def dequant(self) -> torch.Tensor:
        """Ŵ[K, N] = (q − z) · s in float32, MLAS's dequantization."""
        idx = torch.arange(self.k) // self.block
        s = self.scale[:, idx]
        z = self.zero_point[:, idx].float()
        return ((self.q.float() - z) * s).t().contiguous()

    def qparams(self) -> QParams:
        """The block grid as QParams (``group`` = block; scale/zero point [N, blocks])."""
        return QParams(self.scale, self.zero_point.long(), QRange(0, 2**self.bits - 1), axis=None, group=self.block)

    def packed(self) -> tuple:
        """(B, scales, zero_points) as MatMulNBits' initializers: B [N, blocks, block·bits/8]
        uint8 (low nibble first), scales [N·blocks] … (numpy arrays; zero points None when symmetric)."""
        import numpy as np

        n, k = self.q.shape
        nb = self.scale.shape[1]
        q = torch.nn.functional.pad(self.q, (0, nb * self.block - k)).reshape(n, nb, self.block).numpy().astype(np.uint8)
        if self.bits == 8:
            b = q
        elif self.bits == 4:
            b = (q[..., 0::2] & 0xF) | ((q[..., 1::2] & 0xF) << 4)
        else:
            raise ConfigError(f"MatMulNBits engines are built for 4- and 8-bit weights, not {self.bits}-bit")
        scales = self.scale.numpy().astype(np.float32)
        zp = None
        if not self.symmetric:
            z = self.zero_point.numpy().astype(np.uint8)
            if self.bits == 4:
                if nb % 2:
                    z = np.pad(z, ((0, 0), (0, 1)), constant_values=8)  # MLAS fills the spare nibble with 8
                z = (z[:, 0::2] & 0xF) | ((z[:, 1::2] & 0xF) << 4)
            zp = z.astype(np.uint8)
        return b.astype(np.uint8), scales, zp


def block_qparams(w_kn: torch.Tensor, bits: int, block: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MLAS's block ranges (float32 throughout; K padded with zeros to whole blocks):
    symmetric: m = max if |max| > |min| else min, s = m / −2^(bits−1), z = 2^(bits−1);
    asymmetric: s = (max(max, 0) − min(min, 0)) / (2^bits − 1), z = roundf(−min/s) clamped."""
    w = w_kn.detach().float().t()  # [N, K]
    n, k = w.shape
    nb = -(-k // block)
    g = torch.nn.functional.pad(w, (0, nb * block - k)).reshape(n, nb, block)
    mn, mx = g.amin(2), g.amax(2)
    kmax = float(2**bits - 1)
    if symmetric:
        m = torch.where(mx.abs() > mn.abs(), mx, mn)
        s = m / torch.tensor(-float(2 ** (bits - 1)))
        z = torch.full_like(s, float(2 ** (bits - 1)))
    else:
        mn, mx = torch.clamp(mn, max=0.0), torch.clamp(mx, min=0.0)
        s = (mx - mn) / torch.tensor(kmax)
        zf = torch.where(s != 0, torch.tensor(0.0) - mn / torch.where(s != 0, s, torch.ones_like(s)), mn)
        z = torch.clamp(roundf(zf), 0.0, kmax)
    return s.float(), z.to(torch.uint8)


def block_quantize(w_kn: torch.Tensor, bits: int, block: int, symmetric: bool, qparams: QParams | None = None) -> BlockQuant:
    """q = clamp(roundf(w · (1/s) + z), 0, 2^bits − 1) in float32, per block of K (MLAS; the
    reciprocal is rounded to float32 first, and s = 0 gives q = z). ``qparams``: a block grid
    given by a fix (GPTQ), reused exactly instead of the weight's own ranges."""
    if qparams is not None:
        s, z = qparams.scale.float(), qparams.zero_point.to(torch.uint8)
    else:
        s, z = block_qparams(w_kn, bits, block, symmetric)
    w = w_kn.detach().float().t()  # [N, K]
    idx = torch.arange(w.shape[1]) // block
    se, ze = s[:, idx], z[:, idx].float()
    recip = torch.where(se != 0, torch.tensor(1.0) / torch.where(se != 0, se, torch.ones_like(se)), torch.zeros_like(se))
    q = torch.clamp(roundf(w * recip + ze), 0.0, float(2**bits - 1)).to(torch.uint8)
    return BlockQuant(q, s, z, bits, block, symmetric)


# Float ops whose ONNX Runtime CPU kernels reduce or approximate in their own order (vectorized
# LayerNormalization, MLAS's erf polynomial, Resize's interpolation weights): the simulation runs
# them through ORT itself. A bilinear Resize between DQ and Q stays float in ORT's engines
# (lraspp_mobilenet_v3_large) and torch's interpolation differs in the last bits, enough to move
# values across a rounding boundary of the QuantizeLinear after it. ReduceL2 (F.normalize, swin_v2's
# cosine attention): ORT's sum of squares differs from torch's on 40 % of the norms, and
# swin_v2_t's simulation read 39.3 dB against its engine with every layer check exact.
ORT_FLOAT_OPS = ("LayerNormalization", "Erf", "Resize", "ReduceMean", "ReduceL2")


def _kernel_session(model, threads: int = 1):
    """An ONNX Runtime session of a one-node model, as the simulation runs ORT's own kernels: no
    spinning thread pool (a pool per node's session would fight the others and torch for the
    cores) and no memory arena (an arena per node kept each node's largest buffers: resnet18's
    convs, +0.65 GB)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = max(1, threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.enable_cpu_mem_arena = False
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _one_node_session(prog, n, types: Mapping[int, int] | None = None, out_type: int | None = None):
    """A one-node ONNX Runtime session of node ``n`` (inputs in0, in1, … of any shape, float unless
    ``types`` gives input k another ONNX element type; the output float unless ``out_type``)."""
    from onnx import TensorProto, helper

    types = types or {}
    ins = [f"in{k}" if t else "" for k, t in enumerate(n.inputs)]
    attrs = {k: v for k, v in n.attrs.items() if not isinstance(v, torch.Tensor)}
    node = helper.make_node(n.op, ins, [f"out{k}" for k in range(len(n.outputs))][:1], **attrs)
    g = helper.make_graph([node], "one",
                          [helper.make_tensor_value_info(x, types.get(k, TensorProto.FLOAT), None) for k, x in enumerate(ins) if x],
                          [helper.make_tensor_value_info("out0", out_type or TensorProto.FLOAT, None)])  # fmt: skip
    return _kernel_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", prog.opset)]))


def _float_io_session(node, grids: Mapping[str, tuple[str, str]], out_grid: tuple[str, str] | None, inits, opsets, threads: int = 1):
    """A session of ``node`` (uint8 inputs named in ``grids`` → their scale and zero point
    initializers; one uint8 output on ``out_grid``, or where it is None a float output the node
    names ``y_f`` itself) between ORT's own QuantizeLinear and
    DequantizeLinear: float32 in (``<input>_f``), float32 out (``y_f``). The input may be raw or
    already fake-quantized on the same grid: Q(x) = Q(DQ(Q(x))), since (q − z)·s / s rounds back to
    q − z in float32 for |q − z| ≤ 255. The same bits as quantizing and dequantizing around the
    kernel by hand, without the five passes over memory that took a third of efficientnet_b0's
    analysis."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("QuantizeLinear", [f"{x}_f", s, z], [x]) for x, (s, z) in grids.items()]
    if out_grid is None:  # a kernel with float output (MatMulIntegerToFloat) writes y_f itself
        assert list(node.output) == ["y_f"], node.output
        nodes.append(node)
    else:
        nodes += [node, helper.make_node("DequantizeLinear", [node.output[0], *out_grid], ["y_f"])]
    g = helper.make_graph(nodes, node.op_type, [helper.make_tensor_value_info(f"{x}_f", TensorProto.FLOAT, None) for x in grids],
                          [helper.make_tensor_value_info("y_f", TensorProto.FLOAT, None)], inits)  # fmt: skip
    return _kernel_session(helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets]), threads)


def _qlinear_session(op: str, sx: float, zx: float, sy: float, zy: float, **attrs):
    """A session of ORT's com.microsoft ``op`` (QLinearSoftmax, QLinearAveragePool,
    QLinearGlobalAveragePool; uint8 in and out, inputs x, x_scale, x_zero_point, y_scale,
    y_zero_point): the kernel an engine runs for DQ → op → Q, float in and out
    (``_float_io_session``: feed ``x_f``)."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(v, dtype=dt), name)
             for name, v, dt in (("sx", sx, np.float32), ("zx", zx, np.uint8), ("sy", sy, np.float32), ("zy", zy, np.uint8))]  # fmt: skip
    node = helper.make_node(op, ["x", "sx", "zx", "sy", "zy"], ["y"], domain="com.microsoft", **attrs)
    return _float_io_session(node, {"x": ("sx", "zx")}, ("sy", "zy"), inits, [("", 18), ("com.microsoft", 1)])


def _qlinear_binary_session(op: str, sa: float, za: int, sb: float, zb: int, sc: float, zc: int):
    """A session of ORT's com.microsoft QLinearAdd / QLinearMul (uint8 a, b and c, with
    broadcasting): the kernel an engine runs for DQ, DQ → Add/Mul → Q, float in and out
    (``_float_io_session``: feed ``a_f``, ``b_f``)."""
    import numpy as np
    from onnx import helper, numpy_helper

    arrays = [("sa", np.array(sa, np.float32)), ("za", np.array(za, np.uint8)), ("sb", np.array(sb, np.float32)),
              ("zb", np.array(zb, np.uint8)), ("sc", np.array(sc, np.float32)), ("zc", np.array(zc, np.uint8))]  # fmt: skip
    node = helper.make_node(op, ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["c"], domain="com.microsoft")
    return _float_io_session(node, {"a": ("sa", "za"), "b": ("sb", "zb")}, ("sc", "zc"), [numpy_helper.from_array(a, n) for n, a in arrays],
                             [("", 18), ("com.microsoft", 1)], torch.get_num_threads())  # fmt: skip


def _qlinear_conv_session(w_int: torch.Tensor, sw: torch.Tensor, b_int: torch.Tensor | None,
                          sx: float, zx: int, sy: float, zy: int, attrs: Mapping[str, object]):
    """A session of ONNX's QLinearConv (uint8 input and output, int8 weights with zero points 0,
    per-tensor or per-output-channel scale, int32 bias): the kernel an engine runs for
    DQ → Conv → Q, on as many threads as torch uses here, float in and out
    (``_float_io_session``: feed ``x_f``)."""
    import numpy as np
    from onnx import helper, numpy_helper

    arrays = [("sx", np.array(sx, np.float32)), ("zx", np.array(zx, np.uint8)), ("w", w_int.numpy().astype(np.int8)),
              ("sw", sw.numpy().astype(np.float32).reshape(-1)), ("zw", np.zeros(sw.numel(), np.int8)),
              ("sy", np.array(sy, np.float32)), ("zy", np.array(zy, np.uint8))]  # fmt: skip
    if b_int is not None:
        arrays.append(("b", b_int.numpy().astype(np.int32).reshape(-1)))
    node = helper.make_node("QLinearConv", ["x"] + [n for n, _ in arrays], ["y"], **attrs)
    return _float_io_session(node, {"x": ("sx", "zx")}, ("sy", "zy"), [numpy_helper.from_array(a, n) for n, a in arrays],
                             [("", 13)], torch.get_num_threads())  # fmt: skip


def _qlinear_matmul_session(op: str, w_int: torch.Tensor, sw: torch.Tensor, b_int: torch.Tensor | None,
                            sx: float, zx: int, sy: float, zy: int, trans_b: bool = False):
    """A session of the kernel an engine runs for DQ → MatMul/Gemm → Q with an int8 weight (zero
    points 0, per-tensor or per-output-column scale): ONNX's QLinearMatMul (a MatMul, no bias) or
    com.microsoft QGemm (a Gemm, int32 bias, ``trans_b``), on as many threads as torch uses here,
    float in and out (``_float_io_session``: feed ``x_f``)."""
    import numpy as np
    from onnx import helper, numpy_helper

    sw_ = sw.numpy().astype(np.float32).reshape(-1)
    if sw_.size == 1:
        sw_ = sw_.reshape(())
    arrays = [("sx", np.array(sx, np.float32)), ("zx", np.array(zx, np.uint8)), ("w", w_int.numpy().astype(np.int8)),
              ("sw", sw_), ("zw", np.zeros(sw_.shape, np.int8)), ("sy", np.array(sy, np.float32)), ("zy", np.array(zy, np.uint8))]  # fmt: skip
    if op == "MatMul":
        node = helper.make_node("QLinearMatMul", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["y"])
    else:
        if b_int is not None:
            arrays.append(("b", b_int.numpy().astype(np.int32).reshape(-1)))
        node = helper.make_node("QGemm", ["x", "sx", "zx", "w", "sw", "zw", "b" if b_int is not None else "", "sy", "zy"], ["y"],
                                domain="com.microsoft", transB=int(trans_b))  # fmt: skip
    return _float_io_session(node, {"x": ("sx", "zx")}, ("sy", "zy"), [numpy_helper.from_array(a, n) for n, a in arrays],
                             [("", 13), ("com.microsoft", 1)], torch.get_num_threads())  # fmt: skip


def _qlinear_matmul2_session(sa: float, za: int, sb: float, zb: int, y: tuple[float, int] | None):
    """A session of the kernel an engine runs for a MatMul of two uint8 activations: QLinearMatMul
    where the output is quantized (``y`` = its scale and zero point), com.microsoft
    MatMulIntegerToFloat where it stays float; float in and out (feed ``a_f``, ``b_f``)."""
    import numpy as np
    from onnx import helper, numpy_helper

    arrays = [("sa", np.array(sa, np.float32)), ("za", np.array(za, np.uint8)), ("sb", np.array(sb, np.float32)),
              ("zb", np.array(zb, np.uint8))]  # fmt: skip
    if y is not None:
        arrays += [("sy", np.array(y[0], np.float32)), ("zy", np.array(y[1], np.uint8))]
        node = helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"])
    else:
        node = helper.make_node("MatMulIntegerToFloat", ["a", "b", "sa", "sb", "za", "zb"], ["y_f"], domain="com.microsoft")
    return _float_io_session(node, {"a": ("sa", "za"), "b": ("sb", "zb")}, ("sy", "zy") if y is not None else None,
                             [numpy_helper.from_array(a, n) for n, a in arrays], [("", 13), ("com.microsoft", 1)],
                             torch.get_num_threads())  # fmt: skip


def weight_only_layout(qg: QuantGraph, layer: Layer) -> str | None:
    """How a layer's weight reads as MatMulNBits' W[K, N]: "kn" (MatMul x·W, Gemm transB=0),
    "nk" (Gemm transB=1: W stored [N, K]), or None when ORT has no weight-only kernel for it
    (Conv, a MatMul of two activations, Gemm with transA/alpha/beta)."""
    prog = qg.program
    n = prog.nodes[layer.node]
    if len(n.inputs) < 2 or n.inputs[1] not in prog.initializers or prog.initializers[n.inputs[1]].dim() != 2:
        return None
    if n.op == "MatMul":
        return "kn"
    if n.op == "Gemm":
        a = n.attrs
        if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
            return None
        return "nk" if a.get("transB", 0) else "kn"
    return None


@dataclass(frozen=True)
class LayerFormat:
    """How a config runs one layer: "int" (weights and input activations, QDQ), "w" (weights
    only, MatMulNBits), "fp16" or "fp32"; ``bits`` of the weights (None for float); ``block``:
    a weight-only layer's own MatMulNBits block ("w4g128"), None for the scheme's."""

    kind: str
    bits: int | None = None
    block: int | None = None


def dynamic_fake_quant(x: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Dynamic activations: (s, z) from each sample's own min/max at run time."""
    qr = QRange.for_bits(bits, symmetric)
    flat = x.reshape(x.shape[0], -1)
    s, z = compute_scale_zp(flat.amin(1), flat.amax(1), qr, symmetric)
    shape = [-1] + [1] * (x.dim() - 1)
    s, z = s.reshape(shape), z.reshape(shape).to(x.dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        q = torch.clamp(torch.round(x / s) + z, qr.qmin, qr.qmax)
        return (q - z) * s
    q = x / s  # in place on one new tensor, as fake_quant
    return q.round_().add_(z).clamp_(qr.qmin, qr.qmax).sub_(z).mul_(s)


@dataclass
class SimPlan:
    """What a config quantizes: a key per quantized edge, weight and graph output."""

    config: Config
    edges: dict[tuple[int, int], Hashable] = field(default_factory=dict)
    weights: dict[str, Hashable] = field(default_factory=dict)
    outputs: dict[str, Hashable] = field(default_factory=dict)
    # (the simulator's state, Simulator.integer_kernels, their raw edges) for this plan, made on its first run
    kernels: tuple[tuple, dict[int, object], set[tuple[int, int]]] | None = field(default=None, repr=False, compare=False)

    def float_tensors(self, qg: QuantGraph) -> list[str]:
        """Tensors ORT would quantize in an all-int8 engine that stay float under this config."""
        active = {qg.program.nodes[i].inputs[p] for (i, p), k in self.edges.items() if k and k[0] in ("q", "dyn")}
        active |= {o for o, k in self.outputs.items() if k}
        return sorted(t for t in qg.quantized_tensors if t not in active)


# bytes of temporaries an engine-arithmetic kernel may hold at once: it runs over blocks of samples
# that fit (float64 copies, accumulators, a conv's im2col), so its memory does not grow with the batch
KERNEL_BLOCK_BYTES = 32 * 1024**2


def _in_row_blocks(fn, args: list, rows: tuple[int, ...], bytes_per_sample) -> torch.Tensor:
    """``fn(args)`` computed over blocks of samples: the arguments at ``rows`` that carry the batch
    (dim 0) are sliced, the others are passed whole (broadcast). The kernels are exact integer
    arithmetic then elementwise rounding, so any blocking gives the same bits as one call.
    ``bytes_per_sample(args, first_output)``: what one sample's temporaries cost."""
    rank = max((args[p].dim() for p in rows if args[p] is not None), default=0)
    full = [p for p in rows if args[p] is not None and rank > 0 and args[p].dim() == rank]  # lower ranks broadcast
    n = max((int(args[p].shape[0]) for p in full), default=1)
    if n <= 1:
        return fn(args)
    full = [p for p in full if int(args[p].shape[0]) == n]

    def part(i: int, j: int):
        a = list(args)
        for p in full:
            a[p] = a[p][i:j]
        return fn(a)

    first = part(0, 1)
    step = max(1, KERNEL_BLOCK_BYTES // max(1, int(bytes_per_sample(args, first))))
    out = first.new_empty((n, *first.shape[1:]))
    out[:1] = first
    del first
    for i in range(1, n, step):
        out[i : i + step] = part(i, min(n, i + step))
    return out


def _same_state(a: tuple, b: tuple) -> bool:
    """Two conv kernel states (weight, integer bias, weight scales, scalars): the same weight
    tensor, equal bias, scales and scalars. A cached session is rebuilt when its state changed
    (a fix changed the bias or scales since)."""
    (w, bias, sw, sc), (w2, bias2, sw2, sc2) = a, b
    if w is not w2 or sc != sc2 or (bias is None) != (bias2 is None):
        return False
    return torch.equal(sw, sw2) and (bias is None or torch.equal(bias, bias2))


def _unclamped(kernel, keep: bool | set[str]):
    """``kernel``, or its unclamped by-hand twin where the run keeps the kernel's output for the
    caller (``keep`` True: every output)."""
    twin = getattr(kernel, "unclamped", None)
    if twin is None or (keep is not True and twin[0] not in keep):
        return kernel
    return twin[1]


def _raw_edges(kernels: Mapping[int, object]) -> set[tuple[int, int]]:
    """The edges (node, input position) whose fake quantization ``Simulator.run`` skips: inputs an
    ORT kernel quantizes itself (its session's QuantizeLinear, on the edge's grid)."""
    return {(i, p) for i, k in kernels.items() for p in getattr(k, "quantizes", ())}


def _f32(x: torch.Tensor):
    """``x`` as the contiguous float32 numpy array a ``_float_io_session`` reads."""
    return x.detach().contiguous().numpy()


def _all_finite(x: torch.Tensor) -> bool:
    """No inf or NaN in ``x``: a float sum is finite unless an element is not (or the sum
    overflows, then the element-wise check decides); 17× faster than ``isfinite().all()``,
    which took a sixth of efficientnet_b0's analysis."""
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def _finite_or(out: torch.Tensor, fallback) -> torch.Tensor:
    """``out``, with ``fallback()``'s values where ``out`` is not finite (an infinite input, e.g. a
    −inf attention mask read unquantized by a partial run, has no integer: the float result stands)."""
    bad = ~torch.isfinite(out)
    return torch.where(bad, fallback(), out) if bool(bad.any()) else out


class Simulator:
    """Fake-quantized runs of a QuantGraph under any config of one scheme."""

    # int8 Conv/Gemm/MatMul with a quantized output computed as ONNX Runtime's kernels do
    # (integer accumulation, float32 requantization multiplier): see ``_integer_kernel``
    engine_arithmetic: bool = True

    def __init__(self, qg: QuantGraph, stats: Mapping[str, TensorStats], scheme: Scheme):
        self.qg, self.stats, self.scheme = qg, stats, scheme
        self.prog = qg.program
        self._act: dict[tuple, QParams | None] = {}
        self._w: dict[Hashable, torch.Tensor] = {}
        # integer weights of the integer kernels, shared by every plan that quantizes a weight the
        # same way (per plan, sensitivity's 2 × layers plans held layers × weights: efficientnet GBs)
        self._wint: dict[tuple, tuple[torch.Tensor, torch.Tensor, float]] = {}  # (weight, key) → (float weight, integers, max |integer|)
        self._wqp: dict[tuple, QParams] = {}
        self._bias_layers: dict[str, list[Layer]] | None = None  # weight → layers with an int32 bias
        self.overrides: dict[str, tuple[float, float]] = {}  # tensor → forced [rmin, rmax]
        self.weight_overrides: dict[str, torch.Tensor] = {}  # initializer → replaced float value
        self.weight_qparams_override: dict[str, QParams] = {}  # initializer → exact (s, z) (AdaRound, GPTQ)
        self._layout: dict[int, str | None] = {}
        self._bq: dict[tuple[str, int, int], BlockQuant] = {}  # (weight, bits, block)
        self._ortk: dict[tuple, object] = {}  # (node, kernel, grids) → one-node ORT session (float ops, QLinear* kernels): ``_session``
        layer_nodes = set(qg.by_node)
        self._origin: dict[str, Layer | None] = {}
        self._reach: dict[int, tuple[set[int], bool]] = {}
        outs = set(self.prog.outputs)
        for i, n in enumerate(self.prog.nodes):
            if i in layer_nodes:
                continue
            layers, out_reached, todo, seen = set(), False, [i], {i}
            while todo:
                j = todo.pop()
                for o in self.prog.nodes[j].outputs:
                    out_reached |= o in outs
                    for c in self.prog.consumers.get(o, ()):
                        if c in layer_nodes:
                            layers.add(c)
                        elif c not in seen:
                            seen.add(c)
                            todo.append(c)
            self._reach[i] = (layers, out_reached)

    # ------------------------------------------------------------------ structure
    def origin(self, tensor: str) -> Layer | None:
        """The layer whose output reaches ``tensor`` through ops ORT does not quantize."""
        if tensor in self._origin:
            return self._origin[tensor]
        res, t, hops = None, tensor, 0
        while hops < 64:
            p = self.prog.producer.get(t)
            if p is None:
                break
            if p in self.qg.by_node:
                res = self.qg.by_node[p]
                break
            ins = [x for x in self.prog.nodes[p].inputs if x and x not in self.prog.initializers]
            if not ins:
                break
            t, hops = ins[0], hops + 1
        self._origin[tensor] = res
        return res

    def layout(self, layer: Layer) -> str | None:
        if layer.node not in self._layout:
            self._layout[layer.node] = weight_only_layout(self.qg, layer)
        return self._layout[layer.node]

    def layer_format(self, config: Config, layer: Layer, bits: int | None = None) -> LayerFormat:
        """The layer's format under ``config``; ``bits`` forces it quantized at those bits (in
        the weight-only format where its precision or the scheme says so). A weight-only
        precision on a layer ORT has no weight-only kernel for (Conv, the bias Add of a
        Linear named by its module) leaves that layer float."""
        p = config.layers.get(layer.name)
        if p is None and layer.module:  # "blocks.0.attn.qkv" also covers its bias Add
            p = config.layers.get(layer.module)
        if p is None:  # "*": every layer the config does not name
            p = config.layers.get(ALL_LAYERS)
        wo = self.scheme.weight_only
        wf = weight_only_format(p) if p is not None else None
        if bits is not None:
            if wf is not None or (wo and p not in ("int8", "int4")):
                return LayerFormat("w", bits, wf[1] if wf else None) if self.layout(layer) else LayerFormat("fp32")
            return LayerFormat("int", bits)
        if p is None:
            if wo:
                return LayerFormat("w", self.scheme.weights.bits) if self.layout(layer) else LayerFormat("fp32")
            return LayerFormat("int", self.scheme.weights.bits)
        if p in ("int8", "int4"):
            return LayerFormat("int", 8 if p == "int8" else 4)
        if wf is not None:
            return LayerFormat("w", wf[0], wf[1]) if self.layout(layer) else LayerFormat("fp32")
        return LayerFormat(p)

    def weight_bits(self, config: Config, layer: Layer) -> int | None:
        """The layer's weight bits (statically or weight-only quantized), None when float."""
        return self.layer_format(config, layer).bits

    def is_static(self, config: Config, layer: Layer) -> bool:
        """Quantized in the QDQ engine (weights and input activations)."""
        return self.layer_format(config, layer).kind == "int"

    def block_quant(self, plan: SimPlan, name: str) -> BlockQuant:
        """The MatMulNBits weight of initializer ``name`` under ``plan`` (a weight-only layer's)."""
        key = plan.weights[name]
        self._weight(key)
        return self._bq[(name, key[2], key[3])]

    # ------------------------------------------------------------------ qparams
    def act_qparams(self, tensor: str) -> QParams | None:
        owner = self.qg.act_owner.get(tensor, tensor)
        a = self.scheme.act
        key = (owner, a.bits, a.symmetric, a.calibration, a.percentile, self.overrides.get(owner))
        if key not in self._act:
            st = self.stats.get(owner)
            table = self._gathered_table(owner)
            if table is not None and owner not in self.overrides:
                # ORT's QDQGather: the output shares the table's parameters (its min/max, activation grid)
                c = self._float_weight(table)
                qr = QRange.for_bits(a.bits, a.symmetric)
                s_, z_ = compute_scale_zp(c.min(), c.max(), qr, a.symmetric)
                self._act[key] = QParams(s_, z_, qr)
            elif st is None:
                self._act[key] = None
            else:
                lo, hi = self.overrides.get(owner) or calibration_range(st, a)
                qr = QRange.for_bits(a.bits, a.symmetric)
                s, z = compute_scale_zp(torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32), qr, a.symmetric)
                self._act[key] = QParams(s, z, qr)
        return self._act[key]

    def _gathered_table(self, tensor: str) -> str | None:
        """The constant table a Gather reads, when ``tensor`` is that Gather's output."""
        i = self.prog.producer.get(tensor)
        if i is None:
            return None
        n = self.prog.nodes[i]
        if n.op in ("Gather", "GatherElements") and n.inputs[0] in self.prog.initializers:
            return n.inputs[0]
        return None

    def weight_qparams(self, name: str, bits: int) -> QParams:
        self._weight(("w", name, bits))
        return self._wqp[(name, bits)]

    def _bias_safe(self, name: str, qp: QParams) -> QParams:
        """``qp`` with the scale quantize_static gives a weight whose layer's int32 bias would
        overflow (``bias_safe_weight_scale``), once per such layer, as ORT does. Only symmetric
        signed weights under static activations (ORT skips uint8 or nonzero zero points)."""
        if self.scheme.act.dynamic or qp.group is not None or qp.qrange.qmin >= 0 or bool((qp.zero_point != 0).any()):
            return qp
        if self._bias_layers is None:
            self._bias_layers = {}
            for l in self.qg.layers:
                if l.bias is not None and l.act_inputs:
                    for _, w in l.weights:
                        self._bias_layers.setdefault(w, []).append(l)
        scale = qp.scale
        for layer in self._bias_layers.get(name, ()):
            aq = self.act_qparams(layer.act_inputs[0][1])
            if aq is None or aq.scale.dim():
                continue
            scale = bias_safe_weight_scale(aq.scale, scale, self._float_weight(layer.bias[1]), qp.axis is not None)
        return qp if scale is qp.scale else dataclasses.replace(qp, scale=scale)

    def _float_weight(self, name: str) -> torch.Tensor:
        return self.weight_overrides.get(name, self.prog.initializers[name]).float()

    def _weight(self, key: Hashable) -> torch.Tensor:
        if key in self._w:
            return self._w[key]
        kind = key[0]
        if kind == "w":
            _, name, bits = key
            over = self.weight_qparams_override.get(name)
            if over is not None and over.group is None and bits == self.scheme.weights.bits:
                qp = self.weight_qparams_override[name]
                wq = fake_quant(self._float_weight(name), qp)
            else:
                wq, qp = quantize_weight(self._float_weight(name), self.scheme.weights, self.qg.weight_axis.get(name), bits)
            fitted = self._bias_safe(name, qp)
            if fitted is not qp:
                qp, wq = fitted, fake_quant(self._float_weight(name), fitted)
            self._wqp[(name, bits)] = qp
            v = wq
        elif kind == "b":
            _, name, layer_name, bits = key
            layer = self.qg.by_name[layer_name]
            b = self._float_weight(name)
            aq = self.act_qparams(layer.act_inputs[0][1]) if layer.act_inputs else None
            if aq is None or not layer.weights:
                v = b
            else:
                wqp = self.weight_qparams(layer.weights[0][1], bits)
                if wqp.group is not None:
                    v = b  # group-wise weights have no single per-channel scale: keep the bias float
                else:
                    bs = (aq.scale * wqp.scale).float()
                    v = (int32_bias(b, bs) * bs.double()).float()
        elif kind == "c":  # a constant quantized like an activation: its own range, the activation grid
            c = self._float_weight(key[1])
            a = self.scheme.act
            qr = QRange.for_bits(a.bits, a.symmetric)
            s, z = compute_scale_zp(c.min(), c.max(), qr, a.symmetric)
            v = fake_quant(c, QParams(s, z, qr))
        elif kind == "wo":  # weight-only: MatMulNBits blocks along K
            _, name, bits, block, sym, layout = key
            w = self._float_weight(name)
            qp = self.weight_qparams_override.get(name)
            if qp is not None and (qp.group != block or qp.qrange.qmax != 2**bits - 1):
                qp = None  # a grid for another format (AdaRound's int8, another block)
            bq = block_quantize(w if layout == "kn" else w.t(), bits, block, sym, qp)
            self._bq[(name, bits, block)] = bq
            v = bq.dequant() if layout == "kn" else bq.dequant().t().contiguous()
        elif kind == "fp16":
            v = self._float_weight(key[1]).half().float()
        else:  # pragma: no cover
            raise KeyError(key)
        self._w[key] = v
        return v

    # ------------------------------------------------------------------ plans
    def plan(self, config: Config, *, bits: Mapping[str, int] | None = None) -> SimPlan:
        """``bits``: weight bits of named layers, before the config's precisions (sensitivity's
        one-layer runs: a layer at the scheme's bits even where a module key says "fp32")."""
        a = self.scheme.act
        plan = SimPlan(config)
        fmt = {l.name: self.layer_format(config, l, (bits or {}).get(l.name)) for l in self.qg.layers}
        prec = {n: f.bits if f.kind == "int" else None for n, f in fmt.items()}
        is_int = {l.node: prec[l.name] is not None for l in self.qg.layers}
        fp16 = {l.node: fmt[l.name].kind == "fp16" for l in self.qg.layers}
        block = self.scheme.block_size()

        def act_key(tensor: str) -> Hashable:
            if a.dynamic:
                return ("dyn", a.bits, a.symmetric)
            qp = self.act_qparams(tensor)
            return ("q", self.qg.act_owner.get(tensor, tensor)) if qp is not None else None

        for i, pos in self.qg.edges:
            t = self.prog.nodes[i].inputs[pos]
            if i in self.qg.by_node:
                key = act_key(t) if is_int[i] else (("fp16",) if fp16[i] else None)
            else:
                o = self.origin(t)
                layers, to_out = self._reach.get(i, (set(), False))
                wanted = any(is_int[l] for l in layers) or to_out
                active = wanted and (is_int[o.node] if o is not None else any(is_int[l] for l in layers))
                key = act_key(t) if active else None
            if key is not None:
                plan.edges[(i, pos)] = key
        for t in self.qg.output_quant:
            o = self.origin(t)
            if o is not None and is_int[o.node]:
                k = act_key(t)
                if k is not None:
                    plan.outputs[t] = k
        for l in self.qg.layers:
            bits = prec[l.name]
            if fmt[l.name].kind == "w":  # weight-only: the weight alone, bias and constants float
                for _, w in l.weights:
                    plan.weights[w] = ("wo", w, fmt[l.name].bits, fmt[l.name].block or block, self.scheme.weights.symmetric, self.layout(l))
                continue
            for _, w in l.weights:
                if bits is not None:
                    plan.weights[w] = ("w", w, bits)
                elif fp16[l.node]:
                    plan.weights[w] = ("fp16", w)
            for _, c in l.consts:
                if bits is not None:
                    plan.weights[c] = ("c", c)
                elif fp16[l.node]:
                    plan.weights[c] = ("fp16", c)
            if l.bias is not None:
                b = l.bias[1]
                if bits is not None and not a.dynamic:
                    plan.weights[b] = ("b", b, l.name, bits)
                elif fp16[l.node]:
                    plan.weights[b] = ("fp16", b)
        return plan

    def fp32_plan(self) -> SimPlan:
        return SimPlan(Config(scheme=self.scheme, layers={l.name: "fp32" for l in self.qg.layers}))

    def changed_nodes(self, a: SimPlan, b: SimPlan) -> set[int]:
        """Nodes whose inputs or weights differ between two plans (not their descendants)."""
        out: set[int] = set()
        for k in set(a.edges) | set(b.edges):
            if a.edges.get(k) != b.edges.get(k):
                out.add(k[0])
        for w in set(a.weights) | set(b.weights):
            if a.weights.get(w) != b.weights.get(w):
                out.update(self.prog.consumers.get(w, ()))
        for w in self.weight_overrides:
            out.update(self.prog.consumers.get(w, ()))
        # a node run as an integer kernel in one plan and in float in the other (its output is
        # requantized only where every reader quantizes it) computes other values from the same inputs
        out.update(set(self.plan_kernels(a)) ^ set(self.plan_kernels(b)))
        return out

    # ------------------------------------------------------------------ running
    def _apply(self, key: Hashable, v: torch.Tensor, tensor: str) -> torch.Tensor:
        if key is None:
            return v
        if key[0] == "q":
            qp = self.act_qparams(tensor)
            return fake_quant(v, qp) if qp is not None else v
        if key[0] == "dyn":
            return dynamic_fake_quant(v, key[1], key[2])
        if key[0] == "fp16":
            return v.half().float()
        raise KeyError(key)  # pragma: no cover

    def weights_for(self, plan: SimPlan) -> dict[str, torch.Tensor]:
        w = {name: self._float_weight(name) for name in self.weight_overrides}
        w.update({name: self._weight(k) for name, k in plan.weights.items()})
        return w

    # ------------------------------------------------------------------ the engine's integer kernels
    def _session(self, key: tuple, make):
        """The cached one-node ORT session under ``key``: the node, the kernel and every grid it was
        built for. Plans of one simulator give one node different grids (a MatMul's output
        quantized in the full plan, float in its only-this-layer plan; another calibration), and
        a session keyed by the node alone handed one plan another's kernel. (The weighted
        kernels, QLinearConv / QLinearMatMul / QGemm, keep one session per layer and weight
        variant instead and rebuild it when its state changes: ``_same_state``. Their sessions
        hold a copy of the weight, so stale variants are not kept.)"""
        sess = self._ortk.get(key)
        if sess is None:
            sess = self._ortk[key] = make()
        return sess

    def _on_grid(self, plan: SimPlan, i: int):
        """Node ``i``'s activation inputs read through Q/DQ (``positions``) and a function that
        fake-quantizes them as their edges do. An ORT kernel (``_float_io_session``) quantizes
        those inputs itself, so ``Simulator.run`` hands them over raw (rne(x/s) of a value already
        on the grid gives back its integer: the same bits, without a fake-quantized copy of every
        input); its by-hand fallbacks put them on the grid first."""
        names = self.prog.nodes[i].inputs
        keys = {p: k for p in range(len(names)) if (k := plan.edges.get((i, p))) is not None and k[0] == "q"}

        def on_grid(args: list) -> list:
            return [self._apply(keys[p], a, names[p]) if p in keys and a is not None else a for p, a in enumerate(args)]

        on_grid.positions = tuple(keys)
        return on_grid

    def _read_quantized(self, plan: SimPlan, t: str) -> bool:
        """Every reader of ``t`` (and the graph output, if it is one) reads it through Q/DQ."""
        prog = self.prog
        reads = [plan.edges.get((c, p)) for c in prog.consumers.get(t, ()) for p, x in enumerate(prog.nodes[c].inputs) if x == t]
        if t in prog.outputs:
            reads.append(plan.outputs.get(t))
        return bool(reads) and all(k is not None and k[0] == "q" for k in reads)

    def _quantized_output(self, plan: SimPlan, layer: Layer) -> str | None:
        """The tensor whose grid the engine requantizes ``layer``'s output onto (QLinearConv,
        QGemm, QLinearMatMul): its own output, or that of the ReLU/Clip ORT fuses into it; None
        when the output stays float (then ORT runs the op in float on dequantized inputs)."""
        prog = self.prog
        t = layer.output
        if self._read_quantized(plan, t):
            return t
        cons = prog.consumers.get(t, ())
        if len(cons) == 1 and t not in prog.outputs and prog.nodes[cons[0]].op in ("Relu", "Clip"):
            o = prog.nodes[cons[0]].outputs[0]
            if self._read_quantized(plan, o):
                return o
        return None

    def _const_qparams(self, name: str) -> QParams:
        """A constant quantized like an activation (its own range), as ``_weight``'s "c" key."""
        c = self._float_weight(name)
        a = self.scheme.act
        qr = QRange.for_bits(a.bits, a.symmetric)
        s, z = compute_scale_zp(c.min(), c.max(), qr, a.symmetric)
        return QParams(s, z, qr)

    def _add_kernel(self, plan: SimPlan, layer: Layer):
        """ONNX Runtime's QLinearAdd (uint8) as MLAS runs it on x86 (AVX2, float multiply with
        FMA): r_a = fp32(s_a / s_c), r_b = fp32(s_b / s_c), c₀ = fp32(z_c − fma(r_a, z_a, fp32(r_b·z_b))),
        q_c = clamp(rne(fma(q_a, r_a, fma(q_b, r_b, c₀)))) on the raw q_a, q_b (zero points
        folded into c₀). Against (â + b̂)/s_c the cancellation in c₀ moves values like −1.49999
        steps across the rounding boundary (measured: tiny_lm's residual adds). A constant
        input (a bias) is on its own grid, as ``_weight``'s "c" key."""
        if self.prog.nodes[layer.node].op != "Add":
            return None
        qps = self._input_qparams(plan, layer)
        if qps is None:
            return None
        y_t = self._quantized_output(plan, layer)
        yq = self.act_qparams(y_t) if y_t else None
        if yq is None or yq.scale.dim() or (yq.qrange.qmin, yq.qrange.qmax) != (0, 255):
            return None
        sa, sb, sc = (q.scale.float() for q in (*qps, yq))
        za, zb, zc = (float(q.zero_point) for q in (*qps, yq))
        ra, rb = float((sa / sc).float()), float((sb / sc).float())

        def f32(v):
            return v.float().double() if isinstance(v, torch.Tensor) else float(torch.tensor(v, dtype=torch.float64).float())

        # an fma rounds once: the float64 product of a float32 and an 8-bit integer is exact
        c0 = f32(zc - f32(ra * za + f32(rb * zb)))

        def block(args):
            b = args[1].double().div_(float(sb)).round_().add_(zb).mul_(rb).add_(c0).float()
            a = args[0].double().div_(float(sa)).round_().add_(za).mul_(ra)
            a = a.add_(b) if a.shape == torch.broadcast_shapes(a.shape, b.shape) else a + b  # in place unless a broadcasts
            del b
            out = a.float()
            del a
            out.round_().clamp_(0.0, 255.0).sub_(zc).mul_(sc)
            return _finite_or(out, lambda: args[0] + args[1])

        def run(args, attrs):
            # over blocks of samples (written out of place on the whole batch, resnet50's residual
            # adds held 18 float32 copies of their output at once)
            return _in_row_blocks(block, args, (0, 1), lambda a, y: 24 * y[0].numel())

        return self._binary_by_ort(plan, layer.node, "QLinearAdd", qps, yq, run)

    def _binary_by_ort(self, plan: SimPlan, i: int, op: str, qps: list[QParams], yq: QParams, by_hand):
        """Node ``i``'s QLinearAdd / QLinearMul run by ORT's own kernel on the quantized inputs: the
        same bits as ``by_hand`` on the x86 paths it models (tested), the engine's own on any other
        CPU, and 4–8× faster. ``by_hand`` stays for autograd and non-finite inputs."""
        (sa, za), (sb, zb), (sc, zc) = ((float(q.scale), int(q.zero_point)) for q in (*qps, yq))
        on_grid = self._on_grid(plan, i)

        def run(args, attrs):
            a, b = args[0], args[1]
            if a.dtype != torch.float32 or b.dtype != torch.float32 or a.requires_grad or b.requires_grad:
                return by_hand(on_grid(args), attrs)
            if not (_all_finite(a) and _all_finite(b)):  # an infinity read raw is finite on the grid
                args = on_grid(args)
                a, b = args[0], args[1]
                if not (_all_finite(a) and _all_finite(b)):
                    return by_hand(args, attrs)
            sess = self._session((i, op, sa, za, sb, zb, sc, zc), lambda: _qlinear_binary_session(op, sa, za, sb, zb, sc, zc))

            def block(ab):
                return torch.from_numpy(sess.run(None, {"a_f": _f32(ab[0]), "b_f": _f32(ab[1])})[0])

            return _in_row_blocks(block, [a, b], (0, 1), lambda ab, y: 15 * y[0].numel())  # broadcast inputs are at most the output

        run.quantizes = on_grid.positions
        return run

    def _input_qparams(self, plan: SimPlan, layer: Layer) -> list[QParams] | None:
        """Both inputs' grids of a two-input layer (an activation read through Q/DQ, or a constant
        on its own grid), uint8 per-tensor; None where an input is read in float."""
        node = self.prog.nodes[layer.node]
        if len(node.inputs) != 2:
            return None
        qps = []
        for pos, t in enumerate(node.inputs):
            k = plan.edges.get((layer.node, pos))
            if k is not None and k[0] == "q":
                qp = self.act_qparams(t)
            elif (plan.weights.get(t) or (None,))[0] == "c":
                qp = self._const_qparams(t)
            else:
                return None
            if qp is None or qp.scale.dim() or (qp.qrange.qmin, qp.qrange.qmax) != (0, 255):
                return None
            qps.append(qp)
        return qps

    def _mul_kernel(self, plan: SimPlan, layer: Layer):
        """ONNX Runtime's QLinearMul (uint8) as MLAS runs it on x86 (SSE2): the integer product
        p = (q_a − z_a)·(q_b − z_b) (exact), r = fp32(fp32(s_a·s_b) / s_c),
        q_c = clamp(rne(fp32(fp32(p·r) + z_c))) — a multiply and an add, no FMA. Against
        â·b̂ / s_c the float product rounds elsewhere and flips outputs lying near a rounding
        boundary by one step (tiny_lm's attention scale and GELU halves)."""
        qps = self._input_qparams(plan, layer)
        y_t = self._quantized_output(plan, layer)
        yq = self.act_qparams(y_t) if (qps and y_t) else None
        if yq is None or yq.scale.dim() or (yq.qrange.qmin, yq.qrange.qmax) != (0, 255):
            return None
        sa, sb, sc = (q.scale.float() for q in (*qps, yq))
        zc = float(yq.zero_point)
        r = ((sa * sb).float() / sc).float()

        def block(args):
            p = args[0].double().div_(float(sa)).round_()
            q = args[1].double().div_(float(sb)).round_()
            p = p.mul_(q) if p.shape == torch.broadcast_shapes(p.shape, q.shape) else p * q  # in place unless p broadcasts
            del q
            y = p.float()
            del p
            y.mul_(r).add_(zc).round_().clamp_(0.0, 255.0).sub_(zc).mul_(sc)
            return _finite_or(y, lambda: args[0] * args[1])

        def run(args, attrs):
            return _in_row_blocks(block, args, (0, 1), lambda a, y: 24 * y[0].numel())

        return self._binary_by_ort(plan, layer.node, "QLinearMul", qps, yq, run)

    def _matmul2_kernel(self, plan: SimPlan, layer: Layer):
        """A MatMul of two quantized activations (attention's q·kᵀ and softmax·v) as ORT runs it:
        the integer products summed exactly, then QLinearMatMul's requantization
        q = rne(fp32(acc)·fp32(fp32(s_a·s_b)/s_y)) where the output is quantized, else
        MatMulIntegerToFloat's y = fp32(acc)·fp32(s_a·s_b) — not a float32 sum of â·b̂."""
        node = self.prog.nodes[layer.node]
        if node.op != "MatMul" or layer.weights or len(layer.act_inputs) != 2:
            return None
        qps = self._input_qparams(plan, layer)
        if qps is None:
            return None
        y_t = self._quantized_output(plan, layer)
        yq = self.act_qparams(y_t) if y_t else None
        if yq is not None and yq.scale.dim():
            return None
        sa, sb = (q.scale.float() for q in qps)
        sab = (sa * sb).float()
        m = (sab / yq.scale.float()).float() if yq is not None else None
        sy = yq.scale.float() if yq is not None else None

        def block(args):
            a = torch.round(args[0].double() / float(sa))
            b = torch.round(args[1].double() / float(sb))
            acc = torch.matmul(a, b).float()  # integers: float64 sums are exact, then as ORT's float
            if m is None:
                return acc * sab
            return torch.round(acc * m) * sy

        def run(args, attrs):
            if args[0].dim() < 3 or args[1].dim() < 3:  # a 2-D product has no batch to split
                return block(args)
            return _in_row_blocks(block, args, (0, 1), lambda a, y: 8 * (a[0][0].numel() + a[1][0].numel()) + 12 * y[0].numel())

        # on uint8 grids: ORT's kernel itself (QLinearMatMul / MatMulIntegerToFloat), the same bits
        if any((q.qrange.qmin, q.qrange.qmax) != (0, 255) for q in (*qps, *([yq] if yq is not None else []))):
            return run
        (fsa, za), (fsb, zb) = ((float(q.scale), int(q.zero_point)) for q in qps)
        y = (float(yq.scale), int(yq.zero_point)) if yq is not None else None
        i = layer.node
        on_grid = self._on_grid(plan, i)

        def run_ort(args, attrs):
            a, b = args[0], args[1]
            if a.dtype != torch.float32 or b.dtype != torch.float32 or a.requires_grad or b.requires_grad or a.dim() < 2 or b.dim() < 2:
                return run(on_grid(args), attrs)
            if not (_all_finite(a) and _all_finite(b)):  # an infinity read raw is finite on the grid
                return run(on_grid(args), attrs)
            sess = self._session((i, "qmatmul2", fsa, za, fsb, zb, y), lambda: _qlinear_matmul2_session(fsa, za, fsb, zb, y))

            def block(ab):
                return torch.from_numpy(sess.run(None, {"a_f": _f32(ab[0]), "b_f": _f32(ab[1])})[0])

            if a.dim() < 3 or b.dim() < 3:
                return block([a, b])
            return _in_row_blocks(block, [a, b], (0, 1), lambda ab, y: 5 * (ab[0][0].numel() + ab[1][0].numel()) + 5 * y[0].numel())

        run_ort.quantizes = on_grid.positions
        if yq is not None:  # a kept output is the value before the clamp to the output grid
            run_ort.unclamped = (layer.output, run)
        return run_ort

    def _softmax_kernel(self, plan: SimPlan, i: int):
        """ONNX Runtime's QLinearSoftmax (uint8), which ORT fuses from DQ → Softmax → Q, run by ORT
        itself in a one-node session on the quantized input. Its arithmetic (a float32 table
        e[k] = exp((k − 255 + β)·s_x) of k = q − max(q) + 255, a float32 row sum, then
        q_y = rne(e · ⌊1 / s_y⌋ / Σ) + z_y) differs from softmax-then-quantize by a step on a fraction
        of the outputs; modelled by hand it matched plain attention but not scores plus a bias or a
        mask (maxvit_t's relative-position bias: 35 steps off at the worst; Hugging Face BERT's
        additive mask), so the simulation now asks the kernel itself."""
        node = self.prog.nodes[i]
        if plan.edges.get((i, 0), (None,))[0] != "q" or not self._read_quantized(plan, node.outputs[0]):
            return None
        xq, yq = self.act_qparams(node.inputs[0]), self.act_qparams(node.outputs[0])
        if xq is None or yq is None or xq.scale.dim() or yq.scale.dim():
            return None
        if (xq.qrange.qmin, xq.qrange.qmax, yq.qrange.qmin, yq.qrange.qmax) != (0, 255, 0, 255):
            return None
        axis = int(node.attrs.get("axis", -1 if self.prog.opset >= 13 else 1))
        sx, zx, sy, zy = float(xq.scale), float(xq.zero_point), float(yq.scale), float(yq.zero_point)
        fallback = get_op("Softmax", node.name)
        on_grid = self._on_grid(plan, i)

        def run(args, attrs):
            x = args[0]
            if x.dtype != torch.float32 or x.requires_grad:
                return fallback(on_grid(args), attrs)  # autograd (QAT): softmax, then the edge's fake quantization
            # opset: the Softmax's own (before 13, softmax over the input coerced to 2-D at ``axis``)
            sess = self._session((i, "qsoftmax", sx, zx, sy, zy),
                                 lambda: _qlinear_session("QLinearSoftmax", sx, zx, sy, zy, axis=axis, opset=self.prog.opset))  # fmt: skip
            return torch.from_numpy(sess.run(None, {"x_f": _f32(x)})[0])

        run.quantizes = on_grid.positions
        return run

    def _pool_kernel(self, plan: SimPlan, i: int):
        """ONNX Runtime's QLinearAveragePool / QLinearGlobalAveragePool (uint8), fused from
        DQ → AveragePool → Q, run by ORT itself on the quantized input: its integer sum and
        requantization differ from pooling dequantized values and rounding by a step on part of
        the outputs (densenet121's transition pools: 18,430 values of 4 images, 44 dB simulated vs
        engine at the output)."""
        node = self.prog.nodes[i]
        if plan.edges.get((i, 0), (None,))[0] != "q" or not node.outputs or not self._read_quantized(plan, node.outputs[0]):
            return None
        xq, yq = self.act_qparams(node.inputs[0]), self.act_qparams(node.outputs[0])
        if xq is None or yq is None or xq.scale.dim() or yq.scale.dim():
            return None
        if (xq.qrange.qmin, xq.qrange.qmax, yq.qrange.qmin, yq.qrange.qmax) != (0, 255, 0, 255):
            return None
        sx, zx, sy, zy = float(xq.scale), int(xq.zero_point), float(yq.scale), int(yq.zero_point)
        keys = ("kernel_shape", "strides", "pads", "ceil_mode", "count_include_pad", "auto_pad", "dilations")
        attrs = {k: v for k, v in node.attrs.items() if k in keys and not isinstance(v, torch.Tensor)}
        op = "QLinearGlobalAveragePool" if node.op == "GlobalAveragePool" else "QLinearAveragePool"
        fallback = get_op(node.op, node.name)
        on_grid = self._on_grid(plan, i)

        def run(args, a):
            x = args[0]
            if x.dtype != torch.float32 or x.requires_grad or x.dim() < 3:
                return fallback(on_grid(args), a)
            sess = self._session((i, "qpool", sx, zx, sy, zy), lambda: _qlinear_session(op, sx, zx, sy, zy, channels_last=0, **attrs))
            return _in_row_blocks(lambda b: torch.from_numpy(sess.run(None, {"x_f": _f32(b[0])})[0]),
                                  [x], (0,), lambda b, y: 5 * b[0][0].numel() + 5 * y[0].numel())  # fmt: skip

        run.quantizes = on_grid.positions
        return run

    def _integer_kernel(self, plan: SimPlan, layer: Layer):
        """``layer``'s op as ONNX Runtime's int8 kernel computes it, or None where the simulation's
        float arithmetic is already the engine's. With integers x̄ = q_x − z_x, w̄ = q_w, b̄ = round(b / (s_x·s_w)):

            acc = Σ x̄·w̄ + b̄                       exact (float32 sums of < 2²⁴ / (255·max|w̄|) terms, added in float64)
            q_y = clamp(rne(fp32(acc) · M) + z_y),  M = fp32(fp32(s_x · s_w) / s_y)   (MlasRequantizeOutput)

        and the value handed on is (q_y − z_y)·s_y before the clamp, which the output edge's
        fake quantization reproduces exactly. Float32 accumulation instead of int32 and a
        division by s_y instead of the multiplier M flip a few outputs by one step per layer,
        and through depth those flips grow into the simulated-vs-engine gap."""
        prog = self.prog
        node = prog.nodes[layer.node]
        if node.op not in ("Conv", "Gemm", "MatMul") or len(layer.act_inputs) != 1 or len(layer.weights) != 1 or layer.consts:
            return None
        if node.op == "Gemm" and (node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0):
            return None
        x_pos, x_t = layer.act_inputs[0]
        w_pos, w_name = layer.weights[0]
        if plan.edges.get((layer.node, x_pos), (None,))[0] != "q" or (plan.weights.get(w_name) or (None,))[0] != "w":
            return None
        b_pos, b_name = layer.bias if layer.bias else (None, None)
        if b_name is not None and (plan.weights.get(b_name) or (None,))[0] != "b":
            return None
        y_t = self._quantized_output(plan, layer)
        xq, yq = self.act_qparams(x_t), (self.act_qparams(y_t) if y_t else None)
        if xq is None or yq is None or xq.scale.dim() or yq.scale.dim():
            return None
        wq = self.weight_qparams(w_name, plan.weights[w_name][2])
        if wq.group is not None:
            return None
        w = self._weight(plan.weights[w_name])
        if w.dim() != (2 if node.op != "Conv" else w.dim()):
            return None
        # per-channel scales must lie along the output channel: Conv [N, M, ...] dim 1, Gemm/MatMul [..., N] last
        if wq.scale.dim() == 1 and wq.scale.numel() > 1:
            along_n = wq.axis == 0 if node.op == "Conv" else wq.axis == (0 if node.attrs.get("transB", 0) else 1)
            if not along_n:
                return None
        sx, sy = xq.scale.float(), yq.scale.float()
        sw = wq.scale.float().reshape(-1)
        cached = self._wint.get((w_name, plan.weights[w_name]))
        if cached is not None and cached[0] is w:
            w_int, w_max = cached[1], cached[2]
        else:
            s, _ = broadcast_qparams(wq, w)
            w_int = torch.round(w / s)
            w_max = float(w_int.abs().max())  # once per weight: per kernel, a tenth of convnext_tiny's sensitivity
        # x̄·w̄ products are integers ≤ 255·128, so float32 sums are exact while K·255·128 < 2²⁴:
        # the reduction is split into chunks that short (float32 kernels), chunk sums added in float64
        group = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
        k_axis_w = 1 if node.op == "Conv" or (node.op == "Gemm" and node.attrs.get("transB", 0)) else 0
        k_axis_x = 1 if node.op == "Conv" else -1
        k = w[0].numel() if node.op == "Conv" else int(w.shape[k_axis_w])
        per_k = w[0, 0].numel() if node.op == "Conv" else 1  # kernel positions per input channel
        terms = 2**24 // (255 * max(1, int(w_max)))
        step = max(1, terms // per_k)
        if k <= terms:
            chunks = [None]
        elif group == 1 and per_k <= terms:
            chunks = [slice(c, c + step) for c in range(0, int(w.shape[k_axis_w]), step)]
        else:
            chunks = []  # float64 in one go
        if cached is None or cached[0] is not w:
            w_int = w_int.to(torch.float32 if chunks else torch.float64)
            self._wint[(w_name, plan.weights[w_name])] = (w, w_int, w_max)
        b_int = None
        if b_name is not None:
            b_int = int32_bias(self._float_weight(b_name), (sx * sw).float())
        m = ((sx * sw).float() / sy).float()
        op = get_op(node.op, node.name)

        def shaped(v: torch.Tensor, nd: int) -> torch.Tensor:
            if v.numel() == 1:
                return v.reshape(())
            return v.reshape([1, -1] + [1] * (nd - 2)) if node.op == "Conv" else v.reshape(-1)

        def block(args, attrs):
            # in place where it can be: the temporaries are a float64 copy of the input, the
            # float64 accumulator and (a conv) torch's im2col buffer
            args = list(args)
            x_int = (args[x_pos] / sx).round_()
            if b_pos is not None and b_pos < len(args):
                args[b_pos] = None
            if not chunks:
                args[x_pos], args[w_pos] = x_int.double(), w_int
                del x_int
                acc = op(args, attrs).double()
                args[x_pos] = None
            else:
                acc = None
                for c in chunks:
                    args[x_pos] = x_int if c is None else x_int.narrow(k_axis_x % x_int.dim(), c.start, min(c.stop, x_int.shape[k_axis_x]) - c.start)
                    args[w_pos] = w_int if c is None else w_int.narrow(k_axis_w, c.start, min(c.stop, w_int.shape[k_axis_w]) - c.start)
                    part = op(args, attrs)
                    if acc is None:
                        acc = part.double()
                    else:
                        acc += part
                    del part
                del x_int
                args[x_pos] = None
            if b_int is not None:
                acc += shaped(b_int, acc.dim())
            n = acc.float()
            del acc
            return n.mul_(shaped(m, n.dim())).round_().mul_(sy)

        kernel_positions = math.prod(int(d) for d in w.shape[2:]) if node.op == "Conv" else 0

        def temporaries(args, y):  # per sample: float64 input and accumulator, float32 output, im2col
            x0 = args[x_pos][0]
            im2col = 8 * int(x0.shape[0]) * kernel_positions * math.prod(int(d) for d in y.shape[2:]) if kernel_positions else 0
            return 8 * x0.numel() + 12 * y[0].numel() + im2col

        def run(args, attrs):
            # over blocks of samples: on a whole batch these temporaries were most of a chunk's
            # peak (resnet50, 32 images: 16 of 25 MB a sample at the largest convs)
            if x_pos != 0:  # W·x: the activation's rows are not samples
                return block(args, attrs)
            return _in_row_blocks(lambda a: block(a, attrs), args, (x_pos,), temporaries)

        # a conv on the uint8/int8 grids ORT's QLinearConv takes: ORT's kernel itself, the same bits as
        # the sums above (exact integers, the same requantization) at a fraction of the time (resnet18's
        # 3×3 convs: 5–13× faster than the chunked float32 sums, which dominated the analysis)
        zx, zy = int(xq.zero_point), int(yq.zero_point)
        # and so for a MatMul (QLinearMatMul) or Gemm (QGemm) with an int8 weight (swin_t: the by-hand
        # sums of its MatMuls were a third of its analysis)
        ortable = (x_pos == 0 and w_pos == 1 and (b_pos in (None, 2))
                   and (xq.qrange.qmin, xq.qrange.qmax, yq.qrange.qmin, yq.qrange.qmax) == (0, 255, 0, 255)
                   and bool((wq.zero_point == 0).all()) and w_max <= 127)  # fmt: skip
        if not ortable:
            return run
        key = (layer.node, ("qlinear", plan.weights[w_name]))
        conv_attrs = {k: v for k, v in node.attrs.items()
                      if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides") and not isinstance(v, torch.Tensor)}  # fmt: skip
        fsx, fsy = float(sx), float(sy)
        on_grid = self._on_grid(plan, layer.node)

        def session():
            if node.op == "Conv":
                return _qlinear_conv_session(w_int, sw, b_int, fsx, zx, fsy, zy, conv_attrs)
            return _qlinear_matmul_session(node.op, w_int, sw, b_int, fsx, zx, fsy, zy, bool(node.attrs.get("transB", 0)))

        def runs_in_ort(x: torch.Tensor) -> bool:
            if x.dtype != torch.float32 or x.requires_grad:
                return False
            return x.dim() == w.dim() if node.op == "Conv" else (x.dim() == 2 if node.op == "Gemm" else x.dim() >= 2)

        def run_ort(args, attrs):
            x = args[x_pos]
            if not runs_in_ort(x):
                return run(on_grid(args), attrs)
            # one session per layer and weight variant, shared by the plans' kernels; rebuilt when a
            # fix has changed this kernel's weight, bias (bias correction) or scales since
            entry = self._ortk.get(key)
            state = (w, b_int, sw, (fsx, zx, fsy, zy))
            if entry is None or not _same_state(entry[0], state):
                entry = (state, session())
                self._ortk[key] = entry
            sess = entry[1]

            def block(a):
                return torch.from_numpy(sess.run(None, {"x_f": _f32(a[x_pos])})[0])

            # over blocks of samples: the float32 input (a copy where it is not contiguous), ORT's uint8 input and output, the float32 output
            return _in_row_blocks(block, list(args), (x_pos,), lambda a, y: 5 * a[x_pos][0].numel() + 5 * y[0].numel())

        # a run that keeps this output for its caller (bias correction's pre-activations, the depth
        # SQNR of layers.csv) reads the value before the clamp to the output grid, which readers
        # through Q/DQ never see but a fused ReLU's grid would cut at zero: ``Simulator.run`` swaps in
        # the by-hand kernel, the same integers unclamped
        run_ort.unclamped = (layer.output, run)
        run_ort.quantizes = on_grid.positions
        return run_ort

    def integer_kernels(self, plan: SimPlan) -> dict[int, object]:
        """Node index → the engine's integer arithmetic for the plan's int8 Conv/Gemm/MatMul and
        Add layers and the Softmax nodes ORT runs as QLinearSoftmax."""
        if not self.engine_arithmetic:
            return {}
        out = {}
        for l in self.qg.layers:
            if not self.is_static(plan.config, l) or self.weight_bits(plan.config, l) != 8:
                continue
            op = self.prog.nodes[l.node].op
            if op == "MatMul" and not l.weights:
                fn = self._matmul2_kernel(plan, l)
            elif op in ("Conv", "Gemm", "MatMul"):
                fn = self._integer_kernel(plan, l)
            else:
                fn = {"Add": self._add_kernel, "Mul": self._mul_kernel}.get(op, lambda *_: None)(plan, l)
            if fn is not None:
                out[l.node] = fn
        for i, n in enumerate(self.prog.nodes):
            if n.op == "Softmax" and i not in out:
                fn = self._softmax_kernel(plan, i)
                if fn is not None:
                    out[i] = fn
            elif n.op in ("AveragePool", "GlobalAveragePool") and i not in out:
                fn = self._pool_kernel(plan, i)
                if fn is not None:
                    out[i] = fn
            elif n.op in ORT_FLOAT_OPS and i not in out:
                out[i] = self._ort_float_kernel(i, channels_last=self._nhwc_in_engine(plan, i))
        return out

    def _nhwc_in_engine(self, plan: SimPlan, i: int) -> bool:
        """A spatial ReduceMean (global average pooling) whose input the engine reads quantized: ORT's
        int8 engine runs the convolutions channels-last (NhwcTransformer) and its transpose optimizer
        moves the layout through the ReduceMean, which then sums over axes (1, 2) of an NHWC tensor,
        in another order than over (2, 3) of NCHW (regnet_y_800mf's squeeze-excitation means: one
        value a step off, 58 dB simulated vs engine at the output). Only where the mean goes on
        quantized to every reader (a squeeze-excitation's 1×1 conv): a mean that leaves the graph
        in float keeps ORT's NCHW order (measured both ways on ORT 1.32)."""
        n = self.prog.nodes[i]
        k = plan.edges.get((i, 0))
        if n.op != "ReduceMean" or k is None or k[0] != "q" or not n.outputs or n.outputs[0] in self.prog.outputs:
            return False
        y = n.outputs[0]
        readers = [plan.edges.get((c, pos)) for c in self.prog.consumers.get(y, ())
                   for pos, t in enumerate(self.prog.nodes[c].inputs) if t == y]  # fmt: skip
        return bool(readers) and all(r is not None and r[0] == "q" for r in readers)

    def _ort_float_kernel(self, i: int, channels_last: bool = False):
        """Node ``i`` (a float op ORT computes in its own order: ``ORT_FLOAT_OPS``) run by ONNX
        Runtime itself in a one-node session, so the float values the engine quantizes next are
        the engine's to the last bit; float32 inference only (autograd and other dtypes: torch).
        ``channels_last``: a 4-D ReduceMean over (2, 3) runs on the NHWC tensor over (1, 2)."""
        from onnx import TensorProto

        n = self.prog.nodes[i]
        fallback = get_op(n.op, n.name)
        ints = {torch.int64: TensorProto.INT64, torch.int32: TensorProto.INT32}

        def spatial(args) -> bool:
            axes = args[1] if len(args) > 1 and args[1] is not None else n.attrs.get("axes")
            if axes is None or args[0].dim() != 4 or not n.attrs.get("keepdims", 1):
                return False
            return sorted(int(a) % 4 for a in torch.as_tensor(axes).reshape(-1).tolist()) == [2, 3]

        def run(args, attrs):
            # float32 data; integer inputs (a Resize's sizes) pass as they are
            if any(a is not None and ((a.dtype != torch.float32 and a.dtype not in ints) or a.requires_grad) for a in args):
                return fallback(args, attrs)
            nhwc = channels_last and "axes" not in n.attrs and spatial(args)  # opset ≥ 18: axes is an input
            if nhwc:
                args = [args[0].permute(0, 2, 3, 1), torch.tensor([1, 2], dtype=torch.int64), *args[2:]]
            key = (i, nhwc)
            if key not in self._ortk:
                types = {k: ints.get(a.dtype, TensorProto.FLOAT) for k, a in enumerate(args) if a is not None}
                self._ortk[key] = _one_node_session(self.prog, n, types)
            feeds = {f"in{k}": a.detach().contiguous().numpy() for k, a in enumerate(args) if a is not None}
            y = torch.from_numpy(self._ortk[key].run(None, feeds)[0])
            return y.permute(0, 3, 1, 2) if nhwc else y

        return run

    def plan_kernels(self, plan: SimPlan) -> dict[int, object]:
        """``integer_kernels(plan)``, made once per plan and simulator state."""
        key = (id(self), self.engine_arithmetic, tuple(sorted(self.overrides.items())), tuple(sorted(self.weight_overrides)),
               tuple(sorted(self.weight_qparams_override)))  # fmt: skip
        if plan.kernels is None or plan.kernels[0] != key:
            ks = self.integer_kernels(plan)
            plan.kernels = (key, ks, _raw_edges(ks))
        return plan.kernels[1]

    def run(
        self,
        feeds: Mapping[str, torch.Tensor],
        plan: SimPlan,
        *,
        env: Mapping[str, torch.Tensor] | None = None,
        nodes: set[int] | None = None,
        keep: bool | set[str] = False,
    ) -> dict[str, torch.Tensor]:
        nodes_ = self.prog.nodes
        edges = plan.edges

        def edge(i: int, pos: int, v: torch.Tensor) -> torch.Tensor:
            k = edges.get((i, pos))
            return v if k is None or (i, pos) in raw else self._apply(k, v, nodes_[i].inputs[pos])

        ops = self.plan_kernels(plan)
        raw = plan.kernels[2]
        if keep:  # what the caller reads raw: ORT's QLinearConv clamps, the by-hand kernel does not
            ops = {i: _unclamped(k, keep) for i, k in ops.items()}
            raw = _raw_edges(ops)
        out = self.prog.run(feeds, env=env, nodes=nodes, edge=edge, weights=self.weights_for(plan), keep=keep, ops=ops)
        for t, k in plan.outputs.items():
            if t in out:
                out[t] = self._apply(k, out[t], t)
        return out

    def output(self, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The model output a metric sees (the first graph output)."""
        return env[self.prog.outputs[0]].float()

    def outputs(self, batches, plan: SimPlan) -> torch.Tensor:
        """Model outputs on evaluation batches ``[(inputs, targets), …]`` under ``plan``, concatenated."""
        with torch.inference_mode():
            chunks = memory.chunks(batches, lambda x: self.footprint(x).live)
            return torch.cat([self.output(self.run(dict(zip(self.qg.input_names, x)), plan)) for x in chunks])

    def footprint(self, x: tuple[torch.Tensor, ...]) -> memory.Footprint:
        """What one sample of inputs shaped like ``x`` costs in a run (measured once per shape)."""
        if getattr(self, "_footprints", None) is None:
            self._footprints = memory.Footprints(self.prog, self.qg.input_names)
        return self._footprints(x)
