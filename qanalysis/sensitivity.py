"""Per-layer and end-to-end quantization sensitivity.

For every layer L (module qualified name) and every evaluation batch:

* *only L* — the FP32 model with just L quantized (its weights, its input activations), as
  the config quantizes it: the scheme's bits, granularity, symmetry and static or dynamic
  activations, or L's own override (``"int4"``) — see ``only_plan``;
* *all but L* — the fully quantized model with L kept in float;

and from them the metric drop, end-to-end SQNR/KL of the model output, L's own output
SQNR, and the tensor-level proxies (weight SQNR, input activation SQNR, clipping).

Memory: every layer's only-L and all-but-L model outputs are kept until all batches have run
(``evaluate`` is called once on all of them). Sequence outputs (3+ dimensions: a language
model's logits [N, S, V]) are kept in float16, half the float32 cost: 2 runs × N·S·V × 2 bytes
per layer (tiny_lm: 2 × 64·64·256 × 2 B = 4 MiB per layer); their end-to-end SQNR is
accumulated batch by batch in float64 from the float32 outputs, the metric and KL read the
float16 copies (rounding moves a perplexity by ~1e-5 relative).

Speed: a layer's change only affects the nodes downstream of it, so each run starts
from the cached FP32 (or fully quantized) tensors of the same batch and re-executes
only those nodes. ``SensitivityResult.nodes_run`` / ``nodes_naive`` count the node
executions against re-running the whole graph per layer.

Memory: the two cached runs advance layer by layer with the layer loop (``Schedule``) and hold
a tensor only while a later layer's step reads it, so a batch holds a few activations per
sample rather than every tensor twice; a batch bigger than the memory budget allows runs in
chunks (``memory``). The numbers are those of one whole run per batch.
"""

from __future__ import annotations

import bisect
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import pandas as pd
import torch

from . import memory
from . import metrics as M
from .graph import Layer
from .interpreter import Program
from .scheme import Config
from .simulate import SimPlan, Simulator
from .workload import Workload, worse_by

Progress = Callable[[str], None]


