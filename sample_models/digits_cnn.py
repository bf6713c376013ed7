"""Sample: plain CNN with BatchNorm on scikit-learn's 8x8 handwritten digits."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

try:  # imported as part of the ``sample_models`` package
    from . import _data
except ImportError:  # loaded by file path (qanalysis' spec loader): the same module, from the installed package
    from sample_models import _data

DESCRIPTION = "Plain CNN (3 conv+BN+ReLU, max-pool, global pool, linear) on sklearn 8x8 digits"
METRIC_NAME = "accuracy (%)"
CHECKPOINT = Path(__file__).with_name("digits_cnn.pt")


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            bn=nn.BatchNorm2d(c_out),
            relu=nn.ReLU(),
        )
    )


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) -> (N, 10) logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(1, 16)
        self.conv2 = _conv_bn_relu(16, 32)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = _conv_bn_relu(32, 32)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        x = self.conv3(self.pool(x))
        return self.fc(self.flatten(self.gap(x)))


def create_model() -> nn.Module:
    """A freshly initialised (untrained) model."""
    return DigitsCNN()


build_model, calibration_batches, evaluation_batches, evaluate, training_batches, loss = _data.spec(
    create_model, CHECKPOINT, _data.DIGITS
)
