"""Workloads: a model plus calibration data, evaluation data and a task metric.

Three sources, one contract (DESIGN.md step 1):

* ``sample:NAME`` — a bundled spec file in ``sample_models/`` (``list_samples()``);
* ``torchvision:ARCH[@WEIGHTS.pt]`` with an image folder (one sub-folder per class); the
  segmentation models (``fcn_*``, ``deeplabv3_*``, ``lraspp_*``) take any image folder and are
  scored by pixel agreement with the FP32 model (a folder carries no masks);
* ``path/to/spec.py`` defining ``build_model``, ``calibration_batches``,
  ``evaluation_batches`` and optionally ``evaluate``, ``training_batches``, ``loss``.

Batches are materialized once, as tuples of input tensors, so every later step (export,
calibration, simulation, engines) sees exactly the same data.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib.util
import math
import random
import sys
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

import torch

from . import memory
from .errors import ConfigError, WorkloadError

Inputs = tuple[torch.Tensor, ...]
Task = Literal["classification", "regression", "language_model", "other"]

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "sample_models"
_SAMPLE_NAMES = ("digits_cnn", "digits_resnet", "digits_vit", "diabetes_mlp", "tiny_lm")


def list_samples() -> list[str]:
    """The bundled samples (each a spec file in ``sample_models/``)."""
    return [n for n in _SAMPLE_NAMES if (SAMPLES_DIR / f"{n}.py").is_file()]


def top1_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Default metric: top-1 accuracy in % (outputs [N, C] logits, targets [N] class ids)."""
    if outputs.dim() != 2:
        raise WorkloadError(
            f"the default metric (top-1 accuracy) needs outputs of shape [N, classes], got {list(outputs.shape)}; "
            "define evaluate(outputs, targets) in the spec"
        )
    return float((outputs.argmax(dim=1) == targets.reshape(-1).long()).float().mean() * 100.0)


def top5_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-5 accuracy in %: the target is among the 5 highest outputs (outputs [N, C ≥ 5], targets [N])."""
    top = outputs.topk(5, dim=1).indices
    return float((top == targets.reshape(-1, 1).long()).any(dim=1).float().mean() * 100.0)


# --metric: "accuracy" keeps the workload's own metric (a spec's evaluate(), top-1 accuracy on an image
# folder); "top5" scores top-5 accuracy; "agreement" scores top-1 agreement with the FP32 model's own
# predictions (a pretrained head on a folder whose sub-folders are not its classes).
Metric = Literal["accuracy", "top5", "agreement"]
METRICS: tuple[str, ...] = ("accuracy", "top5", "agreement")
AGREEMENT_NAME = "top-1 agreement with FP32 (%)"


def worse_by(reference: float, candidate: float, higher_is_better: bool = True) -> float:
    """How much worse ``candidate`` scores than ``reference``, in metric units; > 0 always means worse.

    drop = reference − candidate when higher is better (accuracy, R²),
    drop = candidate − reference when lower is better (perplexity, loss, error).
    Every drop, budget, verdict, gain and Pareto front goes through here (``Workload.drop``)."""
    return (reference - candidate) if higher_is_better else (candidate - reference)


def relative(drop: float, reference: float) -> float:
    """A drop in % of the reference metric: 100 · drop / |reference| (NaN when the reference is 0)."""
    return 100.0 * drop / abs(reference) if reference else math.nan


def default_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs, targets.long())


@dataclass
class Workload:
    """Everything an analysis needs. ``evaluate`` is called once on concatenated outputs."""

    name: str
    model: torch.nn.Module
    calibration: list[Inputs]
    evaluation: list[tuple[Inputs, torch.Tensor]]
    evaluate: Callable[[torch.Tensor, torch.Tensor], float]
    metric_name: str = "accuracy (%)"
    description: str = ""
    training: Callable[[], Iterable[tuple[Any, torch.Tensor]]] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    task: Task = "other"
    class_names: list[str] | None = None
    input_names: list[str] = field(default_factory=list)
    images: bool = False
    # what the user must know before trusting the numbers (e.g. random weights), shown with the result
    warnings: list[str] = field(default_factory=list)
    random_weights: bool = False
    # --eval-samples / --calib-samples as given (None: all), see limit_samples
    sample_limits: dict[str, int | None] = field(default_factory=lambda: {"eval_samples": None, "calib_samples": None})
    # a spec's HIGHER_IS_BETTER (False for perplexity, loss, error): the direction of every drop
    higher_is_better: bool = True

    def drop(self, reference: float, candidate: float) -> float:
        """How much worse ``candidate`` is than ``reference`` (> 0: worse), see ``worse_by``."""
        return worse_by(reference, candidate, self.higher_is_better)

    @property
    def relative_verdict(self) -> bool:
        """Lower-is-better metrics (perplexity) are judged by their relative increase in %, not in points."""
        return not self.higher_is_better

    def _eval_targets(self) -> list[torch.Tensor]:
        """The evaluation batches' targets, without reading (normalizing) an image batch: the
        metric asks for them once per layer and per run."""
        lazy = getattr(self.evaluation, "target_list", None)  # batches stored apart from their inputs (ImageBatches)
        return lazy() if lazy is not None else [t for _, t in self.evaluation]

    @property
    def n_eval(self) -> int:
        return sum(int(t.shape[0]) for t in self._eval_targets())

    @property
    def n_calib(self) -> int:
        sizes = getattr(self.calibration, "batch_sizes", None)  # without normalizing every batch to count it
        return sum(sizes()) if sizes is not None else sum(int(x[0].shape[0]) for x in self.calibration)

    def targets(self) -> torch.Tensor:
        return torch.cat(self._eval_targets(), dim=0)

    def score(self, outputs: torch.Tensor) -> float:
        """The task metric of concatenated outputs; NaN outputs or a failing metric raise."""
        if not torch.isfinite(outputs).all():
            raise WorkloadError("the model produced NaN or infinite outputs on the evaluation data")
        try:
            value = self.evaluate(outputs, self.targets())
        except WorkloadError:
            raise
        except SystemExit as e:
            raise WorkloadError(f"evaluate() called sys.exit({e.code!r}); it must return a number") from None
        except Exception as e:  # noqa: BLE001 - user code
            raise WorkloadError(f"evaluate() raised {type(e).__name__}: {e}") from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise WorkloadError(f"evaluate() must return a number, got {type(value).__name__}") from None
        if not math.isfinite(value):
            raise WorkloadError(f"evaluate() returned {value}")
        return value


# --------------------------------------------------------------------------- bounds


def _first_samples(batches: list, n: int, inputs_of: Callable[[Any], Inputs], cut: Callable[[Any, int], Any]) -> list:
    if isinstance(batches, ImageBatches):
        return batches.first(n)
    out, left = [], n
    for b in batches:
        if left <= 0:
            break
        k = int(inputs_of(b)[0].shape[0])
        out.append(b if k <= left else cut(b, left))
        left -= k
    return out


def _check_limit(value: int | None, flag: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{flag} must be a whole number of samples, 1 or more; got {value!r}")


def limit_samples(wl: Workload, eval_samples: int | None = None, calib_samples: int | None = None) -> Workload:
    """The workload on the first ``eval_samples`` evaluation and ``calib_samples`` calibration
    samples (in batch order, the last batch sliced; None keeps all). The split is deterministic,
    so a bounded run is the first N samples of the unbounded one, batched the same way."""
    _check_limit(eval_samples, "--eval-samples")
    _check_limit(calib_samples, "--calib-samples")
    evaluation, calibration = wl.evaluation, wl.calibration
    if eval_samples is not None:
        evaluation = _first_samples(evaluation, eval_samples, lambda b: b[0],
                                    lambda b, k: (tuple(t[:k] for t in b[0]), b[1][:k]))  # fmt: skip
    if calib_samples is not None:
        calibration = _first_samples(calibration, calib_samples, lambda b: b, lambda b, k: tuple(t[:k] for t in b))
    limits = {**wl.sample_limits}
    if eval_samples is not None:
        limits["eval_samples"] = eval_samples
    if calib_samples is not None:
        limits["calib_samples"] = calib_samples
    return dataclasses.replace(wl, evaluation=evaluation, calibration=calibration, sample_limits=limits)


# --------------------------------------------------------------------------- helpers


def first_output(out: Any) -> torch.Tensor:
    """The tensor a metric sees: the output itself, the first of a tuple, or ``logits``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        if "logits" in out:
            return out["logits"]
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)) and out:
        return first_output(out[0])
    raise WorkloadError(f"the model returned {type(out).__name__}, not a tensor")


