"""One channel of a tensor against its own quantization grid: the per-channel drill-down.

``outliers.distribution`` shows a whole tensor; with per-channel (or group-wise) weight
scales every output channel has its own grid, so the grid and clipping bounds are only
meaningful channel by channel. For an output channel ``c`` of a weight ``W`` quantized
along ``axis`` with scale ``s_c`` and zero point ``z_c``:

    grid_c = { s_c · (q − z_c) : q ∈ [qmin, qmax] },   bounds = [s_c · (qmin − z_c), s_c · (qmax − z_c)]

Activations are calibrated per tensor and only each channel's absmax is recorded, so an
activation channel is shown as its absmax against the tensor's clipping bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .calibrate import TensorStats
from .errors import ConfigError
from .metrics import sqnr_db
from .simulate import Simulator


@dataclass(frozen=True)
class ChannelView:
    """A channel's values (weights: a histogram; activations: the absmax only) and its grid."""

    layer: str
    tensor: str  # "weight" | "activation"
    name: str  # the tensor's ONNX name
    channel: int
    n_channels: int
    centers: list[float]  # histogram of the channel's values (empty for activations)
    counts: list[float]
    absmax: float
    rmin: float | None  # clipping bounds this channel is quantized with
    rmax: float | None
    grid: list[float] = field(default_factory=list)  # representable values in [rmin, rmax]
    scale: float | None = None
    zero_point: int | None = None
    sqnr_db: float | None = None  # the channel's weights after fake quantization vs FP32
    note: str = ""


def _weight_channel(sim: Simulator, layer_name: str, channel: int, bins: int) -> ChannelView:
    layer = sim.qg.layer(layer_name)
    if not layer.weights:
        raise ConfigError(f"layer {layer_name!r} has no weights")
    wname = layer.weights[0][1]
    w = sim._float_weight(wname)
    axis = sim.qg.weight_axis.get(wname)
    ax = 0 if axis is None or w.dim() < 2 else axis % w.dim()
    n = int(w.shape[ax]) if w.dim() >= 1 else 1
    if not 0 <= channel < n:
        raise ConfigError(f"{wname} has channels 0..{n - 1}, not {channel}")
    bits = sim.scheme.weights.bits
    wq = sim._weight(("w", wname, bits))  # fake-quantized as the analysis simulates it
    values = w.movedim(ax, 0)[channel].reshape(-1) if w.dim() >= 1 else w.reshape(-1)
    qvalues = wq.movedim(ax, 0)[channel].reshape(-1) if w.dim() >= 1 else wq.reshape(-1)
    lo, hi = float(values.min()), float(values.max())
    h = torch.histc(values, bins=bins, min=lo, max=hi if hi > lo else lo + 1e-12)
    edges = torch.linspace(lo, hi if hi > lo else lo + 1e-12, bins + 1)
    qp = sim.weight_qparams(wname, bits)
    scale = qp.scale.reshape(-1) if qp.group is None else qp.scale
    zp = qp.zero_point.reshape(-1) if qp.group is None else qp.zero_point
    g = sim.scheme.weights.granularity
    if qp.group is not None:  # [C, n_groups]: draw the bounds of the channel's widest group
        k = int(torch.argmax(scale[channel]))
        s, z = float(scale[channel, k]), int(zp[channel, k])
        note = (f"{bits}-bit weights in groups of {qp.group}: {scale.shape[1]} scales in this channel, "
                f"{float(scale[channel].min()):.4g} to {s:.4g}; the widest group's bounds are drawn")  # fmt: skip
    elif scale.numel() == 1:
        s, z = float(scale[0]), int(zp[0])
        note = f"{bits}-bit weights, per tensor: every channel shares this grid"
    else:
        s, z = float(scale[channel]), int(zp[channel])
        note = f"{bits}-bit weights, {g}: this channel's own scale"
    qr = qp.qrange
    return ChannelView(
        layer=layer_name, tensor="weight", name=wname, channel=channel, n_channels=n,
        centers=((edges[:-1] + edges[1:]) / 2).tolist(), counts=[float(c) for c in h.tolist()],
        absmax=float(values.abs().max()), rmin=(qr.qmin - z) * s, rmax=(qr.qmax - z) * s,
        grid=[(q - z) * s for q in range(qr.qmin, qr.qmax + 1)], scale=s, zero_point=z,
        sqnr_db=sqnr_db(values, qvalues), note=note,
    )  # fmt: skip


def _activation_channel(sim: Simulator, stats: dict[str, TensorStats], layer_name: str, channel: int) -> ChannelView:
    layer = sim.qg.layer(layer_name)
    if not layer.act_inputs:
        raise ConfigError(f"layer {layer_name!r} has no quantized input activation")
    t = layer.act_inputs[0][1]
    st = stats.get(sim.qg.act_owner.get(t, t))
    if st is None:
        raise ConfigError(f"no calibration statistics for {t!r}")
    n = int(st.channel_absmax.numel())
    if not 0 <= channel < n:
        raise ConfigError(f"{t} has channels 0..{n - 1}, not {channel}")
    qp = sim.act_qparams(t)
    rmin = rmax = s = None
    z = None
    if qp is not None:
        s, z = float(qp.scale), int(qp.zero_point)
        rmin, rmax = (qp.qrange.qmin - z) * s, (qp.qrange.qmax - z) * s
    return ChannelView(
        layer=layer_name, tensor="activation", name=t, channel=channel, n_channels=n, centers=[], counts=[],
        absmax=float(st.channel_absmax[channel]), rmin=rmin, rmax=rmax, scale=s, zero_point=z,
        note="activations are quantized per tensor: every channel shares the tensor's range; "
             "calibration records each channel's absmax, not its histogram",
    )  # fmt: skip


def channel_view(
    sim: Simulator, stats: dict[str, TensorStats], layer_name: str, tensor: str, channel: int, bins: int = 64
) -> ChannelView:
    """Channel ``channel`` of the layer's weight (output channel, along the quantization axis)
    or of its input activation (along the calibration's channel axis)."""
    if tensor == "weight":
        return _weight_channel(sim, layer_name, channel, bins)
    if tensor == "activation":
        return _activation_channel(sim, stats, layer_name, channel)
    raise ConfigError(f"tensor must be 'weight' or 'activation', got {tensor!r}")
