"""Spec missing build_model()."""
import torch


def calibration_batches():
    return [torch.randn(4, 3)]


def evaluation_batches():
    return [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))]