@dataclass
class _Acc:
    """Σ signal², Σ noise² accumulated over batches, for an exact SQNR of the whole set."""

    BLOCK_BYTES: ClassVar[int] = 16 * 1024**2
    sig: float = 0.0
    noise: float = 0.0
    clipped: float = 0.0
    n: int = 0

    def add(self, ref: torch.Tensor, x: torch.Tensor) -> None:
        # in float64, over blocks of samples of at most BLOCK_BYTES (the float64 copies of a whole
        # chunk of large activations were about half of resnet50's per-layer analysis peak);
        # a tensor that fits is summed whole, as before
        ref, x = ref.detach(), x.detach()
        n = int(ref.shape[0]) if ref.dim() else 1
        step = n if ref.numel() * 8 <= self.BLOCK_BYTES or ref.dim() == 0 else max(1, self.BLOCK_BYTES // (8 * max(1, ref[0].numel())))
        for i in range(0, n, step):
            r = ref[i : i + step].double() if ref.dim() else ref.double()
            self.sig += float((r**2).sum())
            r -= x[i : i + step].double() if ref.dim() else x.double()
            self.noise += float((r**2).sum())
        self.n += ref.numel()

    def sqnr(self) -> float:
        if self.n == 0:
            return float("nan")
        if self.noise <= 0:
            return M.SQNR_CAP_DB
        if self.sig <= 0:
            return -M.SQNR_CAP_DB
        return min(M.SQNR_CAP_DB, 10 * math.log10(self.sig / self.noise))

    def mse(self) -> float:
        return self.noise / self.n if self.n else float("nan")


@dataclass
class LayerRow:
    layer: str
    op_type: str
    params: int
    weight_sqnr_db: float
    act_sqnr_db: float
    output_sqnr_db: float
    e2e_sqnr_db: float
    e2e_kl: float
    e2e_cosine: float
    metric_only: float
    metric_drop: float
    metric_all_but: float
    metric_drop_all_but: float
    act_clipping: float
    weight_mse: float
    act_mse: float
    depth_sqnr_db: float  # this layer's output in the fully quantized model vs FP32
    recommendation: str = ""
    recommendation_gain: float = float("nan")


@dataclass
class SensitivityResult:
    rows: list[LayerRow]
    higher_is_better: bool
    fp32_metric: float
    int8_metric: float
    fp32_outputs: torch.Tensor
    int8_outputs: torch.Tensor
    only_outputs: Mapping[str, torch.Tensor]  # a dict, or (large outputs) read from disk per layer
    nodes_run: int
    nodes_naive: int
    seconds: float
    proxy_correlation: dict[str, dict[str, float]] = field(default_factory=dict)
    memory_budget: int = 0  # bytes of tensors the run was allowed to hold
    bytes_per_sample: int = 0  # kept FP32 + kept quantized + one run's live tensors, per sample
    chunk_samples: int = 0  # samples per chunk the budget allows (a batch of more is split)
    kept_output_bytes: int = 0  # the model outputs kept to the end, counted against the budget first

    @property
    def drop(self) -> float:
        return worse_by(self.fp32_metric, self.int8_metric, self.higher_is_better)

    def rebase(self, fp32_metric: float, fp32_outputs: torch.Tensor) -> None:
        """Measure drops against another FP32 reference (the original model, before fixes)."""
        self.fp32_metric, self.fp32_outputs = fp32_metric, fp32_outputs
        for r in self.rows:
            r.metric_drop = worse_by(fp32_metric, r.metric_only, self.higher_is_better)
            o = self.only_outputs[r.layer].float()
            r.e2e_sqnr_db = M.sqnr_db(fp32_outputs, o)
            if r.e2e_kl == r.e2e_kl:  # not NaN: classification
                r.e2e_kl = M.kl_divergence(fp32_outputs, o)
        self.proxy_correlation = proxy_correlation(self.rows)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.__dict__ for r in self.rows])

    def blocks_frame(self) -> pd.DataFrame:
        """Layers grouped by their block (``block_of``), in execution order: how many, their
        parameters, Σ and max of the only-this-layer drops, Σ of the all-but drops, the worst
        layer and the lowest end-to-end SQNR. Layers outside any block are grouped by module
        (``lm_head`` and ``lm_head:add`` are one row)."""
        groups: dict[str, list[LayerRow]] = {}
        for r in self.rows:
            groups.setdefault(block_of(r.layer) or r.layer.split(":", 1)[0], []).append(r)
        rows = []
        for block, rs in groups.items():
            worst = max(rs, key=lambda r: (r.metric_drop, -r.e2e_sqnr_db))
            rows.append({"block": block, "n_layers": len(rs), "params": sum(r.params for r in rs),
                         "metric_drop_sum": sum(r.metric_drop for r in rs), "metric_drop_max": worst.metric_drop,
                         "metric_drop_all_but_sum": sum(r.metric_drop_all_but for r in rs), "worst_layer": worst.layer,
                         "min_e2e_sqnr_db": min(r.e2e_sqnr_db for r in rs)})  # fmt: skip
        return pd.DataFrame(rows, columns=BLOCK_COLUMNS)


BLOCK_COLUMNS = ["block", "n_layers", "params", "metric_drop_sum", "metric_drop_max", "metric_drop_all_but_sum",
                 "worst_layer", "min_e2e_sqnr_db"]  # fmt: skip


def block_of(layer: str) -> str:
    """The repeated block a layer belongs to: its name up to the first integer component.

    ``model.layers.3.self_attn.q_proj`` → ``model.layers.3``; ``blocks.0.attn.qkv:add`` → ``blocks.0``;
    ``layer1.0.conv2`` → ``layer1.0``; ``lm_head`` → "" (in no block)."""
    parts = layer.split(":", 1)[0].split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return ""


def only_plan(sim: Simulator, config: Config, layer: Layer) -> SimPlan:
    """The plan with every layer but ``layer`` in fp32 and ``layer`` quantized as ``config``
    quantizes it: at its own override ("int4" …) when that is a quantized precision, otherwise
    at the scheme's weight bits (a layer the config keeps in float too: "what would quantizing
    it cost" is still the question); granularity, symmetry and static or dynamic activations
    are the scheme's. The bits are passed by layer name because a config cannot always say
    "the scheme's bits": a layer whose module is another layer's name ("blocks.0.attn.qkv:add")
    would read that layer's "fp32"."""
    own = config.layers.get(layer.name)
    if own is None and layer.module:
        own = config.layers.get(layer.module)
    bits = sim.weight_bits(config, layer)
    layers = {l.name: "fp32" for l in sim.qg.layers if l.name != layer.name}
    if own is not None and bits is not None:
        layers[layer.name] = own
    return sim.plan(config.with_layers(layers), bits={layer.name: bits or sim.scheme.weights.bits})


