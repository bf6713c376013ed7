"""Spec whose model cannot run on its batches (shape mismatch)."""
import torch


def build_model():
    return torch.nn.Linear(5, 2)


def calibration_batches():
    return [torch.randn(4, 3)]


def evaluation_batches():
    return [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))]
