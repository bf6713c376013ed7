"""Sample: regression MLP on scikit-learn's diabetes dataset (10 standardized features)."""

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
    "Regression MLP 10-64-64-1 (ReLU) on sklearn diabetes, standardized features and target"
)
METRIC_NAME = "R² (%)"
CHECKPOINT = Path(__file__).with_name("diabetes_mlp.pt")


class DiabetesMLP(nn.Module):
    """(N, 10) standardized features -> (N, 1) standardized disease-progression target."""

    def __init__(self, in_features: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(in_features, hidden),
                relu1=nn.ReLU(),
                fc2=nn.Linear(hidden, hidden),
                relu2=nn.ReLU(),
                out=nn.Linear(hidden, 1),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def create_model() -> nn.Module:
    """A freshly initialised (untrained) model."""
    return DiabetesMLP()


def build_model() -> nn.Module:
    """The trained model, weights from the committed checkpoint, in eval() mode."""
    model = create_model()
    model.load_state_dict(torch.load(CHECKPOINT, map_location="cpu", weights_only=True))
    return model.eval()


def calibration_batches() -> list[torch.Tensor]:
    """128 training-split samples in batches of 64, float32 (N, 10)."""
    return _data.calibration_batches(_data.diabetes_split())


def evaluation_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """130 held-out samples in batches of 64: (float32 (N, 10), float32 (N, 1) standardized target)."""
    return _data.evaluation_batches(_data.diabetes_split())


def evaluate(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """R² x 100, computed on the *standardized* target (outputs and targets as given).

    Standardization is one affine map applied to both predictions and targets, so
    this equals R² on the original target scale exactly (up to float rounding).
    """
    return _data.r2_percent(outputs, targets)


def training_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole training split (312 samples) in shuffled batches of 32 (same seed -> same order)."""
    return _data.training_batches(_data.diabetes_split(), seed=seed)


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, targets)