def as_inputs(x: Any, where: str) -> Inputs:
    if isinstance(x, torch.Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return tuple(x)
    raise WorkloadError(f"{where}: expected a tensor or a tuple of tensors, got {type(x).__name__}")


def run_model(model: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
    with torch.inference_mode():
        return first_output(model(*inputs)).float()


def _materialize_calibration(it: Iterable[Any]) -> list[Inputs]:
    batches = []
    for i, b in enumerate(it):
        batches.append(tuple(t.detach().float() if t.is_floating_point() else t.detach() for t in as_inputs(b, f"calibration batch {i}")))
    if not batches:
        raise WorkloadError("calibration_batches() yielded no batches")
    return batches


def _materialize_evaluation(it: Iterable[Any]) -> list[tuple[Inputs, torch.Tensor]]:
    batches = []
    for i, b in enumerate(it):
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise WorkloadError(f"evaluation batch {i}: expected (inputs, targets), got {type(b).__name__}")
        x, y = b
        x = as_inputs(x, f"evaluation batch {i} inputs")
        x = tuple(t.detach().float() if t.is_floating_point() else t.detach() for t in x)
        if y is None:
            raise WorkloadError(
                f"evaluation batch {i}: the targets are None; evaluation_batches() must yield (inputs, targets) "
                "with one target per sample (if your metric needs none, yield e.g. torch.zeros(N) and define evaluate())"
            )
        if not isinstance(y, torch.Tensor):
            try:
                y = torch.as_tensor(y)
            except Exception:  # noqa: BLE001 - whatever the user yielded
                raise WorkloadError(
                    f"evaluation batch {i}: the targets must be a tensor (one per sample), got {type(y).__name__}"
                ) from None
        if y.dim() == 0:
            raise WorkloadError(f"evaluation batch {i}: the targets are a single number; give one target per sample")
        if y.shape[0] != x[0].shape[0]:
            raise WorkloadError(f"evaluation batch {i}: {x[0].shape[0]} inputs but {y.shape[0]} targets")
        if batches and y.shape[1:] != batches[0][1].shape[1:]:
            raise WorkloadError(
                f"evaluation batch {i}: targets of shape {list(y.shape)} do not match batch 0's "
                f"{list(batches[0][1].shape)} beyond the first dimension, so they cannot be concatenated"
            )
        batches.append((x, y))
    if not batches:
        raise WorkloadError("evaluation_batches() yielded no batches")
    return batches


def _call(fn: Callable, what: str) -> Any:
    """``fn()``; anything user code raises, sys.exit included, becomes a WorkloadError naming ``what``."""
    try:
        return fn()
    except WorkloadError:
        raise
    except SystemExit as e:
        raise WorkloadError(f"{what} called sys.exit({e.code!r}) instead of returning") from None
    except Exception as e:  # noqa: BLE001 - user code
        raise WorkloadError(f"{what} raised {type(e).__name__}: {e}") from None


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _forward(model: torch.nn.Module, inputs: Inputs, which: str) -> torch.Tensor:
    """The model's output on one batch (``which`` names it); a failure or a 0-d output is a WorkloadError."""
    try:
        out = run_model(model, inputs)
    except WorkloadError:
        raise
    except SystemExit as e:
        raise WorkloadError(f"the model's forward called sys.exit({e.code!r}) on {which}") from None
    except Exception as e:  # noqa: BLE001 - user code
        raise WorkloadError(
            f"the model's forward failed on {which} (shape "
            f"{[list(t.shape) for t in inputs]}): {type(e).__name__}: {_first_line(e)}"
        ) from None
    if out.dim() == 0:
        if inputs[0].shape[0] == 1:
            raise WorkloadError(
                f"the model returns a 0-d tensor for {which}, a batch of one sample: it squeezes the batch "
                "dimension away (e.g. .squeeze() on [1, 1]); return one row per sample, e.g. with .squeeze(-1)"
            )
        raise WorkloadError(
            "the model returns a single number (a 0-d tensor) for a whole batch; it must return one row "
            "per sample (shape [N, ...]) so that the outputs of all batches can be concatenated and scored"
        )
    return out


def _check_default_metric(outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Top-1 accuracy (the default metric) only means something with 2+ classes and ids in range."""
    if outputs.dim() != 2:
        return  # top1_accuracy says so when it is called
    n_out = int(outputs.shape[1])
    if n_out == 1:
        raise WorkloadError(
            "the model has one output per sample, so top-1 accuracy (the default metric) is 100 % whatever "
            "it predicts; define evaluate(outputs, targets) in a spec (e.g. accuracy of outputs > 0 for a "
            "binary classifier with one logit)"
        )
    if targets.is_floating_point() and not bool((targets == targets.round()).all()):
        return  # not class ids: top1_accuracy's result is the user's choice of metric
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= n_out:
        raise WorkloadError(
            f"the evaluation targets hold class ids {lo}..{hi} but the model has {n_out} outputs, so top-1 "
            "accuracy (the default metric) cannot score them; check the targets or define evaluate()"
        )


def _infer_task(outputs: torch.Tensor, targets: torch.Tensor, default_metric: bool) -> Task:
    if (outputs.dim() == 3 and targets.dim() == 2 and not targets.is_floating_point()
            and tuple(outputs.shape[:2]) == tuple(targets.shape) and not default_metric):  # fmt: skip
        return "language_model"  # logits [N, S, V], next-token ids [N, S]
    if outputs.dim() == 2 and outputs.shape[1] > 1 and targets.dim() == 1 and not targets.is_floating_point():
        # with its own metric, integer targets are class ids only if each names an output column
        # (a retrieval spec's targets are item ids: 48 queries, 8-d embeddings)
        if default_metric or bool(((targets >= 0) & (targets < outputs.shape[1])).all()):
            return "classification"
    if default_metric:
        return "classification"
    if targets.is_floating_point() and outputs.shape[0] == targets.shape[0] and outputs.numel() == targets.numel():
        return "regression"
    return "other"


def finish(
    name: str,
    model: torch.nn.Module,
    calibration: Iterable[Any],
    evaluation: Iterable[Any],
    evaluate: Callable | None,
    *,
    n_classes: int | None = None,
    data: Path | None = None,
    **extra: Any,
) -> Workload:
    """Materialize the batches, check the model runs on them, infer the task.

    ``n_classes``: the number of class folders of an image folder ``data``; the model's head must match."""
    if not isinstance(model, torch.nn.Module):
        raise WorkloadError(f"build_model() must return a torch.nn.Module, got {type(model).__name__}")
    model = model.eval().float()
    # stored image batches (ImageBatches) are already tensors of the right form: kept as they are
    calib = calibration if isinstance(calibration, ImageBatches) else _materialize_calibration(
        _call(lambda: list(calibration), "calibration_batches()"))
    evals = evaluation if isinstance(evaluation, ImageBatches) else _materialize_evaluation(
        _call(lambda: list(evaluation), "evaluation_batches()"))
    out = _forward(model, calib[0], "the first calibration batch")
    if not torch.isfinite(out).all():
        raise WorkloadError("the model produced NaN or infinite outputs on the first calibration batch")
    eout = _forward(model, evals[0][0], "the first evaluation batch")
    for i, (x, _) in enumerate(evals):
        if i and x[0].shape[0] == 1:  # a squeezing model gives 0-d outputs on a batch of one
            _forward(model, x, f"evaluation batch {i}")
    if n_classes is not None and eout.dim() == 2 and eout.shape[1] != n_classes:
        raise WorkloadError(
            f"the model has a {eout.shape[1]}-class head but {data} has {n_classes} class folders; top-1 accuracy "
            f"would compare head index i with the i-th folder in sorted order, which means nothing here. Give "
            f"one sub-folder per class of the head, named so that sorted order is the head's order, or use "
            f"--metric agreement to score top-1 agreement with the FP32 model's own predictions"
        )
    if evaluate is None:
        _check_default_metric(eout, torch.cat([t for _, t in evals]))
    task = _infer_task(eout, evals[0][1], evaluate is None)
    memory.release(0)  # the check forwards' freed activations (efficientnet_b0, 32 images: 0.22 GB)
    wl = Workload(
        name=name,
        model=model,
        calibration=calib,
        evaluation=evals,
        evaluate=evaluate or top1_accuracy,
        task=task,
        **extra,
    )
    return wl


def with_metric(wl: Workload, metric: Metric) -> Workload:
    """The workload scored by ``metric`` (see METRICS); "accuracy" returns it unchanged.

    "agreement": targets become the FP32 model's top-1 on each evaluation sample (one FP32 pass,
    once), so the FP32 metric is 100 % and a drop is the share of predictions quantization flips."""
    if metric not in METRICS:
        raise WorkloadError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if metric == "accuracy" or (metric == "agreement" and wl.metric_name == PIXEL_AGREEMENT_NAME):
        return wl  # a segmentation workload is scored by agreement already
    eout = run_model(wl.model, wl.evaluation[0][0])
    if eout.dim() != 2 or eout.shape[1] < 2:
        raise WorkloadError(
            f"--metric {metric} needs a classifier's outputs of shape [N, classes], got {list(eout.shape)}"
        )
    n_out = int(eout.shape[1])
    if metric == "top5":
        if n_out <= 5:
            raise WorkloadError(f"--metric top5 needs more than 5 classes; the model has {n_out} outputs")
        targets = torch.cat([t for _, t in wl.evaluation])
        if targets.is_floating_point() and not bool((targets == targets.round()).all()):
            raise WorkloadError("--metric top5 needs class ids as targets; the evaluation targets are not integers")
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= n_out:
            raise WorkloadError(
                f"the evaluation targets hold class ids {lo}..{hi} but the model has {n_out} outputs, so top-5 "
                "accuracy cannot score them; use --metric agreement if the labels are not the model's classes"
            )
        return replace(wl, evaluate=top5_accuracy, metric_name="top-5 accuracy (%)", task="classification",
                       higher_is_better=True)
    # .clone(): a normal tensor, not an inference-mode one (targets may meet autograd in a loss)
    top1 = [_forward(wl.model, x, f"evaluation batch {i}").argmax(dim=1).clone() for i, (x, _) in enumerate(wl.evaluation)]
    if isinstance(wl.evaluation, ImageBatches):
        evaluation = wl.evaluation.with_targets(top1)  # still pixels
    else:
        evaluation = [(x, t) for (x, _), t in zip(wl.evaluation, top1)]
    warnings = list(wl.warnings)
    if wl.class_names and len(wl.class_names) != n_out:
        warnings.append(
            f"the model's {n_out}-class head and the data's {len(wl.class_names)} classes differ, so the metric "
            f"is top-1 agreement with the FP32 model's own predictions (--metric agreement), not accuracy: "
            f"FP32 scores 100 % by construction"
        )
    return replace(
        wl, evaluation=evaluation, evaluate=top1_accuracy, metric_name=AGREEMENT_NAME, task="classification",
        class_names=None, warnings=warnings, higher_is_better=True,
    )  # fmt: skip


# --------------------------------------------------------------------------- spec files


def _import_spec(path: Path) -> Any:
    if not path.is_file():
        raise WorkloadError(f"spec file not found: {path}")
    if path.suffix != ".py":
        raise WorkloadError(f"a spec must be a Python file (*.py), got {path}")
    mod_name = f"qanalysis_spec_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise WorkloadError(f"cannot import spec file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:
        sys.modules.pop(mod_name, None)
        raise WorkloadError(
            f"spec {path.name} called sys.exit({e.code!r}) on import; a spec only defines functions "
            "(put script code under `if __name__ == \"__main__\":`)"
        ) from None
    except Exception as e:  # noqa: BLE001 - user code
        sys.modules.pop(mod_name, None)
        raise WorkloadError(f"spec {path.name} raised {type(e).__name__} on import: {e}") from None
    return module


def load_spec(path: str | Path, name: str | None = None) -> Workload:
    path = Path(path)
    m = _import_spec(path)
    missing = [f for f in ("build_model", "calibration_batches", "evaluation_batches") if not callable(getattr(m, f, None))]
    if missing:
        raise WorkloadError(f"spec {path.name} does not define {', '.join(missing)}()")
    where = f"spec {path.name}:"
    model = _call(m.build_model, f"{where} build_model()")
    evaluate = getattr(m, "evaluate", None)
    training = getattr(m, "training_batches", None)
    loss = getattr(m, "loss", None)
    return finish(
        name or str(path),
        model,
        _call(lambda: list(m.calibration_batches()), f"{where} calibration_batches()"),
        _call(lambda: list(m.evaluation_batches()), f"{where} evaluation_batches()"),
        evaluate if callable(evaluate) else None,
        metric_name=getattr(m, "METRIC_NAME", "accuracy (%)" if not callable(evaluate) else "metric"),
        description=getattr(m, "DESCRIPTION", ""),
        training=training if callable(training) else None,
        loss=loss if callable(loss) else (default_loss if callable(training) else None),
        class_names=getattr(m, "CLASS_NAMES", None),
        images=bool(getattr(m, "IMAGES", False)),
        higher_is_better=_direction(m, path),
    )


def _direction(m: Any, path: Path) -> bool:
    """A spec's ``HIGHER_IS_BETTER`` (default True); anything but a bool is refused."""
    v = getattr(m, "HIGHER_IS_BETTER", True)
    if not isinstance(v, bool):
        raise WorkloadError(f"spec {path.name}: HIGHER_IS_BETTER must be True or False, got {v!r}")
    return v


def load_sample(name: str) -> Workload:
    if name not in list_samples():
        raise WorkloadError(f"unknown sample {name!r}; available: {', '.join(list_samples())}")
    return load_spec(SAMPLES_DIR / f"{name}.py", name=f"sample:{name}")


# --------------------------------------------------------------------------- torchvision

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


TORCHVISION_SEED = 0


def segmentation_models() -> list[str]:
    """torchvision's semantic segmentation architectures (``fcn_resnet50``, ``lraspp_mobilenet_v3_large``, ...)."""
    import torchvision

    try:
        return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))
    except Exception:  # pragma: no cover - very old torchvision
        return []


def _build_torchvision(arch: str, **kwargs: Any) -> torch.nn.Module:
    """``get_model(arch, weights=None)`` with a fixed seed, so random weights are the same on every run;
    the caller's global RNG state is left as it was. Segmentation models get no backbone weights
    either (their default would download ImageNet weights)."""
    import torchvision

    if arch in segmentation_models():
        kwargs.setdefault("weights_backbone", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TORCHVISION_SEED)
        return torchvision.models.get_model(arch, weights=None, **kwargs)


class SegmentationLogits(torch.nn.Module):
    """torchvision's segmentation models return ``{"out": logits}`` (and "aux" when trained with it);
    the workload's model returns the logits [N, classes, H, W], what a deployment runs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


PIXEL_AGREEMENT_NAME = "pixel agreement with FP32 (%)"


def pixel_agreement(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of pixels, in %, whose class (argmax over dim 1 of [N, C, H, W]) is the target's ([N, H, W])."""
    if outputs.dim() != 4 or targets.dim() != 3:
        raise WorkloadError(
            f"pixel agreement needs outputs [N, classes, H, W] and targets [N, H, W], got {list(outputs.shape)} "
            f"and {list(targets.shape)}"
        )
    return float((outputs.argmax(dim=1) == targets.long()).double().mean() * 100.0)


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def describe_state_dict_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """Which keys are missing or unexpected and which shapes differ (first few of each, counted); '' if it fits."""
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: file {list(given[k].shape)}, model {list(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape(s) differ: {_few(shapes)}")
    return "; ".join(parts)


def _head_key(fresh: Mapping[str, torch.Tensor], default_classes: int = 1000) -> str | None:
    """The classifier head's weight: the last entry of 2+ dimensions whose first is torchvision's default
    1000 classes (a Linear [1000, F] in most models, a 1×1 Conv [1000, F, 1, 1] in SqueezeNet; a
    segmentation model's 1×1 Conv [21, F, 1, 1])."""
    keys = [k for k, v in fresh.items() if v.dim() >= 2 and v.shape[0] == default_classes]
    return keys[-1] if keys else None


def _torchvision_model(arch: str, weights: Path | None, num_classes: int) -> torch.nn.Module:
    import torchvision

    try:
        available = torchvision.models.list_models(module=torchvision.models)
    except Exception:  # pragma: no cover - very old torchvision
        available = []
    segmentation = arch in segmentation_models()
    if arch not in available and not segmentation:
        raise WorkloadError(
            f"unknown torchvision architecture {arch!r}; e.g. resnet18, mobilenet_v3_small, vit_b_16 "
            f"(classification) or lraspp_mobilenet_v3_large (segmentation)"
        )
    default_classes = 21 if segmentation else 1000  # torchvision's defaults: VOC's 21, ImageNet's 1000
    if weights is None:
        return _build_torchvision(arch) if segmentation else _build_torchvision(arch, num_classes=num_classes)
    if not weights.is_file():
        raise WorkloadError(f"weights file not found: {weights}")
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - maybe a whole pickled model
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise WorkloadError(f"cannot read weights {weights}: {type(e).__name__}: {e}") from None
    fresh = _build_torchvision(arch)
    if isinstance(obj, torch.nn.Module):
        return _check_whole_model(obj, fresh, arch, weights)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WorkloadError(f"{weights} holds a {type(obj).__name__}, not a state_dict or a model")
    sd = {str(k).removeprefix("module."): v for k, v in obj.items()}
    not_tensors = [f"{k} ({type(v).__name__})" for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WorkloadError(
            f"{weights} is not a state_dict of tensors: "
            f"{'1 entry is not a tensor' if len(not_tensors) == 1 else f'{len(not_tensors)} entries are not tensors'}: "
            f"{_few(not_tensors)}"
        )
    # The number of classes comes from the weights (fine-tuned heads): the head's first dimension.
    head = _head_key(fresh.state_dict(), default_classes)
    n_cls = int(sd[head].shape[0]) if head is not None and head in sd and sd[head].dim() >= 1 else num_classes
    if segmentation:
        n_cls = n_cls if head is not None and head in sd else default_classes
        # a checkpoint trained with the auxiliary head carries its weights; the deployed model does not run it
        aux = any(k.startswith("aux_classifier.") for k in sd)
        model = _build_torchvision(arch, num_classes=n_cls, **({"aux_loss": True} if aux else {}))
    else:
        model = _build_torchvision(arch, num_classes=n_cls) if n_cls != 1000 else fresh
    problem = describe_state_dict_mismatch(model.state_dict(), sd)
    if problem:
        raise WorkloadError(f"{weights} does not fit torchvision's {arch}: {problem}")
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise WorkloadError(f"{weights} does not fit torchvision's {arch}: {_first_line(e)}") from None
    return model


def _check_whole_model(obj: torch.nn.Module, fresh: torch.nn.Module, arch: str, weights: Path) -> torch.nn.Module:
    """A whole saved model is used as it is, but only if it is the architecture the user named."""
    got, want = type(obj).__name__, type(fresh).__name__
    if not isinstance(obj, type(fresh)):
        raise WorkloadError(
            f"{weights} holds a whole {got} model, but torchvision:{arch} is a {want}; name the architecture "
            f"the file holds (or load it through a spec file)"
        )
    head = _head_key(fresh.state_dict(), 21 if arch in segmentation_models() else 1000)
    mine = {k: v for k, v in obj.state_dict().items() if k != head and not (head and k == head.replace("weight", "bias"))}
    theirs = {k: v for k, v in fresh.state_dict().items() if k != head and not (head and k == head.replace("weight", "bias"))}
    problem = describe_state_dict_mismatch(theirs, mine)
    if problem:
        raise WorkloadError(
            f"{weights} holds a whole {got} model whose layers differ from torchvision's {arch} ({problem}); "
            f"is it another {got} variant? Name the architecture the file holds"
        )
    return obj


def load_torchvision(
    spec: str,
    data: str | Path | None,
    *,
    calib_fraction: float = 0.25,
    max_calib: int = 256,
    metric: Metric = "accuracy",
    eval_samples: int | None = None,
    calib_samples: int | None = None,
) -> Workload:
    """``ARCH[@WEIGHTS]`` on an image folder; images split per class, deterministically.
    ``eval_samples`` / ``calib_samples``: read only the first N images of each split (the
    batches are those of the whole split, cut after N samples)."""
    arch, _, w = spec.partition("@")
    if data is None:
        raise WorkloadError("torchvision models need --data DIR (an image folder, one sub-folder per class)")
    if arch in segmentation_models():
        return _load_segmentation(arch, w, Path(data), metric=metric, calib_fraction=calib_fraction,
                                  max_calib=max_calib, eval_samples=eval_samples, calib_samples=calib_samples)  # fmt: skip
    root = Path(data)
    if not root.is_dir():
        raise WorkloadError(f"data folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise WorkloadError(f"{root} has no class sub-folders")
    if len(classes) == 1:
        raise WorkloadError(
            f"{root} has one class sub-folder ({classes[0]}): top-1 accuracy over a single class cannot measure "
            "what quantization costs; give one sub-folder per class (two or more)"
        )
    calib_files, eval_files = split_image_folder(root, classes, calib_fraction=calib_fraction, max_calib=max_calib)
    model = _torchvision_model(arch, Path(w) if w else None, len(classes))
    warnings = []
    if not w:
        warnings.append(
            f"torchvision:{arch} was given no weights file, so its weights are random (seeded, the same on "
            f"every run): the accuracy and its drop mean nothing; use torchvision:{arch}@WEIGHTS.pt for your model"
        )
    calib = stored_image_batches(calib_files[:calib_samples], targets=False)
    evals = stored_image_batches(eval_files[:eval_samples])
    return finish(
        f"torchvision:{spec}",
        model,
        calib,
        evals,
        top1_accuracy if metric == "agreement" else None,  # agreement: the folder's labels are not checked
        metric_name="top-1 accuracy (%)",
        description=f"torchvision {arch} on {root}",
        class_names=classes,
        images=True,
        loss=default_loss,
        warnings=warnings,
        random_weights=not w,
        n_classes=None if metric == "agreement" else len(classes),  # agreement: any head on any folder
        data=root,
    )


def _load_segmentation(arch: str, w: str, root: Path, *, metric: Metric, calib_fraction: float, max_calib: int,
                       eval_samples: int | None, calib_samples: int | None) -> Workload:  # fmt: skip
    """A segmentation model on an image folder (sub-folders, if any, only split the images): the targets
    are the FP32 model's own per-pixel classes, the metric pixel agreement with them."""
    if metric == "top5":
        raise WorkloadError(f"--metric top5 scores classifiers; torchvision:{arch} is a segmentation model "
                            "(its metric is pixel agreement with FP32)")  # fmt: skip
    if not root.is_dir():
        raise WorkloadError(f"data folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes and any(p.suffix.lower() in IMAGE_EXTS for p in root.iterdir()):
        classes = ["."]  # a flat folder of images
    if not classes:
        raise WorkloadError(f"{root} holds no images (nor sub-folders of images)")
    calib_files, eval_files = split_image_folder(root, classes, calib_fraction=calib_fraction, max_calib=max_calib)
    model = SegmentationLogits(_torchvision_model(arch, Path(w) if w else None, 0))
    warnings = [
        f"torchvision:{arch} is a segmentation model and an image folder has no masks: the metric is pixel "
        f"agreement with the FP32 model's own per-pixel classes (FP32 scores 100 % by construction)"
    ]
    if not w:
        warnings.append(
            f"torchvision:{arch} was given no weights file, so its weights are random (seeded, the same on "
            f"every run): the drop in agreement still measures what quantization changes, not how good the model is"
        )
    calib = stored_image_batches(calib_files[:calib_samples], targets=False)
    evals = stored_image_batches(eval_files[:eval_samples])
    wl = finish(f"torchvision:{arch}{'@' + w if w else ''}", model, calib, evals, pixel_agreement,
                metric_name=PIXEL_AGREEMENT_NAME, description=f"torchvision {arch} (segmentation) on {root}",
                images=True, warnings=warnings, random_weights=not w, data=root)  # fmt: skip
    # the FP32 model's per-pixel classes, as uint8 when they fit (a quarter of a megabyte less per 224² image)
    masks = []
    for i, (x, _) in enumerate(wl.evaluation):
        logits = _forward(wl.model, x, f"evaluation batch {i}")
        masks.append(logits.argmax(dim=1).to(torch.uint8 if logits.shape[1] <= 256 else torch.int64))
        del logits
    memory.release(0)
    return replace(wl, evaluation=wl.evaluation.with_targets(masks))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise WorkloadError(f"data folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise WorkloadError(f"{root} has no class sub-folders")
    return classes


def split_image_folder(root: Path, classes: list[str], *, calib_fraction: float = 0.25,
                       max_calib: int = 256) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:  # fmt: skip
    """(calibration, evaluation) files: per class, a seeded shuffle, the first part calibrates."""
    rng = random.Random(0)
    calib_files: list[tuple[Path, int]] = []
    eval_files: list[tuple[Path, int]] = []
    per_class_calib = max(1, int(max_calib / len(classes)))
    for ci, c in enumerate(classes):
        files = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        rng.shuffle(files)
        k = min(per_class_calib, max(1, int(round(len(files) * calib_fraction)))) if len(files) > 1 else 0
        calib_files += [(p, ci) for p in files[:k]]
        eval_files += [(p, ci) for p in files[k:]]
    if not eval_files or not calib_files:
        raise WorkloadError(f"{root} needs at least two images in some class (calibration and evaluation)")
    return calib_files, eval_files


def image_transform(size: int = 224, resize: int | None = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Resize (short side) → center crop → [0, 1] → normalize: ImageNet's evaluation preprocessing."""
    from torchvision import transforms

    steps = [transforms.Resize(resize)] if resize else []
    return transforms.Compose(steps + [transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(list(mean), list(std))])


def image_batches(files: list[tuple[Path, int]], tf, bs: int = 32, layout: str = "NCHW") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(images, class ids) batches of ``bs``; ``layout`` NHWC permutes the channels last."""
    from PIL import Image

    out = []
    for i in range(0, len(files), bs):
        chunk = files[i : i + bs]
        xs = []
        for p, _ in chunk:
            try:
                with Image.open(p) as im:
                    xs.append(tf(im.convert("RGB")))
            except Exception as e:  # noqa: BLE001
                raise WorkloadError(f"cannot read image {p}: {e}") from None
        x = torch.stack(xs)
        if layout == "NHWC":
            x = x.permute(0, 2, 3, 1).contiguous()
        out.append((x, torch.tensor([c for _, c in chunk])))
    return out


class ImageBatches(collections.abc.Sequence):
    """Image batches kept as the uint8 pixels of the cropped images (a quarter of float32's bytes)
    and normalized when a batch is read, the very operations of ``ToTensor`` + ``Normalize``, so
    a read batch equals ``image_batches``' to the bit. An item is ``((x,), targets)``, or ``(x,)``
    for calibration (``targets=False``); a slice is a list of items. Why: 512 ImageNet-size images
    held as float32 are 308 MB of a run's resident memory before any work starts."""

    def __init__(self, pixels: list[tuple[torch.Tensor, torch.Tensor]], mean, std, layout: str = "NCHW", targets: bool = True):
        self._pixels, self._layout, self._targets = pixels, layout, targets
        self._mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self._std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self._pixels)

    def _item(self, i: int):
        u8, t = self._pixels[i]
        x = u8.to(torch.float32).div(255).sub_(self._mean).div_(self._std)
        if self._layout == "NHWC":
            x = x.permute(0, 2, 3, 1).contiguous()
        return ((x,), t) if self._targets else (x,)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._item(k) for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._item(i)

    def first(self, n: int) -> "ImageBatches":
        """The first ``n`` samples (the last batch cut), still stored as pixels."""
        out, left = [], n
        for u8, t in self._pixels:
            if left <= 0:
                break
            k = int(u8.shape[0])
            out.append((u8, t) if k <= left else (u8[:left], t[:left]))
            left -= k
        return ImageBatches(out, self._mean.flatten(), self._std.flatten(), self._layout, self._targets)

    def with_targets(self, targets: list[torch.Tensor]) -> "ImageBatches":
        """The same pixels with other targets (one tensor per batch)."""
        pixels = [(u8, t) for (u8, _), t in zip(self._pixels, targets, strict=True)]
        return ImageBatches(pixels, self._mean.flatten(), self._std.flatten(), self._layout, self._targets)

    @property
    def nbytes(self) -> int:
        return sum(u8.numel() for u8, _ in self._pixels)

    def batch_sizes(self) -> list[int]:
        return [int(u8.shape[0]) for u8, _ in self._pixels]

    def target_list(self) -> list[torch.Tensor]:
        """Each batch's targets (as its items carry them), without normalizing its pixels."""
        return [t for _, t in self._pixels]


def stored_image_batches(files: list[tuple[Path, int]], *, size: int = 224, resize: int | None = 256, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, bs: int = 32, layout: str = "NCHW", targets: bool = True) -> ImageBatches:  # fmt: skip
    """``image_batches`` of ``image_transform(size, resize, mean, std)``, stored as uint8 pixels."""
    from torchvision import transforms

    tf = transforms.Compose(([transforms.Resize(resize)] if resize else []) + [transforms.CenterCrop(size), transforms.PILToTensor()])
    pixels = [(x, t) for x, t in image_batches(files, tf, bs)]
    return ImageBatches(pixels, mean, std, layout, targets)


def load_onnx(path: str | Path, data: str | Path | None, *, metric: Metric = "accuracy") -> Workload:
    """An ONNX file with ``data``: an image folder (ImageNet preprocessing at the graph's input
    size and layout) or a spec file supplying ``calibration_batches``, ``evaluation_batches``
    and optionally ``evaluate`` (its ``build_model`` is not needed)."""
    from .onnx_model import OnnxModel

    model = OnnxModel(path)
    warnings = ["the ONNX model was stored in float16; it is analysed in float32 (ONNX Runtime's quantizer reads float32)"] \
        if model.was_fp16 else []  # fmt: skip
    if data is None:
        raise WorkloadError("an ONNX model needs --data: an image folder (one sub-folder per class) or a spec file with the batches")
    data = Path(data)
    if data.suffix == ".py":
        m = _import_spec(data)
        missing = [f for f in ("calibration_batches", "evaluation_batches") if not callable(getattr(m, f, None))]
        if missing:
            raise WorkloadError(f"spec {data.name} does not define {', '.join(missing)}()")
        ev, training, loss = (getattr(m, f, None) for f in ("evaluate", "training_batches", "loss"))
        return finish(str(path), model, _call(lambda: list(m.calibration_batches()), f"spec {data.name}: calibration_batches()"),
                      _call(lambda: list(m.evaluation_batches()), f"spec {data.name}: evaluation_batches()"),
                      ev if callable(ev) else None, description=f"{Path(path).name} on {data.name}", warnings=warnings,
                      training=training if callable(training) else None,
                      loss=loss if callable(loss) else (default_loss if callable(training) else None),
                      metric_name=getattr(m, "METRIC_NAME", "accuracy (%)" if not callable(ev) else "metric"),
                      higher_is_better=_direction(m, data))  # fmt: skip
    classes = image_classes(data)
    shape = model.input_shape(0)
    if len(shape) != 4:
        raise WorkloadError(f"--data DIR feeds images, but the ONNX model's input has shape {shape}; give a spec file instead")
    layout = "NHWC" if shape[3] == 3 and shape[1] != 3 else "NCHW"
    size = (shape[1] if layout == "NHWC" else shape[2]) or 224
    calib_files, eval_files = split_image_folder(data, classes)
    calib = stored_image_batches(calib_files, size=size, resize=round(size * 256 / 224), layout=layout, targets=False)
    evals = stored_image_batches(eval_files, size=size, resize=round(size * 256 / 224), layout=layout)
    return finish(str(path), model, calib, evals, top1_accuracy if metric == "agreement" else None,
                  n_classes=None if metric == "agreement" else len(classes), data=data,
                  metric_name="top-1 accuracy (%)", description=f"{Path(path).name} on {data} ({layout}, {size}×{size})",
                  class_names=classes, images=True, loss=default_loss, warnings=warnings)  # fmt: skip


def load_workload(source: str, data: str | Path | None = None, *, metric: Metric = "accuracy",
                  eval_samples: int | None = None, calib_samples: int | None = None) -> Workload:  # fmt: skip
    """Dispatch on the MODEL argument: ``sample:NAME``, ``torchvision:ARCH[@W]``, ``model.onnx`` or a
    spec path; ``metric`` (``--metric``) may replace the workload's own metric (``with_metric``);
    ``eval_samples`` / ``calib_samples`` bound the data (``limit_samples``; an image folder reads
    only the images it keeps)."""
    if metric not in METRICS:
        raise WorkloadError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    _check_limit(eval_samples, "--eval-samples")
    _check_limit(calib_samples, "--calib-samples")
    if eval_samples is None and calib_samples is None:
        return _load(source, data, metric)
    return limit_samples(_load(source, data, metric, eval_samples, calib_samples), eval_samples, calib_samples)


def _load(source: str, data: str | Path | None, metric: Metric, eval_samples: int | None = None,
          calib_samples: int | None = None) -> Workload:  # fmt: skip
    if source.startswith("sample:"):
        return with_metric(load_sample(source.split(":", 1)[1]), metric)
    if source.startswith("torchvision:"):
        return with_metric(load_torchvision(source.split(":", 1)[1], data, metric=metric, eval_samples=eval_samples,
                                            calib_samples=calib_samples), metric)  # fmt: skip
    p = Path(source)
    if p.suffix == ".onnx":
        return with_metric(load_onnx(p, data, metric=metric), metric)
    if p.suffix == ".py" or p.exists():
        return with_metric(load_spec(p), metric)
    raise WorkloadError(
        f"cannot read MODEL {source!r}: use sample:NAME ({', '.join(list_samples())}), "
        "torchvision:ARCH[@WEIGHTS.pt] --data DIR, a model.onnx with --data, or a path to a spec .py file"
    )
