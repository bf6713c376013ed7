"""Spec with a 1-output head and the default metric (top-1 accuracy): it cannot move (issue 10)."""
import torch


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).eval()


def calibration_batches():
    return [torch.randn(8, 4, generator=torch.Generator().manual_seed(1))]


def evaluation_batches():
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g))]
