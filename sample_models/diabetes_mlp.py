"""Sample: regression MLP on scikit-learn's diabetes dataset (10 standardized features)."""

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


build_model, calibration_batches, evaluation_batches, evaluate, training_batches, loss = _data.spec(
    create_model, CHECKPOINT, _data.DIABETES
)
