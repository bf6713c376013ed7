"""Memory budget: how many bytes of tensors a run may hold at once, and the chunks that follow.

Steps that keep tensors of a batch (calibration's observed tensors, sensitivity's cached FP32
and fully quantized tensors) hold ``samples per chunk × bytes per sample``: they measure the
bytes of one sample (``footprint``) and split each batch into chunks of
``budget // bytes_per_sample`` samples.
When a whole batch fits (the bundled samples under the default budget) nothing is split and
the numbers are exactly those of an unchunked run.

The budget is a setting of the run, like ``torch.set_num_threads``: ``with memory_budget(n):``
sets it for everything called inside (CLI commands, a dashboard run); the default is 1 GiB.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import re
import resource
import sys
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .interpreter import Program

# 768 MiB of tensors: the process itself already holds ~0.8 GB of libraries (the CUDA build of torch
# maps ~0.45 GB of them at import) plus the model and the loaded data (resnet50 and 512 ImageNet-size
# images: 1.2 GB in all), and a chunk's real peak runs up to ~1.5× what the footprint counts
# (allocator fragmentation, temporaries of torch's own kernels); at 1 GiB resnet50's analyze on
# 512 images peaked at 3.08 GB (efficientnet_b0's export at 2 GiB: 3.8 GB)
DEFAULT_BUDGET = 768 * 1024**2


_BUDGET: ContextVar[int] = ContextVar("qanalysis_memory_budget", default=DEFAULT_BUDGET)

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_bytes(text: str) -> int:
    """``"2GB"``, ``"512M"``, ``"1.5g"``, ``"300000000"`` → bytes (K, M, G, T are powers of 1024;
    a trailing ``B`` or ``iB`` is optional)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise ConfigError(f"--memory-budget {text!r} is not a size; write e.g. 2GB, 512MB or 300000000 (bytes)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ConfigError(f"--memory-budget {text!r} must be more than 0 bytes")
    return n


def current_budget() -> int:
    """Bytes of tensors the current run may keep at once."""
    return _BUDGET.get()


@contextlib.contextmanager
def memory_budget(n_bytes: int | None) -> Iterator[int]:
    """Run the block under a budget of ``n_bytes`` (None: the current one)."""
    if n_bytes is None:
        yield current_budget()
        return
    if n_bytes <= 0:
        raise ConfigError(f"the memory budget must be more than 0 bytes, got {n_bytes}")
    token = _BUDGET.set(int(n_bytes))
    try:
        yield int(n_bytes)
    finally:
        _BUDGET.reset(token)


def tensor_bytes(tensors: Iterable[torch.Tensor] | Mapping[str, torch.Tensor]) -> int:
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    return sum(t.numel() * t.element_size() for t in values if isinstance(t, torch.Tensor))


def chunk_size(bytes_per_sample: float, batch: int, budget: int | None = None) -> int:
    """Samples per chunk: as many as fit ``budget`` at ``bytes_per_sample``, at least 1, at most ``batch``."""
    budget = current_budget() if budget is None else budget
    if bytes_per_sample <= 0:
        return batch
    return max(1, min(batch, int(budget // bytes_per_sample)))


def split(x: tuple[torch.Tensor, ...], size: int) -> list[tuple[torch.Tensor, ...]]:
    """A batch of inputs as consecutive chunks of ``size`` samples (views, no copy)."""
    n = int(x[0].shape[0])
    if size >= n:
        return [x]
    return [tuple(t[i : i + size] for t in x) for i in range(0, n, size)]


def chunks(
    batches: Iterable[tuple[tuple[torch.Tensor, ...], object]],
    per_sample: Callable[[tuple[torch.Tensor, ...]], float],
    budget: int | None = None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """The inputs of evaluation batches ``[(inputs, targets), …]`` as chunks that fit ``budget``
    (default: the run's) at ``per_sample(inputs)`` bytes per sample (e.g. ``Footprints(...)(x).live``).
    A batch that fits comes whole, so a run over the chunks is the unchunked run."""
    for x, _ in batches:
        for c in split(x, chunk_size(per_sample(x), int(x[0].shape[0]), budget)):
            yield c
            release()  # the chunk's freed tensors, before the next one allocates its own


def peak_rss_bytes() -> int:
    """The peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass(frozen=True)
class Footprint:
    """What one sample costs in a run of a graph: each computed tensor's bytes (``sizes``) and the
    peak bytes live at once when every tensor is freed after its last reader (``live``).

    ``live`` counts a simulated run's fake-quantization too: the simulator hands a node a
    fake-quantized copy of each quantized input (``simulate.fake_quant``: one new tensor of the
    input's size, computed in place), held while the node runs beside its inputs and outputs.
    Every activation input of the node is counted as quantized, an upper bound; ``float_live``
    is the float run's peak without those copies."""

    sizes: dict[str, int]
    live: int
    float_live: int = 0
    dims: dict[str, int] = field(default_factory=dict)  # each computed tensor's rank

    @property
    def largest(self) -> int:
        """Bytes per sample of the largest computed tensor (what a temporary copy of one costs)."""
        return max(self.sizes.values(), default=0)

    def kept(self, names: Iterable[str]) -> int:
        """Bytes per sample of keeping ``names`` for a whole run."""
        return sum(self.sizes.get(t, 0) for t in set(names))


class Footprints:
    """``Footprint`` of a program per input shape, measured on one sample of the first batch of
    each shape seen (batches of one shape cost the same per sample)."""

    def __init__(self, program: Program, input_names: list[str]):
        self.program, self.input_names = program, input_names
        self._by_shape: dict[tuple, Footprint] = {}

    def __call__(self, x: tuple[torch.Tensor, ...]) -> Footprint:
        key = tuple((tuple(t.shape[1:]), t.dtype) for t in x)
        if key not in self._by_shape:
            self._by_shape[key] = footprint(self.program, dict(zip(self.input_names, (t[:1] for t in x))))
        return self._by_shape[key]


def footprint(program: Program, feeds1: Mapping[str, torch.Tensor]) -> Footprint:
    """Run ``program`` on one sample keeping everything, then replay its frees to find the peak."""
    with torch.inference_mode():
        env = program.run(feeds1, keep=True)
    size = {k: v.numel() * v.element_size() for k, v in env.items() if isinstance(v, torch.Tensor)}
    outs = set(program.outputs)
    last: dict[str, int] = {}
    for n in program.nodes:
        for t in n.inputs:
            if t in size:
                last[t] = n.index
    live = peak = peak_q = sum(size.get(t, 0) for t in feeds1)
    for n in program.nodes:
        live += sum(size.get(t, 0) for t in n.outputs if t)
        peak = max(peak, live)
        # the fake-quantized copies of the node's activation inputs live while it runs; the engine
        # arithmetic kernels' temporaries (float64 copies, accumulators, im2col) do not grow with
        # the chunk: they run over blocks of samples (simulate.KERNEL_BLOCK_BYTES)
        ins = sum(size.get(t, 0) for t in set(n.inputs) if t)
        peak_q = max(peak_q, live + ins)
        for t in set(n.inputs):
            if t in size and last.get(t) == n.index and t not in outs and t not in feeds1:
                live -= size[t]
    return Footprint(size, peak_q, peak, {k: v.dim() for k, v in env.items() if isinstance(v, torch.Tensor)})


def rss_now() -> int:
    """This process's resident memory now, in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


_LIBC = None
if sys.platform.startswith("linux"):
    try:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _LIBC.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        _LIBC = None
_last_trim = 0


def release(min_growth: int = 256 * 1024**2) -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``) once the resident size has
    grown by ``min_growth`` since the last call that trimmed (0: always). Why: torch frees
    activations with ``free``, but glibc keeps freed chunks of a few MB in its heap, fragmented,
    so resident memory creeps up by hundreds of MB per phase although nothing is live."""
    global _last_trim
    if _LIBC is None:
        return
    now = rss_now()
    if min_growth and now - _last_trim < min_growth:
        return
    _LIBC.malloc_trim(0)
    _last_trim = rss_now()
