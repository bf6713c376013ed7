"""Spec whose evaluation batches carry None as targets (issue 10)."""
import torch


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


def calibration_batches():
    return [torch.randn(8, 4, generator=torch.Generator().manual_seed(1))]


def evaluation_batches():
    return [(torch.randn(8, 4, generator=torch.Generator().manual_seed(2)), None)]
