"""The bundled sample models (sample_models/*.py spec files) honour their contract."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import pytest
import torch

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "sample_models"

# Minimum quality of the committed checkpoints on the evaluation split (a maximum for tiny_lm,
# whose metric, perplexity, is lower-is-better).
TARGETS = {
    "digits_cnn": 96.0,
    "digits_resnet": 95.0,
    "digits_vit": 93.0,
    "diabetes_mlp": 40.0,
    "tiny_lm": 8.0,
}
NAMES = list(TARGETS)
LOWER_IS_BETTER = {"tiny_lm"}
TOKENS = {"tiny_lm"}  # inputs are int64 token ids, not float32 features
MAX_CHECKPOINT_BYTES = 1_000_000
MAX_CHECKPOINT_BYTES_LM = 4_000_000  # "a few MB at most"
METRIC_NAMES = {"diabetes_mlp": "R² (%)", "tiny_lm": "perplexity (per byte)"}


def load_spec(name: str):
    """Load a spec file by path, the way the qanalysis loader does."""
    spec = importlib.util.spec_from_file_location(
        f"_test_sample_{name}", SAMPLES_DIR / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Sample(NamedTuple):
    name: str
    mod: ModuleType
    model: torch.nn.Module


_cache: dict[str, Sample] = {}


@pytest.fixture(params=NAMES)
def sample(request) -> Sample:
    name = request.param
    if name not in _cache:
        mod = load_spec(name)
        _cache[name] = Sample(name, mod, mod.build_model())
    return _cache[name]


def test_samples_registry_matches_files():
    from sample_models import SAMPLES

    assert tuple(SAMPLES) == tuple(NAMES)
    for name in NAMES:
        assert (SAMPLES_DIR / f"{name}.py").is_file()
        assert (SAMPLES_DIR / f"{name}.pt").is_file()


def test_constants(sample: Sample):
    name, mod = sample.name, sample.mod
    assert isinstance(mod.DESCRIPTION, str) and mod.DESCRIPTION and "\n" not in mod.DESCRIPTION
    assert mod.METRIC_NAME == METRIC_NAMES.get(name, "accuracy (%)")
    assert getattr(mod, "HIGHER_IS_BETTER", True) is (name not in LOWER_IS_BETTER)


def test_model_is_eval_and_checkpoint_small(sample: Sample):
    name, model = sample.name, sample.model
    assert isinstance(model, torch.nn.Module)
    assert not model.training and not any(m.training for m in model.modules())
    ckpt = SAMPLES_DIR / f"{name}.pt"
    assert ckpt.stat().st_size < (MAX_CHECKPOINT_BYTES_LM if name in TOKENS else MAX_CHECKPOINT_BYTES)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert state.keys() == model.state_dict().keys()


def test_batchnorm_stats_are_trained(sample: Sample):
    name, model = sample.name, sample.model
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if name in ("digits_cnn", "digits_resnet"):
        assert bns
    for bn in bns:
        assert int(bn.num_batches_tracked) > 0
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_calibration_batches_run(sample: Sample):
    mod, model = sample.mod, sample.model
    batches = list(mod.calibration_batches())
    assert batches
    with torch.no_grad():
        for x in batches:
            assert isinstance(x, torch.Tensor) and x.dtype == (torch.int64 if sample.name in TOKENS else torch.float32)
            out = model(x)
            assert out.shape[0] == x.shape[0] and torch.isfinite(out).all()


def test_evaluation_meets_target(sample: Sample):
    name, mod, model = sample.name, sample.mod, sample.model
    outs, tgts = [], []
    with torch.no_grad():
        for x, y in mod.evaluation_batches():
            assert x.dtype == (torch.int64 if name in TOKENS else torch.float32)
            outs.append(model(x))
            tgts.append(y)
    outputs, targets = torch.cat(outs), torch.cat(tgts)
    metric = mod.evaluate(outputs, targets)
    assert isinstance(metric, float) and math.isfinite(metric)
    if name in LOWER_IS_BETTER:
        assert metric <= TARGETS[name], f"{name}: {mod.METRIC_NAME} {metric:.2f} > {TARGETS[name]}"
    else:
        assert metric >= TARGETS[name], f"{name}: {mod.METRIC_NAME} {metric:.2f} < {TARGETS[name]}"
    # The loss accepts the evaluation outputs/targets too.
    assert torch.isfinite(mod.loss(outputs, targets))


def _assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        if isinstance(u, torch.Tensor):
            assert torch.equal(u, v)
        else:
            _assert_same(u, v)


def test_batches_are_deterministic(sample: Sample):
    name, mod = sample.name, sample.mod
    _assert_same(list(mod.calibration_batches()), list(mod.calibration_batches()))
    _assert_same(list(mod.evaluation_batches()), list(mod.evaluation_batches()))
    _assert_same(list(mod.training_batches()), list(mod.training_batches()))
    # A freshly loaded module instance yields the same data.
    other = load_spec(name)
    _assert_same(list(mod.evaluation_batches()), list(other.evaluation_batches()))
    _assert_same(list(mod.training_batches()), list(other.training_batches()))


def test_training_batches_match_model(sample: Sample):
    name, mod = sample.name, sample.mod
    batches = list(mod.training_batches())
    assert batches
    x, y = batches[0]
    assert x.dtype == (torch.int64 if name in TOKENS else torch.float32) and x.shape[0] == y.shape[0]
    model_copy = load_spec(name).build_model().train()
    out = model_copy(x)
    value = mod.loss(out, y)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert any(p.grad is not None for p in model_copy.parameters())


def test_calibration_is_subset_of_training_and_disjoint_from_evaluation(sample: Sample):
    mod = sample.mod
    if sample.name in TOKENS:  # windows of text: calibration inside the training text, evaluation held out
        split = mod._data.text_split()
        train, held = split.train.tobytes(), split.eval.tobytes()
        assert all(bytes(r.tolist()) in train for x in mod.calibration_batches() for r in x)
        evals = [bytes(r.tolist()) for x, _ in mod.evaluation_batches() for r in x]
        assert all(e in held for e in evals) and sum(e in train for e in evals) == 0
        return
    train = {tuple(r.flatten().tolist()) for x, _ in mod.training_batches() for r in x}
    calib = [tuple(r.flatten().tolist()) for x in mod.calibration_batches() for r in x]
    evals = [tuple(r.flatten().tolist()) for x, _ in mod.evaluation_batches() for r in x]
    assert all(c in train for c in calib)
    # load_digits has a few duplicate images across classes; allow a handful of collisions.
    assert sum(e in train for e in evals) <= 0.02 * len(evals)


def test_spec_loads_standalone_from_another_directory(tmp_path):
    """Spec files import by path without the repository on sys.path or as cwd."""
    code = (
        "import importlib.util, sys\n"
        f"sys.path = [p for p in sys.path if p not in ('', {str(SAMPLES_DIR.parent)!r})]\n"
        f"spec = importlib.util.spec_from_file_location('standalone', {str(SAMPLES_DIR / 'diabetes_mlp.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "x = next(iter(m.calibration_batches()))\n"
        "print(tuple(m.build_model()(x).shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(64, 1)"


def test_tiny_lm_is_a_real_language_model():
    """Held-out perplexity well below a unigram byte model's on the same windows."""
    mod = load_spec("tiny_lm")
    model = mod.build_model()
    with torch.no_grad():
        outs = torch.cat([model(x) for x, _ in mod.evaluation_batches()])
    targets = torch.cat([y for _, y in mod.evaluation_batches()])
    ppl, unigram = mod.evaluate(outs, targets), mod.unigram_perplexity()
    assert outs.shape == (*targets.shape, 256)
    assert ppl < 0.4 * unigram, (ppl, unigram)
