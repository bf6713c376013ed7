"""Spec: a head of ten SiLUs (x·sigmoid(x)) on a large tensor, then two heavy convolutions.
In int8 each SiLU is a QLinearSigmoid and a QLinearMul; in float ONNX Runtime fuses it into one
QuickGelu kernel, faster; the convolutions are faster in int8. So the fastest engine keeps the
SiLU head float and the convolutions int8 (measured, 2 cores: 0.38 ms vs all-INT8 0.47 ms and
FP32 0.85 ms). (The float ops come first: a float consumer of an int8 conv's output
would make ONNX Runtime run that conv in float.) Targets are the FP32 model's own predictions."""

from __future__ import annotations

import torch
from torch import nn

DESCRIPTION = "int8 conv + float-faster elementwise tail (latency-aware search test)"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(10):
            x = x * torch.sigmoid(x)
        y = self.conv2(torch.relu(self.conv(x)))
        return self.head(y.mean(dim=(2, 3)))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def _x(seed: int, n: int) -> torch.Tensor:
    return torch.randn(n, 32, 32, 32, generator=torch.Generator().manual_seed(seed))


def calibration_batches():
    return [_x(1, 8)]


def evaluation_batches():
    m = build_model()
    x = _x(2, 16)
    with torch.no_grad():
        return [(x, m(x).argmax(1))]
