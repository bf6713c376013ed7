"""Workloads: a model plus calibration data, evaluation data and a task metric.

Three sources, one contract (DESIGN.md step 1):

* ``sample:NAME`` — a bundled spec file in ``sample_models/`` (``list_samples()``);
* ``torchvision:ARCH[@WEIGHTS.pt]`` with an image folder (one sub-folder per class);
* ``path/to/spec.py`` defining ``build_model``, ``calibration_batches``,
  ``evaluation_batches`` and optionally ``evaluate``, ``training_batches``, ``loss``.

Batches are materialized once, as tuples of input tensors, so every later step (export,
calibration, simulation, engines) sees exactly the same data.
"""

from __future__ import annotations

import importlib.util
import math
import random
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch

from .errors import WorkloadError

Inputs = tuple[torch.Tensor, ...]
Task = Literal["classification", "regression", "other"]

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "sample_models"
_SAMPLE_NAMES = ("digits_cnn", "digits_resnet", "digits_vit", "diabetes_mlp")


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

    @property
    def n_eval(self) -> int:
        return sum(int(t.shape[0]) for _, t in self.evaluation)

    @property
    def n_calib(self) -> int:
        return sum(int(x[0].shape[0]) for x in self.calibration)

    def targets(self) -> torch.Tensor:
        return torch.cat([t for _, t in self.evaluation], dim=0)

    def score(self, outputs: torch.Tensor) -> float:
        """The task metric of concatenated outputs; NaN outputs or a failing metric raise."""
        if not torch.isfinite(outputs).all():
            raise WorkloadError("the model produced NaN or infinite outputs on the evaluation data")
        try:
            value = self.evaluate(outputs, self.targets())
        except WorkloadError:
            raise
        except Exception as e:  # noqa: BLE001 - user code
            raise WorkloadError(f"evaluate() raised {type(e).__name__}: {e}") from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise WorkloadError(f"evaluate() must return a number, got {type(value).__name__}") from None
        if not math.isfinite(value):
            raise WorkloadError(f"evaluate() returned {value}")
        return value


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
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        if y.shape[0] != x[0].shape[0]:
            raise WorkloadError(f"evaluation batch {i}: {x[0].shape[0]} inputs but {y.shape[0]} targets")
        batches.append((x, y))
    if not batches:
        raise WorkloadError("evaluation_batches() yielded no batches")
    return batches


def _call(fn: Callable, what: str) -> Any:
    try:
        return fn()
    except WorkloadError:
        raise
    except Exception as e:  # noqa: BLE001 - user code
        raise WorkloadError(f"{what} raised {type(e).__name__}: {e}") from None


