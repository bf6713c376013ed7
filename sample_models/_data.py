"""Shared, deterministic data helpers for the bundled sample models.

Data comes only from scikit-learn's bundled datasets (no downloads).

Splits are made once per dataset: the samples are shuffled with a fixed numpy
seed, the *last* ``n_eval`` shuffled samples are the held-out evaluation split
and the rest is the training split.  The calibration set is the first
``n_calib`` samples of the training split (a subset of it, never of the
evaluation split).

Every function returns freshly built tensors (copies), so callers may modify
them freely, and calling a function twice yields identical tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

SPLIT_SEED = 0
TRAIN_SHUFFLE_SEED = 0

EVAL_BATCH = 64
CALIB_BATCH = 64
TRAIN_BATCH = 32

DIGITS_N_EVAL = 540
DIGITS_N_CALIB = 256
DIABETES_N_EVAL = 130
DIABETES_N_CALIB = 128


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    n_calib: int


def _shuffled_split(n: int, n_eval: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    return perm[: n - n_eval], perm[n - n_eval :]


@cache
def digits_split() -> Split:
    """load_digits: 1797 images 8x8, pixels scaled to [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = (ds.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = ds.target.astype(np.int64)
    tr, ev = _shuffled_split(len(x), DIGITS_N_EVAL)
    split = Split(x[tr], y[tr], x[ev], y[ev], DIGITS_N_CALIB)
    for a in (split.x_train, split.y_train, split.x_eval, split.y_eval):
        a.setflags(write=False)
    return split


@cache
def diabetes_split() -> Split:
    """load_diabetes (raw features): 442 samples x 10 features.

    Features and the target are standardized with mean/std computed on the
    training split only; targets have shape (N, 1) to match the model output.
    """
    from sklearn.datasets import load_diabetes

    ds = load_diabetes(scaled=False)
    x = ds.data.astype(np.float64)
    y = ds.target.astype(np.float64).reshape(-1, 1)
    tr, ev = _shuffled_split(len(x), DIABETES_N_EVAL)
    x_mean, x_std = x[tr].mean(axis=0), x[tr].std(axis=0)
    y_mean, y_std = y[tr].mean(axis=0), y[tr].std(axis=0)
    xs = ((x - x_mean) / x_std).astype(np.float32)
    ys = ((y - y_mean) / y_std).astype(np.float32)
    split = Split(xs[tr], ys[tr], xs[ev], ys[ev], DIABETES_N_CALIB)
    for a in (split.x_train, split.y_train, split.x_eval, split.y_eval):
        a.setflags(write=False)
    return split


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.array(a))  # always a copy


def calibration_batches(split: Split, batch_size: int = CALIB_BATCH) -> list[torch.Tensor]:
    x = _t(split.x_train[: split.n_calib])
    return list(x.split(batch_size))


def evaluation_batches(
    split: Split, batch_size: int = EVAL_BATCH
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _t(split.x_eval), _t(split.y_eval)
    return list(zip(x.split(batch_size), y.split(batch_size)))


def training_batches(
    split: Split, batch_size: int = TRAIN_BATCH, seed: int = TRAIN_SHUFFLE_SEED
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole training split, shuffled with a seeded torch.Generator.

    The same ``seed`` always gives the same order; pass a different seed
    (e.g. the epoch number) for a different shuffle.
    """
    x, y = _t(split.x_train), _t(split.y_train)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    return list(zip(x.split(batch_size), y.split(batch_size)))


def accuracy_percent(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy in percent; outputs are (N, C) logits, targets (N,) class ids."""
    pred = outputs.detach().reshape(len(outputs), -1).argmax(dim=1)
    return float((pred == targets.reshape(-1).to(pred.device)).double().mean().item() * 100.0)


def r2_percent(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Coefficient of determination R^2 x 100 (over all outputs at once)."""
    pred = outputs.detach().double().reshape(-1)
    y = targets.detach().double().reshape(-1).to(pred.device)
    ss_res = ((y - pred) ** 2).sum()
    ss_tot = ((y - y.mean()) ** 2).sum()
    return float((1.0 - ss_res / ss_tot).item() * 100.0)