# per-layer outputs kept to the end go to disk when they would take more than this share of the budget
SPILL_FRACTION = 0.5


class _Kept(Mapping):
    """Per-layer model outputs kept to the end of the analysis (the metric is called once on all
    samples), layer name → outputs concatenated. In memory; or, when they would take more than
    half the memory budget (a detector's 3,234 × 95 outputs, 139 layers × 2 runs, 32 images:
    5.2 GB in float16), in files of a temporary folder, read back one layer at a time."""

    def __init__(self, names: list[str]):
        self._parts: dict[str, list] = {n: [] for n in names}
        self._dir: tempfile.TemporaryDirectory | None = None
        self._n = 0

    @property
    def on_disk(self) -> bool:
        return self._dir is not None

    def spill(self) -> None:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="qanalysis-")

    def append(self, name: str, t: torch.Tensor) -> None:
        if self._dir is None:
            self._parts[name].append(t)
            return
        self._n += 1
        path = Path(self._dir.name) / f"{self._n}.pt"
        torch.save(t.contiguous().clone(), path)
        self._parts[name].append(path)

    def __getitem__(self, name: str) -> torch.Tensor:
        return torch.cat([torch.load(p) if isinstance(p, Path) else p for p in self._parts[name]])

    def __iter__(self):
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)


def _keep(t: torch.Tensor) -> torch.Tensor:
    """What is kept of a per-layer output: float16 for sequence outputs within float16's range."""
    if t.dim() >= 3 and t.is_floating_point() and float(t.abs().max()) < 6.0e4:
        return t.half()
    return t


def _plans(sim: Simulator, config: Config) -> tuple[SimPlan, SimPlan, dict[str, SimPlan], dict[str, SimPlan]]:
    full = sim.plan(config)
    fp = sim.fp32_plan()
    only, all_but = {}, {}
    for l in sim.qg.layers:
        only[l.name] = only_plan(sim, config, l)
        all_but[l.name] = sim.plan(config.with_layers({**config.layers, l.name: "fp32"}))
    return full, fp, only, all_but


def boundary_inputs(prog: Program, dirty: set[int]) -> set[str]:
    """Tensors a partial run over ``dirty`` reads from its cached environment: the inputs of
    dirty nodes that no dirty node produces (graph inputs and initializers excluded)."""
    out = set()
    for i in dirty:
        for t in prog.nodes[i].inputs:
            p = prog.producer.get(t)
            if p is not None and p not in dirty:
                out.add(t)
    return out


def upstream(prog: Program, dirty: set[int], end: int, output: str) -> set[int]:
    """The unchanged nodes after ``end`` that a partial run over ``dirty`` needs to run too: the
    producers (transitively) of what dirty nodes read and of the graph output, if they come
    after ``end`` (what the cached runs have reached) and are not dirty themselves."""
    extra: set[int] = set()
    todo = [t for i in dirty for t in prog.nodes[i].inputs if t] + [output]
    while todo:
        p = prog.producer.get(todo.pop())
        if p is None or p <= end or p in dirty or p in extra:
            continue
        extra.add(p)
        todo += [t for t in prog.nodes[p].inputs if t]
    return extra


