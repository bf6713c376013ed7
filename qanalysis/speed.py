"""Why an engine is (not) faster: ONNX Runtime's profiler on the FP32 and the INT8 engine,
attributed per op type and per layer, and an explanation that names the ops and layers that
cost the time, with their measured milliseconds.

Kernel times are medians over profiled runs at batch 1 (``engine.profile_nodes``). A layer's
INT8 time includes its own quantized kernel; Quantize/DequantizeLinear kernels are reported
separately, grouped by the float op they sit next to (HardSwish, Sigmoid, Mul, ...: the
int8↔float boundaries that make mobile nets slow).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .engine import NodeTime, attribute_to_layers, profile_nodes

QDQ = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def layer_kind(qg, layer) -> str:
    """conv / depthwise conv / matmul / ... for the explanation."""
    node = qg.program.nodes[layer.node]
    if node.op == "Conv":
        w = qg.program.initializers.get(layer.weight) if layer.weight else None
        group = int(node.attrs.get("group", 1)) if hasattr(node, "attrs") else 1
        if w is not None and group > 1 and group == int(w.shape[0]):
            return "depthwise conv"
        return "conv"
    return node.op.lower()


def _qdq_neighbours(times: list[NodeTime]) -> dict[str, float]:
    """Q/DQ kernel time (µs) grouped by the non-Q/DQ op on the other side of the boundary."""
    producer = {o: t.op_type for t in times for o in t.outputs}
    consumers: dict[str, list[str]] = defaultdict(list)
    for t in times:
        for i in t.inputs:
            consumers[i].append(t.op_type)
    out: dict[str, float] = defaultdict(float)
    for t in times:
        if t.op_type not in QDQ:
            continue
        if t.op_type == "DequantizeLinear":
            ops = [c for o in t.outputs for c in consumers.get(o, []) if c not in QDQ]
        else:
            ops = [producer[i] for i in t.inputs[:1] if i in producer and producer[i] not in QDQ]
        out[ops[0] if ops else "(graph input/output)"] += t.us
    return dict(out)


@dataclass
class SpeedReport:
    fp32_ms: float
    int8_ms: float
    by_op: pd.DataFrame  # op_type, fp32_us, int8_us
    by_layer: pd.DataFrame  # layer, kind, fp32_us, int8_us, delta_us (int8 − fp32)
    qdq_us_by_neighbour: dict[str, float]

    @property
    def qdq_us(self) -> float:
        return float(sum(self.qdq_us_by_neighbour.values()))

    def explanation(self, top: int = 3) -> str:
        """One sentence with numbers: what makes the INT8 engine slower (or faster)."""
        faster = self.int8_ms < self.fp32_ms
        ratio = (self.fp32_ms / self.int8_ms if faster else self.int8_ms / self.fp32_ms) if self.int8_ms > 0 and self.fp32_ms > 0 else 0
        head = (f"the INT8 engine runs {self.int8_ms:.3f} ms vs FP32 {self.fp32_ms:.3f} ms "
                f"({ratio:.2f}× {'faster' if faster else 'slower'})")  # fmt: skip
        parts = []
        if self.qdq_us > 0:
            nb = sorted(self.qdq_us_by_neighbour.items(), key=lambda kv: -kv[1])[:top]
            parts.append(f"Quantize/DequantizeLinear kernels take {self.qdq_us / 1000:.3f} ms"
                         + " (next to " + ", ".join(f"{op} {us / 1000:.3f} ms" for op, us in nb) + ")")  # fmt: skip
        slow = self.by_layer[self.by_layer["delta_us"] > 0].sort_values("delta_us", ascending=False)
        if len(slow):
            kinds = slow.groupby("kind")["delta_us"].sum().sort_values(ascending=False)
            parts.append(f"{len(slow)} layer(s) run slower in INT8 than in FP32, +{slow['delta_us'].sum() / 1000:.3f} ms in all ("
                         + ", ".join(f"{k} +{v / 1000:.3f} ms" for k, v in kinds.head(top).items()) + "; worst: "
                         + ", ".join(f"{r.layer} +{r.delta_us / 1000:.3f} ms" for r in slow.head(top).itertuples()) + ")")  # fmt: skip
        fast = self.by_layer[self.by_layer["delta_us"] < 0]
        if len(fast):
            parts.append(f"{len(fast)} layer(s) gain {-fast['delta_us'].sum() / 1000:.3f} ms in INT8")
        ops = self.by_op.assign(d=self.by_op["int8_us"] - self.by_op["fp32_us"]).sort_values("d", ascending=False)
        new_ops = ops[(ops["fp32_us"] == 0) & (ops["int8_us"] > 0) & ~ops["op_type"].isin(QDQ)]
        if len(new_ops):
            parts.append("kernels only the INT8 engine runs: " + ", ".join(
                f"{r.op_type} {r.int8_us / 1000:.3f} ms" for r in new_ops.head(top).itertuples()))  # fmt: skip
        return head + (": " + "; ".join(parts) if parts else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32_ms": self.fp32_ms, "int8_ms": self.int8_ms,
            # the INT8 engine's kernel µs per op type and per layer ({name: µs}), and both engines side by side
            "kernel_us_by_op_type": {r.op_type: r.int8_us for r in self.by_op.itertuples() if r.int8_us > 0},
            "per_layer_us": {r.layer: r.int8_us for r in self.by_layer.itertuples()},
            "kernel_us_by_op_type_fp32_vs_int8": self.by_op.to_dict(orient="records"),
            "per_layer_us_fp32_vs_int8": self.by_layer.to_dict(orient="records"),
            "qdq_us_by_neighbour_op": self.qdq_us_by_neighbour,
            "explanation": self.explanation(),
        }  # fmt: skip


def speed_report(fp32_path: Path, int8_path: Path, x1, qg, *, fp32_ms: float, int8_ms: float, runs: int = 10) -> SpeedReport:
    """Profile both engines on one sample and attribute their kernel time."""
    t32, t8 = profile_nodes(fp32_path, x1, runs=runs), profile_nodes(int8_path, x1, runs=runs)
    ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for t in t32:
        ops[t.op_type][0] += t.us
    for t in t8:
        ops[t.op_type][1] += t.us
    by_op = pd.DataFrame([{"op_type": k, "fp32_us": v[0], "int8_us": v[1]} for k, v in ops.items()])
    by_op = by_op.sort_values("int8_us", ascending=False).reset_index(drop=True)
    l32, l8 = attribute_to_layers(t32, qg), attribute_to_layers(t8, qg)
    rows = []
    for layer in qg.layers:
        a, b = l32.get(layer.name, 0.0), l8.get(layer.name, 0.0)
        rows.append({"layer": layer.name, "kind": layer_kind(qg, layer), "fp32_us": a, "int8_us": b, "delta_us": b - a})
    by_layer = pd.DataFrame(rows, columns=["layer", "kind", "fp32_us", "int8_us", "delta_us"])
    return SpeedReport(fp32_ms=fp32_ms, int8_ms=int8_ms, by_op=by_op, by_layer=by_layer,
                       qdq_us_by_neighbour=_qdq_neighbours(t8))  # fmt: skip
