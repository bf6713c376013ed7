"""Sample: small residual network with depthwise-separable convs (MobileNet-style) on 8x8 digits."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

try:  # imported as part of the ``sample_models`` package
    from . import _data
except ImportError:  # loaded by file path (qanalysis' spec loader): the same module, from the installed package
    from sample_models import _data

DESCRIPTION = (
    "Residual net: depthwise-separable blocks with Add skips and a 1x1 downsample, on 8x8 digits"
)
METRIC_NAME = "accuracy (%)"
CHECKPOINT = Path(__file__).with_name("digits_resnet.pt")


def _conv_bn(conv: nn.Conv2d, relu: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=conv, bn=nn.BatchNorm2d(conv.out_channels)
    )
    if relu:
        layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)


class DepthwiseSeparableBlock(nn.Module):
    """out = relu(skip(x) + pw(dw(x))).

    dw: depthwise 3x3 conv (groups=C_in, carries the stride) + BN + ReLU
    pw: pointwise 1x1 conv C_in -> C_out + BN
    skip: identity, or a 1x1 strided conv + BN ("downsample") when the stride or
    channel count changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = _conv_bn(
            nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False), relu=True
        )
        self.pw = _conv_bn(nn.Conv2d(c_in, c_out, 1, bias=False), relu=False)
        if stride != 1 or c_in != c_out:
            self.downsample = _conv_bn(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), relu=False
            )
        else:
            self.downsample = None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(skip + self.pw(self.dw(x)))


class DigitsResNet(nn.Module):
    """(N, 1, 8, 8) -> (N, 10) logits.

    stem 1->32 @8x8, block1 32->32 @8x8, block2 32->64 stride 2 @4x4 (downsample
    skip), block3 64->64 @4x4, global average pool, fc.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(nn.Conv2d(1, 32, 3, padding=1, bias=False), relu=True)
        self.block1 = DepthwiseSeparableBlock(32, 32)
        self.block2 = DepthwiseSeparableBlock(32, 64, stride=2)
        self.block3 = DepthwiseSeparableBlock(64, 64)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(self.flatten(self.gap(x)))


def create_model() -> nn.Module:
    """A freshly initialised (untrained) model."""
    return DigitsResNet()


build_model, calibration_batches, evaluation_batches, evaluate, training_batches, loss = _data.spec(
    create_model, CHECKPOINT, _data.DIGITS
)
