"""Train the bundled sample models and write their checkpoints.

Usage (from the repository root)::

    python -m sample_models.train [NAME ...]      # default: all samples

Each named sample is trained from ``torch.manual_seed(0)`` on the CPU with
deterministic algorithms, using the sample's own ``training_batches`` (reshuffled
each epoch with ``seed=epoch``) and ``loss``.  The checkpoint
``sample_models/<name>.pt`` holds only the ``state_dict`` and is written
atomically (temporary file, then rename).  The final evaluation metric of the
reloaded checkpoint (``build_model()``) is printed.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import SAMPLES


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: int = 0


CONFIGS: dict[str, TrainConfig] = {
    "digits_cnn": TrainConfig(epochs=30, lr=3e-3, weight_decay=1e-4),
    "digits_resnet": TrainConfig(epochs=30, lr=3e-3, weight_decay=1e-4),
    "digits_vit": TrainConfig(epochs=60, lr=2e-3, weight_decay=5e-2, warmup_epochs=3),
    "diabetes_mlp": TrainConfig(epochs=60, lr=1e-3, weight_decay=1e-2),
    # an "epoch" of tiny_lm is 3200 random windows of 64 bytes (~half the training text); 6 of them
    # take about 3 minutes on one CPU core
    "tiny_lm": TrainConfig(epochs=6, lr=3e-3, weight_decay=1e-2, warmup_epochs=1),
}


def evaluate_module(spec, model: torch.nn.Module) -> float:
    model.eval()
    outs, tgts = [], []
    with torch.no_grad():
        for x, y in spec.evaluation_batches():
            outs.append(model(x))
            tgts.append(y)
    return spec.evaluate(torch.cat(outs), torch.cat(tgts))


def train_one(name: str, verbose: bool = False) -> float:
    spec = importlib.import_module(f"{__package__}.{name}")
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = spec.create_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(spec.training_batches(seed=0))
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()  # BatchNorm running statistics are accumulated here
        for x, y in spec.training_batches(seed=epoch):
            opt.zero_grad(set_to_none=True)
            loss = spec.loss(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
        if verbose and (epoch + 1) % 10 == 0:
            print(
                f"  {name} epoch {epoch + 1}: eval {evaluate_module(spec, model):.2f}", flush=True
            )
    model.eval()
    ckpt = Path(spec.CHECKPOINT)
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, ckpt)
    metric = evaluate_module(spec, spec.build_model())
    dt = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{name}: {spec.METRIC_NAME} = {metric:.2f}  params={n_params}  "
        f"checkpoint={ckpt.stat().st_size / 1024:.1f} KiB  time={dt:.1f}s",
        flush=True,
    )
    if hasattr(spec, "unigram_perplexity"):
        print(f"{name}: a unigram model's {spec.METRIC_NAME} on the same text = {spec.unigram_perplexity():.2f}", flush=True)
    return metric


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sample_models.train", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"samples to train (default: all of {', '.join(SAMPLES)})",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="print the evaluation metric every 10 epochs"
    )
    args = p.parse_args(argv)
    names = args.names or list(SAMPLES)
    unknown = [n for n in names if n not in SAMPLES]
    if unknown:
        p.error(f"unknown sample(s): {', '.join(unknown)}; choose from {', '.join(SAMPLES)}")
    torch.use_deterministic_algorithms(True)
    for name in names:
        train_one(name, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
