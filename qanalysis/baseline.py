"""FP32 baseline: metric, latency (median and IQR, ``time_calls``), throughput, size and peak memory,
for the PyTorch model and for its FP32 ONNX Runtime engine."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .engine import run_session, session
from .workload import Inputs, Workload, run_model


# Spread beyond which a timing is flagged: the interquartile range over the median.
UNSTABLE_IQR_OVER_MEDIAN = 0.25


@dataclass(frozen=True)
class Latency:
    """Wall time of one call, in ms per *sample*: the median over ``repeats`` timed calls after a
    warm-up, its interquartile range, and ``unstable`` when IQR / median > 25 % (a busy machine:
    do not trust small differences). Mean ± std are kept for reference; the median is the number."""

    batch: int
    mean_ms: float
    std_ms: float
    repeats: int
    median_ms: float = float("nan")
    iqr_ms: float = float("nan")
    unstable: bool = False

    @property
    def throughput(self) -> float:
        """samples / s, at the median."""
        return 1000.0 / self.median_ms if self.median_ms > 0 else float("nan")

    def label(self) -> str:
        """``0.244 ms (IQR 0.012, 50 runs)``, with ``, unstable`` when the spread is too large to trust."""
        return f"{self.median_ms:.3f} ms (IQR {self.iqr_ms:.3f}, {self.repeats} runs{', unstable' if self.unstable else ''})"

    def to_dict(self) -> dict:
        return {**asdict(self), "throughput_per_s": self.throughput}


def _latency(times: list[float], batch: int) -> Latency:
    import numpy as np

    a = np.asarray(times)
    q1, med, q3 = (float(v) for v in np.percentile(a, [25, 50, 75]))
    return Latency(batch, float(a.mean()), float(a.std()), len(times), med, q3 - q1,
                   bool(med > 0 and (q3 - q1) / med > UNSTABLE_IQR_OVER_MEDIAN))  # fmt: skip


def _warm_up(fns: list[Callable[[], object]], warmup: int, budget_s: float) -> None:
    """``warmup`` rounds of calls (at least one), fewer once they have taken ``budget_s / 5``."""
    start = time.perf_counter()
    for _ in range(warmup):
        for fn in fns:
            fn()
        if time.perf_counter() - start > budget_s / 5:
            break


def time_calls(fn: Callable[[], object], batch: int, *, repeats: int = 50, warmup: int = 5, budget_s: float = 5.0,
               min_runs: int = 10) -> Latency:  # fmt: skip
    """The one latency protocol (Summary, search, compare, export, validate): ``warmup`` untimed
    calls, then up to ``repeats`` timed calls, at least ``min_runs`` whatever ``budget_s`` says;
    the median per sample, its IQR, and the ``unstable`` flag. Warm-up stops early once it has
    taken a fifth of ``budget_s`` (a whole evaluation batch: one or two calls warm the caches as
    well as five; resnet18's batch of 32 spent 13 s of its 66-s baseline warming up)."""
    _warm_up([fn], warmup, budget_s)
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0 / batch)
        if len(times) >= min_runs and time.perf_counter() - start > budget_s:
            break
    return _latency(times, batch)


def time_interleaved(fns: dict[str, Callable[[], object]], batch: int = 1, *, repeats: int = 50, warmup: int = 5,
                     budget_s: float = 10.0, min_runs: int = 10) -> dict[str, Latency]:  # fmt: skip
    """``time_calls``' protocol for several engines at once, one call of each per round (the order
    rotating), so a load change on the machine hits them all alike and their ratios hold."""
    names = list(fns)
    _warm_up([fns[n] for n in names], warmup, budget_s)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[n]()
            times[n].append((time.perf_counter() - t) * 1000.0 / batch)
        if r + 1 >= min_runs and time.perf_counter() - start > budget_s:
            break
    return {n: _latency(v, batch) for n, v in times.items()}


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class PeakMemory:
    """Peak resident memory a run added, or ``None`` with the reason it could not be measured."""

    bytes: int | None
    note: str = ""


def _release_free_memory() -> None:
    """Give the allocator's free pages back to the OS, so the next run's allocations show in RSS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


MEMORY_RESOLUTION_KIB = 256


def measure_peak_memory(fn: Callable[[], object]) -> PeakMemory:
    """Peak RSS of this process during ``fn`` minus RSS before it (Linux: VmHWM reset through
    /proc/self/clear_refs after returning free pages to the OS with malloc_trim; without that
    a run reusing memory an earlier run freed shows a peak of 0)."""
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        return PeakMemory(None, f"peak memory needs Linux's /proc/self/clear_refs ({e.strerror or e})")
    before = _rss_kib("VmRSS:")
    fn()
    peak = _rss_kib("VmHWM:")
    if before is None or peak is None:
        return PeakMemory(None, "peak memory needs Linux's /proc/self/status")
    # a few pages of growth is other threads' noise (allocator, the OS), not the run's memory
    if peak - before < MEMORY_RESOLUTION_KIB:
        return PeakMemory(None, "the run reused memory already held by the process, so its peak could not be seen")
    return PeakMemory((peak - before) * 1024)


def peak_memory_bytes(fn: Callable[[], object]) -> int | None:
    """Peak resident memory added by ``fn``; ``None`` (never 0) when it cannot be measured."""
    return measure_peak_memory(fn).bytes


_ENGINE_PROBE = r"""
import sys
import numpy as np
import onnxruntime as ort

def kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])

arrays = np.load(sys.argv[2])
feeds_in = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # forget the imports' peak
except OSError:
    pass
before = kib("VmRSS:")
so = ort.SessionOptions()
so.log_severity_level = 3
sess = ort.InferenceSession(sys.argv[1], sess_options=so, providers=["CPUExecutionProvider"])
sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), feeds_in)})
print(kib("VmHWM:") - before)
"""


def engine_peak_memory(path: str | Path, inputs: Inputs, *, timeout_s: float = 300.0) -> PeakMemory:
    """Peak resident memory of loading the ONNX Runtime engine ``path`` and running it once on
    ``inputs``, measured in a fresh process (weights, arena and activations; the Python, NumPy
    and onnxruntime imports are subtracted). In-process, earlier runs' freed memory hides it."""
    import subprocess
    import sys
    import tempfile

    import numpy as np

    if not Path("/proc/self/status").exists():
        return PeakMemory(None, "peak memory needs Linux's /proc/self/status")
    with tempfile.TemporaryDirectory(prefix="qanalysis-mem-") as d:
        feeds = Path(d) / "inputs.npz"
        np.savez(feeds, *[t.detach().cpu().numpy() for t in inputs])
        try:  # cwd: the empty folder, so nothing there shadows numpy or onnxruntime
            r = subprocess.run([sys.executable, "-c", _ENGINE_PROBE, str(Path(path).resolve()), str(feeds)], capture_output=True,
                               text=True, timeout=timeout_s, cwd=d, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as e:
            return PeakMemory(None, f"the memory probe process failed: {e}")
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines or not lines[-1].strip().lstrip("-").isdigit():
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:200]
        return PeakMemory(None, f"the memory probe process failed: {last}")
    kib = int(lines[-1])
    if kib <= 0:
        return PeakMemory(None, "the engine's run did not raise the probe process' peak memory")
    return PeakMemory(kib * 1024)


@dataclass
class Baseline:
    torch_metric: float
    onnx_metric: float
    onnx_max_abs_diff: float
    param_bytes: int
    onnx_bytes: int
    torch_latency_b1: Latency
    torch_latency_batch: Latency
    ort_latency_b1: Latency
    ort_latency_batch: Latency
    torch_peak_memory_bytes: int | None
    ort_peak_memory_bytes: int | None
    memory_note: str = ""  # why a peak memory is None

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("torch_latency_b1", "torch_latency_batch", "ort_latency_b1", "ort_latency_batch"):
            d[k] = getattr(self, k).to_dict()
        return d


def first_sample(x: Inputs) -> Inputs:
    return tuple(t[:1] for t in x)


def measure_baseline(wl: Workload, onnx_path: Path, *, repeats: int = 50) -> Baseline:
    model = wl.model
    sess = session(onnx_path)
    t_outs, o_outs = [], []
    for x, _ in wl.evaluation:
        t_outs.append(run_model(model, x))
        o_outs.append(run_session(sess, x))
    t_cat, o_cat = torch.cat(t_outs), torch.cat(o_outs)
    x_b = wl.evaluation[0][0]
    x_1 = first_sample(x_b)
    nb = int(x_b[0].shape[0])
    torch_threads = torch.get_num_threads()
    with torch.inference_mode():
        tb1 = time_calls(lambda: model(*x_1), 1, repeats=repeats)
        tbn = time_calls(lambda: model(*x_b), nb, repeats=max(5, repeats // 4))
        tmem = measure_peak_memory(lambda: model(*x_b))
    ob1 = time_calls(lambda: run_session(sess, x_1), 1, repeats=repeats)
    obn = time_calls(lambda: run_session(sess, x_b), nb, repeats=max(5, repeats // 4))
    omem = engine_peak_memory(onnx_path, x_b)
    torch.set_num_threads(torch_threads)
    params = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    return Baseline(
        torch_metric=wl.score(t_cat),
        onnx_metric=wl.score(o_cat),
        onnx_max_abs_diff=float((t_cat - o_cat).abs().max()),
        param_bytes=int(params),
        onnx_bytes=os.path.getsize(onnx_path),
        torch_latency_b1=tb1,
        torch_latency_batch=tbn,
        ort_latency_b1=ob1,
        ort_latency_batch=obn,
        torch_peak_memory_bytes=tmem.bytes,
        ort_peak_memory_bytes=omem.bytes,
        memory_note="; ".join(dict.fromkeys(f"{k}: {m.note}" for k, m in (("PyTorch", tmem), ("ONNX Runtime", omem)) if m.note)),
    )


def latency_protocol(fn: Callable[[], object], *, repeats: int = 50, warmup: int = 5, budget_s: float = 10.0) -> dict:
    """``time_calls`` at batch 1 as a plain dict (validate's results file): ``median_ms``,
    ``iqr_ms``, ``mean_ms``, ``std_ms``, ``runs``, ``unstable``."""
    lat = time_calls(fn, 1, repeats=repeats, warmup=warmup, budget_s=budget_s)
    return {"median_ms": lat.median_ms, "iqr_ms": lat.iqr_ms, "mean_ms": lat.mean_ms, "std_ms": lat.std_ms,
            "runs": lat.repeats, "unstable": lat.unstable}  # fmt: skip
