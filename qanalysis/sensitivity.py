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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch

from . import metrics as M
from .graph import Layer
from .scheme import Config
from .simulate import SimPlan, Simulator
from .workload import Workload, worse_by

Progress = Callable[[str], None]


@dataclass
class _Acc:
    """Σ signal², Σ noise² accumulated over batches, for an exact SQNR of the whole set."""

    sig: float = 0.0
    noise: float = 0.0
    clipped: float = 0.0
    n: int = 0

    def add(self, ref: torch.Tensor, x: torch.Tensor) -> None:
        ref, x = ref.detach().double(), x.detach().double()
        self.sig += float((ref**2).sum())
        self.noise += float(((ref - x) ** 2).sum())
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
    only_outputs: dict[str, torch.Tensor]
    nodes_run: int
    nodes_naive: int
    seconds: float
    proxy_correlation: dict[str, dict[str, float]] = field(default_factory=dict)

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


def analyze_layers(
    wl: Workload,
    sim: Simulator,
    config: Config,
    *,
    progress: Progress | None = None,
    incremental: bool = True,
) -> SensitivityResult:
    """Only-this-layer and all-but-this-layer runs for every layer, with prefix reuse."""
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
    acc_w = {l.name: _Acc() for l in layers}
    acc_a = {l.name: _Acc() for l in layers}
    acc_o = {l.name: _Acc() for l in layers}
    acc_d = {l.name: _Acc() for l in layers}
    acc_e2e = {l.name: _Acc() for l in layers}  # model output, only L quantized vs FP32
    clip = {l.name: [0, 0] for l in layers}
    outs_fp, outs_q = [], []
    outs_only: dict[str, list[torch.Tensor]] = {l.name: [] for l in layers}
    outs_allbut: dict[str, list[torch.Tensor]] = {l.name: [] for l in layers}
    nodes_run = 0
    # Weight proxies need no data: each weight as the only-this-layer run quantizes it.
    for l in layers:
        for _, w in l.weights:
            key = only[l.name].weights.get(w)
            if key is not None:
                acc_w[l.name].add(prog.initializers[w].float(), sim._weight(key))
    n_batches = len(wl.evaluation)
    with torch.inference_mode():
        for bi, (x, _) in enumerate(wl.evaluation):
            feeds = dict(zip(qg.input_names, x))
            fp_env = sim.run(feeds, fp, keep=True)
            q_env = sim.run(feeds, full, keep=True)
            nodes_run += 2 * n_nodes
            outs_fp.append(fp_env[out_name].float())
            outs_q.append(q_env[out_name].float())
            if bi == 0 and progress and outs_fp[0].dim() >= 3:
                per = outs_fp[0].numel() * 2 * wl.n_eval / max(1, outs_fp[0].shape[0])
                progress(f"keeping {2 * len(layers)} per-layer outputs of shape {['N', *outs_fp[0].shape[1:]]} in float16: "
                         f"{2 * len(layers) * per / 2**20:.0f} MiB")  # fmt: skip
            for l in layers:
                name = l.name
                # tensor proxies on this batch: each input as the only-this-layer run quantizes it
                for pos, t in l.act_inputs:
                    key = only[name].edges.get((l.node, pos))
                    if key is None or t not in fp_env or not fp_env[t].is_floating_point():
                        continue
                    v = fp_env[t]
                    acc_a[name].add(v, sim._apply(key, v, t))
                    clip[name][1] += v.numel()
                    if key[0] == "q":  # dynamic ranges are each sample's own min/max: nothing clips
                        qp = sim.act_qparams(t)
                        lo = float((qp.qrange.qmin - qp.zero_point) * qp.scale)
                        hi = float((qp.qrange.qmax - qp.zero_point) * qp.scale)
                        clip[name][0] += int(((v < lo - 1e-12) | (v > hi + 1e-12)).sum())
                if l.output in q_env and l.output in fp_env:
                    acc_d[name].add(fp_env[l.output], q_env[l.output])
                env = sim.run(feeds, only[name], env=fp_env, nodes=dirty_only[name], keep=True)
                nodes_run += len(dirty_only[name])
                o = env[out_name].float()
                acc_e2e[name].add(outs_fp[-1], o)
                outs_only[name].append(_keep(o))
                if l.output in env:
                    acc_o[name].add(fp_env[l.output], env[l.output])
                env = sim.run(feeds, all_but[name], env=q_env, nodes=dirty_all[name], keep=True)
                nodes_run += len(dirty_all[name])
                outs_allbut[name].append(_keep(env[out_name].float()))
            if progress:
                progress(f"per-layer sensitivity: batch {bi + 1}/{n_batches} ({len(layers)} layers)")
    fp_out, q_out = torch.cat(outs_fp), torch.cat(outs_q)
    fp_metric, q_metric = wl.score(fp_out), wl.score(q_out)
    q_drop = wl.drop(fp_metric, q_metric)
    rows = []
    only_cat = {}
    for l in layers:
        o = torch.cat(outs_only[l.name])
        only_cat[l.name] = o
        stored = o.dtype != torch.float32  # float16 copies: SQNR from the exact accumulation
        o = o.float()
        m_only, m_all = wl.score(o), wl.score(torch.cat(outs_allbut[l.name]).float())
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
        only_outputs=only_cat,
        nodes_run=nodes_run,
        nodes_naive=n_batches * n_nodes * (2 + 2 * len(layers)),
        seconds=time.perf_counter() - t0,
    )
    res.proxy_correlation = proxy_correlation(rows)
    return res


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