def analyze_layers(
    wl: Workload,
    sim: Simulator,
    config: Config,
    *,
    progress: Progress | None = None,
    incremental: bool = True,
    memory_budget: int | None = None,
) -> SensitivityResult:
    """Only-this-layer and all-but-this-layer runs for every layer, with prefix reuse.

    Memory: the FP32 and fully quantized runs hold only what later steps read (``Schedule``),
    and each evaluation batch runs in chunks of as many samples as fit ``memory_budget``
    (default: the run's, ``memory.current_budget()``) at what one sample costs: both runs'
    held tensors at the worst step plus one run's live tensors (fake-quantized copies
    included), measured on one sample; the model outputs kept to the end are counted against the
    budget first (``kept_outputs``), so the budget bounds everything the run holds. When
    the whole batch fits, the chunk is the batch and the numbers are exactly those of an
    unchunked run; smaller chunks can change float rounding in the last bits (kernels depend
    on the batch size: tests/test_memory.py)."""
    t0 = time.perf_counter()
    qg, prog = sim.qg, sim.prog
    full, fp, only, all_but = _plans(sim, config)
    n_nodes = len(prog.nodes)
    all_nodes = set(range(n_nodes))
    dirty_only = {k: prog.descendants(sim.changed_nodes(fp, p)) for k, p in only.items()}
    dirty_all = {k: prog.descendants(sim.changed_nodes(full, p)) for k, p in all_but.items()}
    if not incremental:
        dirty_only = {k: all_nodes for k in dirty_only}
        dirty_all = {k: all_nodes for k in dirty_all}
    out_name = prog.outputs[0]
    layers = qg.layers
    # Both whole-graph runs (FP32 and fully quantized) advance layer by layer (to layer k's
    # output and inputs at step k) and hold a tensor only while a later step reads it. A partial
    # run that reads a tensor the runs have not reached yet (a shape computed from the input, a
    # branch later in node order) also runs the unchanged nodes that produce it: the same values.
    produced = set(prog.producer)
    ends, end = [], -1
    for l in layers:
        own = {l.output} | {t for _, t in l.act_inputs if t in produced}
        end = max([end] + [prog.producer[t] for t in own])
        ends.append(end)
    need_fp, need_q = [], []
    for k, l in enumerate(layers):
        own = {l.output} | {t for _, t in l.act_inputs if t in produced}
        for dirty, need in ((dirty_only, need_fp), (dirty_all, need_q)):
            nodes = dirty[l.name] | upstream(prog, dirty[l.name], ends[k], out_name)
            dirty[l.name] = nodes
            need.append(boundary_inputs(prog, nodes) | own | ({out_name} if prog.producer.get(out_name) not in nodes else set()))
    ends.append(max(end, prog.producer.get(out_name, -1)))  # the last step: the model outputs
    need_fp.append({out_name})
    need_q.append({out_name})
    sched_fp, sched_q = Schedule(prog, need_fp, ends), Schedule(prog, need_q, ends)
    budget = memory.current_budget() if memory_budget is None else memory_budget
    footprints = memory.Footprints(prog, qg.input_names)
    per_sample = 0
    acc_w = {l.name: _Acc() for l in layers}
    acc_a = {l.name: _Acc() for l in layers}
    acc_o = {l.name: _Acc() for l in layers}
    acc_d = {l.name: _Acc() for l in layers}
    acc_e2e = {l.name: _Acc() for l in layers}  # model output, only L quantized vs FP32
    clip = {l.name: [0, 0] for l in layers}
    outs_fp, outs_q = [], []
    # The model outputs of every only-L and all-but-L run, kept until the end because evaluate()
    # is called once on all outputs: 2 × layers × samples × output size floats (a 1000-class head,
    # 200 layers, 1000 samples: 1.6 GB; a 10-class head: 16 MB). They grow with the data; the
    # activations above do not.
    outs_only, outs_allbut = _Kept([l.name for l in layers]), _Kept([l.name for l in layers])
    nodes_run = 0
    # Weight proxies need no data: each weight as the only-this-layer run quantizes it.
    for l in layers:
        for _, w in l.weights:
            key = only[l.name].weights.get(w)
            if key is not None:
                acc_w[l.name].add(prog.initializers[w].float(), sim._weight(key))
    n_batches = len(wl.evaluation)
    chunks_run = 0

    def kept_outputs(fpr: memory.Footprint) -> int:
        """Bytes of the model outputs kept to the end (FP32, fully quantized, each layer's two
        runs; float16 for sequence outputs) on the whole evaluation set: the chunks' tensors get
        what the budget leaves. They grow with the data (efficientnet_b0, 221 layers, 1000
        classes: 1.8 MB per sample); what the chunks hold does not."""
        out = fpr.sizes.get(out_name, 0)
        half = fpr.dims.get(out_name, 0) >= 3  # _keep: float16 copies (upper bound: some stay float32)
        return wl.n_eval * (2 * out + 2 * len(layers) * (out // 2 if half else out))
    chunk_budget, kept_bytes = budget, 0
    memory.release(0)  # what earlier steps freed (the baseline's engines, calibration)
    with torch.inference_mode():
        for bi, (xb, _) in enumerate(wl.evaluation):
            fpr = footprints(xb)
            # held at once: both runs' held tensors at the worst step, plus one run's live tensors
            # and each layer's float32 only-this-layer output, held to the chunk's end (the FP32
            # output it is compared with comes last): a detector's 139 × 1.2 MB a sample
            per_sample = max(per_sample, max(f + q for f, q in zip(sched_fp.bytes(fpr.sizes), sched_q.bytes(fpr.sizes))) + fpr.live
                             + len(layers) * fpr.sizes.get(out_name, 0))  # fmt: skip
            kept_bytes = kept_outputs(fpr)
            if kept_bytes > budget * SPILL_FRACTION:  # the per-layer outputs go to disk; FP32's and INT8's stay
                outs_only.spill()
                outs_allbut.spill()
                kept_bytes = 2 * wl.n_eval * fpr.sizes.get(out_name, 0)
            chunk_budget = max(0, budget - kept_bytes)
            size = memory.chunk_size(per_sample, int(xb[0].shape[0]), chunk_budget)
            for x in memory.split(xb, size):
                chunks_run += 1
                nodes_run += _sensitivity_chunk(
                    sim, x, fp, full, only, all_but, dirty_only, dirty_all, sched_fp, sched_q,
                    acc_a, acc_o, acc_d, acc_e2e, clip, outs_fp, outs_q, outs_only, outs_allbut,
                )  # fmt: skip
                if bi == 0 and chunks_run == 1 and progress and outs_fp[0].dim() >= 3:
                    per = outs_fp[0].numel() * 2 * wl.n_eval / max(1, outs_fp[0].shape[0])
                    where = "on disk, over half the memory budget" if outs_only.on_disk else "in memory"
                    progress(f"keeping {2 * len(layers)} per-layer outputs of shape {['N', *outs_fp[0].shape[1:]]} in float16: "
                             f"{2 * len(layers) * per / 2**20:.0f} MiB {where}")  # fmt: skip
                memory.release()  # the chunk's freed tensors, before the next one allocates its own
            if progress:
                progress(f"per-layer sensitivity: batch {bi + 1}/{n_batches} ({len(layers)} layers, chunks of {size})")
    fp_out, q_out = torch.cat(outs_fp), torch.cat(outs_q)
    fp_metric, q_metric = wl.score(fp_out), wl.score(q_out)
    q_drop = wl.drop(fp_metric, q_metric)
    rows = []
    only_cat: dict[str, torch.Tensor] = {}
    for l in layers:
        o = outs_only[l.name]
        if not outs_only.on_disk:
            only_cat[l.name] = o
        stored = o.dtype != torch.float32  # float16 copies: SQNR from the exact accumulation
        o = o.float()
        m_only, m_all = wl.score(o), wl.score(outs_allbut[l.name].float())
        c = clip[l.name]
        rows.append(
            LayerRow(
                layer=l.name,
                op_type=l.op_type,
                params=l.params,
                weight_sqnr_db=acc_w[l.name].sqnr(),
                act_sqnr_db=acc_a[l.name].sqnr(),
                output_sqnr_db=acc_o[l.name].sqnr(),
                e2e_sqnr_db=acc_e2e[l.name].sqnr() if stored else M.sqnr_db(fp_out, o),
                e2e_kl=M.kl_divergence(fp_out, o) if wl.task in ("classification", "language_model") else float("nan"),
                e2e_cosine=M.cosine(fp_out, o),
                metric_only=m_only,
                metric_drop=wl.drop(fp_metric, m_only),
                metric_all_but=m_all,
                metric_drop_all_but=q_drop - wl.drop(fp_metric, m_all),
                act_clipping=c[0] / c[1] if c[1] else float("nan"),
                weight_mse=acc_w[l.name].mse(),
                act_mse=acc_a[l.name].mse(),
                depth_sqnr_db=acc_d[l.name].sqnr(),
            )
        )
    res = SensitivityResult(
        rows=rows,
        higher_is_better=wl.higher_is_better,
        fp32_metric=fp_metric,
        int8_metric=q_metric,
        fp32_outputs=fp_out,
        int8_outputs=q_out,
        only_outputs=only_cat if not outs_only.on_disk else outs_only,
        nodes_run=nodes_run,
        nodes_naive=chunks_run * n_nodes * (2 + 2 * len(layers)),
        seconds=time.perf_counter() - t0,
        memory_budget=budget,
        bytes_per_sample=per_sample,
        chunk_samples=memory.chunk_size(per_sample, 2**62, chunk_budget),
        kept_output_bytes=kept_bytes,
    )
    res.proxy_correlation = proxy_correlation(rows)
    return res


class Schedule:
    """A whole-graph run cut into steps: step k runs the nodes up to ``ends[k]`` (monotone) and
    holds ``held[k]``: the tensors produced so far that step k or a later one needs
    (``need[k]``, all produced by then), that a node after the step reads, or that are graph
    outputs. Every node runs once, so the values are those of one whole run."""

    def __init__(self, prog: Program, need: list[set[str]], ends: list[int]):
        self.prog = prog
        last_read = {t: max(c) for t, c in prog.consumers.items() if c}
        outs = set(prog.outputs)
        self.end = list(ends)
        for k, nk in enumerate(need):
            late = [t for t in nk if prog.producer.get(t, -1) > ends[k]]
            if late:  # pragma: no cover - upstream() runs those producers in the partial run
                raise AssertionError(f"step {k} needs {late[:3]} before they are produced")
        last_need: dict[str, int] = {}
        for k, nk in enumerate(need):
            for t in nk:
                last_need[t] = k
        # t is held from the first step whose run produces it to the last step that still needs it
        start: dict[int, list[str]] = {}
        stop: dict[int, list[str]] = {}
        for t, p in prog.producer.items():
            first = bisect.bisect_left(self.end, p)  # the first step whose run produces t
            if first == len(need):
                continue
            if t in outs:
                last = len(need) - 1
            else:  # the last step that needs t, or whose end a node reading t comes after
                last = max(last_need.get(t, -1), bisect.bisect_left(self.end, last_read.get(t, -1)) - 1)
            if last >= first:
                start.setdefault(first, []).append(t)
                stop.setdefault(last, []).append(t)
        self.held: list[frozenset[str]] = []
        cur: set[str] = set()
        for k in range(len(need)):
            cur |= set(start.get(k, ()))
            self.held.append(frozenset(cur))
            cur -= set(stop.get(k, ()))

    def bytes(self, sizes: dict[str, int]) -> list[int]:
        """Bytes per sample held at each step."""
        return [sum(sizes.get(t, 0) for t in h) for h in self.held]


class _Stream:
    """A Schedule run on one chunk under one plan. ``env`` is what the original whole run's
    kept environment held for the step's needs: raw tensors, graph outputs quantized as the plan
    quantizes them (``Simulator.run`` does that after a run, not between nodes)."""

    def __init__(self, sim: Simulator, plan: SimPlan, sched: Schedule, feeds: dict[str, torch.Tensor]):
        self.sim, self.plan, self.sched, self.feeds = sim, plan, sched, feeds
        self.seg_plan = SimPlan(plan.config, plan.edges, plan.weights, {})
        self.held: dict[str, torch.Tensor] = {}
        self.final: dict[str, torch.Tensor] = {}  # graph outputs, quantized as the plan does
        self.done = -1  # last node run
        self.nodes_run = 0

    def step(self, k: int) -> dict[str, torch.Tensor]:
        end, keep = self.sched.end[k], set(self.sched.held[k])
        if end > self.done:
            nodes = range(self.done + 1, end + 1)
            self.held = self.sim.run(self.feeds, self.seg_plan, env=self.held, nodes=nodes, keep=keep)
            self.nodes_run += len(nodes)
            self.done = end
            for t, key in self.plan.outputs.items():
                if t in self.held and t not in self.final:
                    self.final[t] = self.sim._apply(key, self.held[t], t)
        self.held = {t: v for t, v in self.held.items() if t in keep or t in self.sim.prog.outputs}
        return {**self.held, **self.final}


def _sensitivity_chunk(
    sim, x, fp, full, only, all_but, dirty_only, dirty_all, sched_fp, sched_q,
    acc_a, acc_o, acc_d, acc_e2e, clip, outs_fp, outs_q, outs_only, outs_allbut,
) -> int:  # fmt: skip
    """One chunk of one evaluation batch: the FP32 and fully quantized runs, advanced layer by
    layer (``Schedule``), and every layer's two partial runs from them. Returns the number of
    node executions."""
    qg, prog = sim.qg, sim.prog
    out_name = prog.outputs[0]
    feeds = dict(zip(qg.input_names, x))
    s_fp, s_q = _Stream(sim, fp, sched_fp, feeds), _Stream(sim, full, sched_q, feeds)
    nodes_run = 0
    only_out: dict[str, torch.Tensor] = {}
    for k, l in enumerate(qg.layers):
        name = l.name
        fp_env, q_env = s_fp.step(k), s_q.step(k)
        # tensor proxies on this batch: each input as the only-this-layer run quantizes it
        for pos, t in l.act_inputs:
            key = only[name].edges.get((l.node, pos))
            v = fp_env.get(t, feeds.get(t))
            if key is None or v is None or not v.is_floating_point():
                continue
            acc_a[name].add(v, sim._apply(key, v, t))
            clip[name][1] += v.numel()
            if key[0] == "q":  # dynamic ranges are each sample's own min/max: nothing clips
                qp = sim.act_qparams(t)
                lo = float((qp.qrange.qmin - qp.zero_point) * qp.scale)
                hi = float((qp.qrange.qmax - qp.zero_point) * qp.scale)
                clip[name][0] += int(((v < lo - 1e-12) | (v > hi + 1e-12)).sum())
        if l.output in q_env and l.output in fp_env:
            acc_d[name].add(fp_env[l.output], q_env[l.output])
        env = sim.run(feeds, only[name], env=fp_env, nodes=dirty_only[name], keep={l.output})
        nodes_run += len(dirty_only[name])
        only_out[name] = env[out_name].float()  # float32 until the chunk's FP32 output is known
        if l.output in env:
            acc_o[name].add(fp_env[l.output], env[l.output])
        env = sim.run(feeds, all_but[name], env=q_env, nodes=dirty_all[name], keep=set())
        nodes_run += len(dirty_all[name])
        outs_allbut.append(name, _keep(env[out_name].float()))
        del fp_env, q_env, env
        memory.release()
    last = len(qg.layers)
    outs_fp.append(s_fp.step(last)[out_name].float())
    outs_q.append(s_q.step(last)[out_name].float())
    for name, o in only_out.items():  # end-to-end SQNR exactly, in float32; kept for the metric (maybe float16)
        acc_e2e[name].add(outs_fp[-1], o)
        outs_only.append(name, _keep(o))
    return nodes_run + s_fp.nodes_run + s_q.nodes_run

PROXIES = {
    "weight_sqnr_db": -1.0,
    "act_sqnr_db": -1.0,
    "output_sqnr_db": -1.0,
    "e2e_sqnr_db": -1.0,
    "e2e_kl": 1.0,
}


def proxy_correlation(rows: list[LayerRow]) -> dict[str, dict[str, float]]:
    """Spearman rank correlation of each cheap proxy with the truth, signed so that +1 means
    the proxy ranks layers exactly as the truth does. Two truths: the task metric drop
    (coarse: often tied at 0 on robust models) and the end-to-end output SQNR."""
    drop = [r.metric_drop for r in rows]
    e2e = [-r.e2e_sqnr_db for r in rows]
    out: dict[str, dict[str, float]] = {"vs_metric_drop": {}, "vs_e2e_sqnr": {}}
    for name, sign in PROXIES.items():
        vals = [sign * getattr(r, name) for r in rows]
        out["vs_metric_drop"][name] = M.spearman(vals, drop)
        if name not in ("e2e_sqnr_db", "e2e_kl"):
            out["vs_e2e_sqnr"][name] = M.spearman(vals, e2e)
    return out