def _infer_task(outputs: torch.Tensor, targets: torch.Tensor, default_metric: bool) -> Task:
    if outputs.dim() == 2 and outputs.shape[1] > 1 and targets.dim() == 1 and not targets.is_floating_point():
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
    **extra: Any,
) -> Workload:
    """Materialize the batches, check the model runs on them, infer the task."""
    if not isinstance(model, torch.nn.Module):
        raise WorkloadError(f"build_model() must return a torch.nn.Module, got {type(model).__name__}")
    model = model.eval().float()
    calib = _materialize_calibration(_call(lambda: list(calibration), "calibration_batches()"))
    evals = _materialize_evaluation(_call(lambda: list(evaluation), "evaluation_batches()"))
    try:
        out = run_model(model, calib[0])
    except WorkloadError:
        raise
    except Exception as e:  # noqa: BLE001 - user code
        raise WorkloadError(
            f"the model's forward failed on the first calibration batch (shape "
            f"{[list(t.shape) for t in calib[0]]}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not torch.isfinite(out).all():
        raise WorkloadError("the model produced NaN or infinite outputs on the first calibration batch")
    try:
        eout = run_model(model, evals[0][0])
    except Exception as e:  # noqa: BLE001 - user code
        raise WorkloadError(
            f"the model's forward failed on the first evaluation batch: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    task = _infer_task(eout, evals[0][1], evaluate is None)
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
    model = _call(m.build_model, "build_model()")
    evaluate = getattr(m, "evaluate", None)
    training = getattr(m, "training_batches", None)
    loss = getattr(m, "loss", None)
    return finish(
        name or str(path),
        model,
        _call(m.calibration_batches, "calibration_batches()"),
        _call(m.evaluation_batches, "evaluation_batches()"),
        evaluate if callable(evaluate) else None,
        metric_name=getattr(m, "METRIC_NAME", "accuracy (%)" if not callable(evaluate) else "metric"),
        description=getattr(m, "DESCRIPTION", ""),
        training=training if callable(training) else None,
        loss=loss if callable(loss) else (default_loss if callable(training) else None),
        class_names=getattr(m, "CLASS_NAMES", None),
        images=bool(getattr(m, "IMAGES", False)),
    )


def load_sample(name: str) -> Workload:
    if name not in list_samples():
        raise WorkloadError(f"unknown sample {name!r}; available: {', '.join(list_samples())}")
    return load_spec(SAMPLES_DIR / f"{name}.py", name=f"sample:{name}")


# --------------------------------------------------------------------------- torchvision

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def _torchvision_model(arch: str, weights: Path | None, num_classes: int) -> torch.nn.Module:
    import torchvision

    try:
        available = torchvision.models.list_models(module=torchvision.models)
    except Exception:  # pragma: no cover - very old torchvision
        available = []
    if arch not in available:
        raise WorkloadError(f"unknown torchvision architecture {arch!r}; e.g. resnet18, mobilenet_v3_small, vit_b_16")
    if weights is None:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if not weights.is_file():
        raise WorkloadError(f"weights file not found: {weights}")
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - maybe a whole pickled model
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise WorkloadError(f"cannot read weights {weights}: {type(e).__name__}: {e}") from None
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WorkloadError(f"{weights} holds a {type(obj).__name__}, not a state_dict or a model")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    # The number of classes comes from the weights: the last 2-D parameter of a fresh model is the head.
    fresh = torchvision.models.get_model(arch, weights=None)
    head = [k for k, v in fresh.state_dict().items() if v.dim() == 2][-1]
    n_cls = int(sd[head].shape[0]) if head in sd else num_classes
    model = torchvision.models.get_model(arch, weights=None, num_classes=n_cls)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise WorkloadError(f"{weights} does not fit {arch}: {str(e).splitlines()[0]}") from None
    return model


def load_torchvision(spec: str, data: str | Path | None, *, calib_fraction: float = 0.25, max_calib: int = 256) -> Workload:
    """``ARCH[@WEIGHTS]`` on an image folder; images split per class, deterministically."""
    from PIL import Image
    from torchvision import transforms

    arch, _, w = spec.partition("@")
    if data is None:
        raise WorkloadError("torchvision models need --data DIR (an image folder, one sub-folder per class)")
    root = Path(data)
    if not root.is_dir():
        raise WorkloadError(f"data folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise WorkloadError(f"{root} has no class sub-folders")
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
    model = _torchvision_model(arch, Path(w) if w else None, len(classes))
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    def load(files: list[tuple[Path, int]], bs: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
            out.append((torch.stack(xs), torch.tensor([c for _, c in chunk])))
        return out

    calib = [x for x, _ in load(calib_files)]
    evals = load(eval_files)
    return finish(
        f"torchvision:{spec}",
        model,
        calib,
        evals,
        None,
        metric_name="top-1 accuracy (%)",
        description=f"torchvision {arch} on {root}",
        class_names=classes,
        images=True,
        loss=default_loss,
    )


def load_workload(source: str, data: str | Path | None = None) -> Workload:
    """Dispatch on the MODEL argument: ``sample:NAME``, ``torchvision:ARCH[@W]`` or a spec path."""
    if source.startswith("sample:"):
        return load_sample(source.split(":", 1)[1])
    if source.startswith("torchvision:"):
        return load_torchvision(source.split(":", 1)[1], data)
    p = Path(source)
    if p.suffix == ".py" or p.exists():
        return load_spec(p)
    raise WorkloadError(
        f"cannot read MODEL {source!r}: use sample:NAME ({', '.join(list_samples())}), "
        "torchvision:ARCH[@WEIGHTS.pt] --data DIR, or a path to a spec .py file"
    )
