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
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

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


# --------------------------------------------------------------------------- text (tiny_lm)

TEXT_CONTEXT = 64
TEXT_EVAL_EVERY = 10  # every 10th chunk of the text is held out
TEXT_CHUNK = 4096  # bytes per chunk of the split
TEXT_N_EVAL = 64  # held-out windows scored (64 x 64 = 4096 predicted bytes)
TEXT_N_CALIB = 16
TEXT_EVAL_BATCH = 16
TEXT_CALIB_BATCH = 8
TEXT_TRAIN_BATCH = 32
TEXT_TRAIN_WINDOWS = 3200  # random windows per epoch (~1 pass over the training bytes)


@dataclass(frozen=True)
class TextSplit:
    train: np.ndarray  # uint8 bytes
    eval: np.ndarray


@cache
def text_split() -> TextSplit:
    """CPython's documentation topics (``pydoc_data.topics``, shipped with every Python), UTF-8 bytes.

    The topics are joined in sorted key order and cut into chunks of ``TEXT_CHUNK`` bytes; every
    ``TEXT_EVAL_EVERY``-th chunk is held out (evaluation), the rest is training text."""
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics)).encode("utf-8")
    data = np.frombuffer(text, dtype=np.uint8)
    chunks = [data[i : i + TEXT_CHUNK] for i in range(0, len(data), TEXT_CHUNK)]
    held = [c for i, c in enumerate(chunks) if i % TEXT_EVAL_EVERY == TEXT_EVAL_EVERY - 1]
    train = [c for i, c in enumerate(chunks) if i % TEXT_EVAL_EVERY != TEXT_EVAL_EVERY - 1]
    split = TextSplit(np.concatenate(train), np.concatenate(held))
    for a in (split.train, split.eval):
        a.setflags(write=False)
    return split


def _windows(data: np.ndarray, starts: np.ndarray, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, context], next-byte targets [N, context]) from windows of context + 1 bytes."""
    w = np.stack([data[s : s + context + 1] for s in starts]).astype(np.int64)
    return torch.tensor(w[:, :-1]), torch.tensor(w[:, 1:])


@cache
def _unseen_starts(context: int) -> np.ndarray:
    """``TEXT_N_EVAL`` window starts spread evenly over the held-out text, among the windows whose
    bytes occur nowhere in the training text (the documentation repeats whole passages, and a
    repeated passage would measure memory, not language modelling)."""
    s = text_split()
    train = s.train.tobytes()
    cands = np.linspace(0, len(s.eval) - context - 2, 8 * TEXT_N_EVAL).astype(np.int64)
    unseen = [c for c in cands if s.eval[c : c + context].tobytes() not in train]
    pick = np.linspace(0, len(unseen) - 1, TEXT_N_EVAL).round().astype(np.int64)
    return np.asarray(unseen, dtype=np.int64)[pick]


def text_evaluation_batches(context: int = TEXT_CONTEXT) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``TEXT_N_EVAL`` held-out windows that do not occur in the training text, in batches."""
    x, y = _windows(text_split().eval, _unseen_starts(context), context)
    return list(zip(x.split(TEXT_EVAL_BATCH), y.split(TEXT_EVAL_BATCH)))


def text_calibration_batches(context: int = TEXT_CONTEXT) -> list[torch.Tensor]:
    """``TEXT_N_CALIB`` windows spread evenly over the training text (a subset of what it trained on)."""
    data = text_split().train
    starts = np.linspace(0, len(data) - context - 2, TEXT_N_CALIB).astype(np.int64)
    x, _ = _windows(data, starts, context)
    return list(x.split(TEXT_CALIB_BATCH))


