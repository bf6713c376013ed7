"""Sample: plain CNN with BatchNorm on scikit-learn's 8x8 handwritten digits."""

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
