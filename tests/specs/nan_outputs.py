"""Spec whose model outputs NaN."""
import torch


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x) * float("nan")


def build_model():
    return M()


def calibration_batches():
    return [torch.randn(4, 3)]


def evaluation_batches():
    return [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))]