def text_training_batches(seed: int = TRAIN_SHUFFLE_SEED, context: int = TEXT_CONTEXT) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``TEXT_TRAIN_WINDOWS`` windows at seeded random offsets of the training text (same seed, same windows)."""
    data = text_split().train
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - context - 1, (TEXT_TRAIN_WINDOWS,), generator=g).numpy()
    x, y = _windows(data, starts, context)
    return list(zip(x.split(TEXT_TRAIN_BATCH), y.split(TEXT_TRAIN_BATCH)))


def perplexity(outputs: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> float:
    """exp(mean over predicted tokens of −log p(target)); outputs [N, S, V] logits, targets [N, S]
    next-token ids (``ignore_index`` positions, e.g. padding, are not scored)."""
    logits = outputs.detach().float().reshape(-1, outputs.shape[-1])
    nll = torch.nn.functional.cross_entropy(logits, targets.reshape(-1).long(), ignore_index=ignore_index)
    return float(torch.exp(nll).item())


def unigram_perplexity() -> float:
    """A unigram model's held-out perplexity per byte: byte frequencies of the training text
    (add-one smoothed), scored on the same held-out windows as the model."""
    s = text_split()
    counts = np.bincount(s.train, minlength=256).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    y = torch.cat([t for _, t in text_evaluation_batches()]).reshape(-1).numpy()
    return float(np.exp(-logp[y].mean()))


# --------------------------------------------------------------------------- one sample = a model + a task


@dataclass(frozen=True)
class Task:
    """A sample's data and metric: everything a spec needs besides its model."""

    calibration: Callable[[], list[torch.Tensor]]
    evaluation: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]
    evaluate: Callable[[torch.Tensor, torch.Tensor], float]
    training: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _text_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy (outputs (N, S, 256), targets (N, S); -100 is ignored)."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), ignore_index=-100)


DIGITS = Task(
    calibration=lambda: calibration_batches(digits_split()),  # 256 training images, batches of 64, (N, 1, 8, 8) in [0, 1]
    evaluation=lambda: evaluation_batches(digits_split()),  # 540 held-out images, batches of 64, int64 labels
    evaluate=accuracy_percent,
    training=lambda seed=0: training_batches(digits_split(), seed=seed),  # shuffled batches of 32
    loss=F.cross_entropy,
)
DIABETES = Task(
    calibration=lambda: calibration_batches(diabetes_split()),  # 128 training samples (N, 10)
    evaluation=lambda: evaluation_batches(diabetes_split()),  # 130 held-out samples, (N, 1) standardized target
    evaluate=r2_percent,  # on the standardized target: equal to R² on the original scale (one affine map)
    training=lambda seed=0: training_batches(diabetes_split(), seed=seed),  # 312 samples, batches of 32
    loss=F.mse_loss,
)
TEXT = Task(
    calibration=lambda: text_calibration_batches(),  # 16 windows of 64 training bytes, batches of 8
    evaluation=lambda: text_evaluation_batches(),  # 64 held-out windows, batches of 16, next bytes as targets
    evaluate=perplexity,  # per byte; lower is better
    training=lambda seed=0: text_training_batches(seed=seed),  # 3200 random windows, batches of 32
    loss=_text_loss,
)


class Spec(NamedTuple):
    """The functions qanalysis' spec loader and ``sample_models.train`` read from a sample module."""

    build_model: Callable[[], torch.nn.Module]
    calibration_batches: Callable[[], list[torch.Tensor]]
    evaluation_batches: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]
    evaluate: Callable[[torch.Tensor, torch.Tensor], float]
    training_batches: Callable[..., list[tuple[torch.Tensor, torch.Tensor]]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def spec(create_model: Callable[[], torch.nn.Module], checkpoint: Path, task: Task) -> Spec:
    """A sample's spec functions from its model and its task.

    ``build_model`` is ``create_model()`` with the committed ``checkpoint`` loaded, in eval() mode;
    the rest is the task's data and metric."""

    def build_model() -> torch.nn.Module:
        model = create_model()
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        return model.eval()

    def training_batches_(seed: int = TRAIN_SHUFFLE_SEED) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return task.training(seed)

    return Spec(build_model, task.calibration, task.evaluation, task.evaluate, training_batches_, task.loss)
