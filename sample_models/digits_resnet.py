"""Sample: small residual network with depthwise-separable convs (MobileNet-style) on 8x8 digits."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
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


def build_model() -> nn.Module:
    """The trained model, weights from the committed checkpoint, in eval() mode."""
    model = create_model()
    model.load_state_dict(torch.load(CHECKPOINT, map_location="cpu", weights_only=True))
    return model.eval()


def calibration_batches() -> list[torch.Tensor]:
    """256 training-split images in batches of 64, float32 (N, 1, 8, 8) in [0, 1]."""
    return _data.calibration_batches(_data.digits_split())


def evaluation_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """540 held-out images in batches of 64: (float32 (N, 1, 8, 8), int64 (N,) labels)."""
    return _data.evaluation_batches(_data.digits_split())


def evaluate(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy in percent over all evaluation outputs."""
    return _data.accuracy_percent(outputs, targets)


def training_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole training split in shuffled batches of 32 (same seed -> same order)."""
    return _data.training_batches(_data.digits_split(), seed=seed)


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets)
