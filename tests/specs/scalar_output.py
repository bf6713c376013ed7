"""Spec whose model returns one number per batch (a 0-d tensor) (issue 10)."""
import torch


class Summed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x).sum()


def build_model():
    return Summed().eval()


def calibration_batches():
    return [torch.randn(8, 4, generator=torch.Generator().manual_seed(1))]


def evaluation_batches():
    return [(torch.randn(8, 4, generator=torch.Generator().manual_seed(2)), torch.zeros(8))]


def evaluate(outputs, targets):
    return float(-(outputs - targets.sum()).abs().mean())
