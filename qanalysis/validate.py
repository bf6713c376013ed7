"""Validate any ONNX engine on the user's own data, and compare two results with error bars.

    qanalysis validate ENGINE.onnx [ENGINE.onnx ...] --data DIR --out DIR
    qanalysis diff A B            (A, B: results files written by validate, or engines with --data)

An engine from any tool (ORT ``quantize_static`` / ``quantize_dynamic``, FP16, this tool's
own) is run by ONNX Runtime on every sample of an image folder (one sub-folder per class;
resize → center crop → normalize, NCHW or NHWC) or of a spec file's ``evaluation_batches()``.
A results file holds the metric (top-1 / top-5 or the spec's), per-class results, per-sample
predictions and correctness, latency (median, mean ± std), size and versions; the raw
outputs go beside it (``.npy``) so ``diff`` can re-score any metric.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import QAnalysisError, WorkloadError
from .stats import Interval, correct_vector, mcnemar, one_sample_worth, paired_bootstrap, verdict_with_interval
from .workload import IMAGE_EXTS, top1_accuracy

RESULTS_SUFFIX = ".results.json"


@dataclass
class EvalData:
    """Evaluation batches and how to score them, without a model."""

    name: str
    batches: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]
    metric_name: str = "top-1 accuracy (%)"
    evaluate: Callable[[torch.Tensor, torch.Tensor], float] | None = None  # None: top-1 (+ top-5)
    class_names: list[str] | None = None
    higher_is_better: bool = True  # a spec's HIGHER_IS_BETTER

    @property
    def targets(self) -> torch.Tensor:
        return torch.cat([t for _, t in self.batches])


def image_folder_data(root: str | Path, *, size: int = 224, resize: int | None = 256,
                      mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225),
                      layout: str = "NCHW", batch_size: int = 32) -> EvalData:  # fmt: skip
    """Every image of ``root/CLASS/*``: resize (short side) → center crop → [0, 1] → normalize."""
    from .workload import image_batches, image_classes, image_transform

    root = Path(root)
    classes = image_classes(root)
    if layout not in ("NCHW", "NHWC"):
        raise WorkloadError(f"layout must be NCHW or NHWC, got {layout!r}")
    files = [(p, ci) for ci, c in enumerate(classes) for p in sorted((root / c).iterdir()) if p.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise WorkloadError(f"{root} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    tf = image_transform(size=size, resize=resize, mean=mean, std=std)
    batches = [((x,), t) for x, t in image_batches(files, tf, bs=batch_size, layout=layout)]
    return EvalData(name=str(root), batches=batches, class_names=classes)


def spec_data(path: str | Path) -> EvalData:
    """``evaluation_batches()`` and ``evaluate()`` of a spec file (its model is not built)."""
    from .workload import _call, _direction, _import_spec, _materialize_evaluation

    path = Path(path)
    m = _import_spec(path)
    if not callable(getattr(m, "evaluation_batches", None)):
        raise WorkloadError(f"spec {path.name} does not define evaluation_batches()")
    batches = _materialize_evaluation(_call(lambda: list(m.evaluation_batches()), f"spec {path.name}: evaluation_batches()"))
    ev = getattr(m, "evaluate", None)
    return EvalData(name=str(path), batches=batches, metric_name=getattr(m, "METRIC_NAME", "metric") if callable(ev) else
                    "top-1 accuracy (%)", evaluate=ev if callable(ev) else None,
                    higher_is_better=_direction(m, path) if callable(ev) else True)  # fmt: skip


# --------------------------------------------------------------------------- running an engine


def _feeds(sess, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    specs = sess.get_inputs()
    if len(specs) != len(inputs):
        raise WorkloadError(f"the engine takes {len(specs)} input(s) ({', '.join(s.name for s in specs)}); the data gives {len(inputs)}")
    feeds = {}
    for s, t in zip(specs, inputs):
        a = t.numpy()
        if s.type == "tensor(float16)":
            a = a.astype(np.float16)
        elif s.type == "tensor(int64)":
            a = a.astype(np.int64)
        elif s.type == "tensor(int32)":
            a = a.astype(np.int32)
        elif s.type == "tensor(float)":
            a = a.astype(np.float32)
        feeds[s.name] = a
    return feeds


def _run(sess, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One batch; an engine with a fixed batch dimension of 1 is fed sample by sample."""
    try:
        out = sess.run(None, _feeds(sess, inputs))[0]
    except WorkloadError:
        raise
    except Exception:  # noqa: BLE001 - e.g. a fixed batch size: retry per sample
        n = int(inputs[0].shape[0])
        if n == 1:
            raise
        return torch.cat([_run(sess, tuple(t[i : i + 1] for t in inputs)) for i in range(n)])
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


@dataclass
class Results:
    """One engine on one data set."""

    engine: str
    engine_sha256: str
    size_bytes: int
    data: str
    metric_name: str
    metric: float
    n: int
    outputs: torch.Tensor
    targets: torch.Tensor
    top1: float | None = None
    top5: float | None = None
    per_class: list[dict] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("outputs", "targets")}
        if self.outputs.dim() == 2:
            d["predictions"] = self.outputs.argmax(1).tolist()
        d["targets"] = self.targets.reshape(-1).tolist() if self.targets.numel() == self.n else None
        d["one_sample_worth_points"] = one_sample_worth(self.n)
        return d

    def save(self, out: Path, stem: str) -> list[Path]:
        from .report import atomic_write, write_json

        js = write_json(self.to_dict() | {"outputs_file": f"{stem}.outputs.npy", "targets_file": f"{stem}.targets.npy"},
                        out / f"{stem}{RESULTS_SUFFIX}")  # fmt: skip
        o = atomic_write(out / f"{stem}.outputs.npy", lambda t: np.save(open(t, "wb"), self.outputs.numpy()))
        tg = atomic_write(out / f"{stem}.targets.npy", lambda t: np.save(open(t, "wb"), self.targets.numpy()))
        return [js, o, tg]

    @classmethod
    def load(cls, path: str | Path) -> Results:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            outputs = torch.from_numpy(np.load(path.parent / d["outputs_file"]))
            targets = torch.from_numpy(np.load(path.parent / d["targets_file"]))
            fields = {k: d[k] for k in ("engine", "engine_sha256", "size_bytes", "data", "metric_name", "metric", "n")}
        except FileNotFoundError as e:
            raise WorkloadError(f"results file incomplete: {e.filename} not found") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WorkloadError(f"{path} is not a qanalysis results file ({type(e).__name__}: {e})") from None
        return cls(**fields, outputs=outputs, targets=targets, top1=d.get("top1"), top5=d.get("top5"),
                   per_class=d.get("per_class", []), latency=d.get("latency", {}), environment=d.get("environment", {}))  # fmt: skip


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _engine_bytes(path: Path) -> int:
    """The model file plus its external-data files."""
    import onnx

    total = path.stat().st_size
    try:
        m = onnx.load(str(path), load_external_data=False)
        locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
        total += sum((path.parent / loc).stat().st_size for loc in locs if (path.parent / loc).is_file())
    except Exception:  # noqa: BLE001 - size of the main file is still right
        pass
    return total


def _class_shaped(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """[N, C] scores and [N] integer class ids in range."""
    t = targets.reshape(-1)
    if outputs.dim() != 2 or t.numel() != outputs.shape[0] or t.is_floating_point() and not torch.equal(t, t.round()):
        return False
    return bool(t.numel() and t.min() >= 0 and t.max() < outputs.shape[1])


def _top5(outputs: torch.Tensor, targets: torch.Tensor) -> float | None:
    if outputs.dim() != 2 or outputs.shape[1] < 5:
        return None
    top = outputs.topk(5, dim=1).indices
    return float((top == targets.reshape(-1, 1).long()).any(dim=1).double().mean() * 100)


def validate_engine(path: str | Path, data: EvalData, *, threads: int | None = None, repeats: int = 50) -> Results:
    """Run ``path`` on every sample of ``data``: metric, per class, latency at batch 1."""
    from .analysis import library_versions
    from .baseline import latency_protocol
    from .engine import session

    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"engine not found: {path}")
    sess = session(path, threads=threads)
    try:
        outputs = torch.cat([_run(sess, x) for x, _ in data.batches])
    except QAnalysisError:
        raise
    except Exception as e:  # noqa: BLE001 - the engine rejected the data
        raise WorkloadError(f"ONNX Runtime could not run {path.name} on {data.name}: {str(e).splitlines()[0][:300]}") from None
    targets = data.targets
    if outputs.shape[0] != targets.shape[0]:
        raise WorkloadError(f"{path.name} gave {outputs.shape[0]} outputs for {targets.shape[0]} samples")
    if not torch.isfinite(outputs).all():
        raise WorkloadError(f"{path.name} produced NaN or infinite outputs on {data.name}")
    top1 = top5 = None
    per_class: list[dict] = []
    if _class_shaped(outputs, targets):  # top-1 / top-5 and per class, whatever the headline metric
        top1, top5 = top1_accuracy(outputs, targets), _top5(outputs, targets)
        correct = correct_vector(outputs, targets)
        names = data.class_names or [str(i) for i in range(outputs.shape[1])]
        for ci, name in enumerate(names):
            m = targets.reshape(-1).long() == ci
            if m.any():
                per_class.append({"class": name, "index": ci, "n": int(m.sum()), "accuracy": float(correct[m.numpy()].mean())})
    if data.evaluate is None:
        metric = top1_accuracy(outputs, targets)
    else:
        try:
            metric = float(data.evaluate(outputs, targets))
        except Exception as e:  # noqa: BLE001 - user code
            raise WorkloadError(f"evaluate() raised {type(e).__name__}: {e}") from None
    x1 = tuple(t[:1] for t in data.batches[0][0])
    lat = latency_protocol(lambda: _run(sess, x1), repeats=repeats)
    env = {"versions": library_versions(), "cpu": platform.processor() or platform.machine(),
           "threads": threads or 0, "date": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    return Results(engine=str(path), engine_sha256=_sha256(path), size_bytes=_engine_bytes(path), data=data.name,
                   metric_name=data.metric_name, metric=metric, n=int(targets.shape[0]), outputs=outputs,
                   targets=targets, top1=top1, top5=top5, per_class=per_class, latency=lat, environment=env)  # fmt: skip


# --------------------------------------------------------------------------- diff


@dataclass
class Diff:
    """A (reference) against B (candidate): drop = metric(A) − metric(B) (B − A for lower-is-better metrics), with error bars."""

    a: str
    b: str
    metric_name: str
    metric_a: float
    metric_b: float
    drop: Interval
    verdict: dict
    mcnemar: dict | None
    per_class: list[dict]
    one_sample_worth: float
    size_ratio: float | None
    latency_ratio: float | None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["drop"] = self.drop.to_dict()
        return d

    def table(self) -> str:
        lines = [
            f"A {self.a}: {self.metric_name} {self.metric_a:.2f}",
            f"B {self.b}: {self.metric_name} {self.metric_b:.2f}",
            f"drop A − B: {self.drop.label()} on {self.drop.n} paired samples "
            f"(one sample = {self.one_sample_worth:.2f} points)",
        ]
        if self.mcnemar:
            m = self.mcnemar
            lines.append(f"McNemar: {m['ref_right_cand_wrong']} right in A only, {m['ref_wrong_cand_right']} right in B only, "
                         f"p = {m['p_value']:.3g}")  # fmt: skip
        if self.per_class:
            worst = min(self.per_class, key=lambda r: -r["drop"])
            lines.append(f"worst class: {worst['class']} drop {worst['drop']:.2f} (95% CI {worst['low']:.2f} to {worst['high']:.2f}, n={worst['n']})")
        if self.size_ratio:
            lines.append(f"size B/A {self.size_ratio:.2f}×" + (f", latency B/A {self.latency_ratio:.2f}×" if self.latency_ratio else ""))
        lines.append(f"verdict: {self.verdict['text']}")
        return "\n".join(lines)


def diff(a: Results, b: Results, *, evaluate: Callable | None = None, n_boot: int = 2000, seed: int = 0,
         higher_is_better: bool = True) -> Diff:  # fmt: skip
    """Paired comparison of two results on the same samples; with ``higher_is_better`` False (a spec's
    perplexity) the drop is metric(B) − metric(A) and the verdict is judged in % of metric(A)."""
    if a.n != b.n or not torch.equal(a.targets.reshape(-1), b.targets.reshape(-1)):
        raise WorkloadError(f"{a.engine} and {b.engine} were not validated on the same samples ({a.n} vs {b.n}); "
                            "run validate on the same data for both")  # fmt: skip
    targets = a.targets
    mc, per_class = None, []
    if a.top1 is not None and b.top1 is not None:  # class-shaped: McNemar and per-class intervals
        ca, cb = correct_vector(a.outputs, targets), correct_vector(b.outputs, targets)
        mc = mcnemar(ca, cb)
        t = targets.reshape(-1).long().numpy()
        names = {r.get("index", i): r["class"] for i, r in enumerate(a.per_class)}
        for ci in sorted(set(t.tolist())):
            m = t == ci
            civ = paired_bootstrap(top1_accuracy, a.outputs, b.outputs, targets, n_boot=n_boot, seed=seed + 1 + ci,
                                   per_sample=(ca[m], cb[m]))  # fmt: skip
            per_class.append({"class": names.get(ci, str(ci)), "n": int(m.sum()), "a": float(ca[m].mean()),
                              "b": float(cb[m].mean()), "drop": civ.delta, "low": civ.low, "high": civ.high})  # fmt: skip
    if evaluate is not None:
        iv = paired_bootstrap(lambda o, y: float(evaluate(o, y)), a.outputs, b.outputs, targets, n_boot=n_boot, seed=seed,
                              higher_is_better=higher_is_better)  # fmt: skip
    elif a.metric_name.startswith("top-1") and mc is not None:
        iv = paired_bootstrap(top1_accuracy, a.outputs, b.outputs, targets, n_boot=n_boot, seed=seed, per_sample=(ca, cb))
    else:
        raise WorkloadError(f"the metric '{a.metric_name}' comes from a spec's evaluate(); pass --spec SPEC.py so diff can "
                            "re-score the resampled outputs")  # fmt: skip
    v = verdict_with_interval(iv, None if higher_is_better or evaluate is None else a.metric)
    size_ratio = b.size_bytes / a.size_bytes if a.size_bytes else None
    la, lb = a.latency.get("median_ms"), b.latency.get("median_ms")
    return Diff(a=a.engine, b=b.engine, metric_name=a.metric_name, metric_a=a.metric, metric_b=b.metric, drop=iv,
                verdict=v.to_dict(), mcnemar=mc, per_class=per_class, one_sample_worth=one_sample_worth(a.n),
                size_ratio=size_ratio, latency_ratio=(lb / la) if la and lb and math.isfinite(la) else None)  # fmt: skip
