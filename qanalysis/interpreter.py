"""Execute an ONNX graph with PyTorch ops, one node at a time (the ops live in ``ops.py``).

Why: the simulation must see the graph ONNX Runtime quantizes (after export, BatchNorm
folding and ``quant_pre_process``), tensor by tensor, so that fake quantization can be put
on exactly the edges where ORT puts Q/DQ pairs. Running the same graph in torch also gives
autograd (for AdaRound and QAT) and cheap partial re-execution: when only some edges
change, only the nodes downstream of them run again.

``Program.run`` takes an environment (tensor name → tensor), a subset of nodes to run,
and a per-edge transform ``edge(node_index, input_position, value) → value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .errors import ExportError
from .ops import OPS, get_op

__all__ = ["OPS", "EdgeFn", "Node", "Program", "to_torch"]  # OPS: the op registry, re-exported

EdgeFn = Callable[[int, int, torch.Tensor], torch.Tensor]


def to_torch(t: onnx.TensorProto) -> torch.Tensor:
    arr = numpy_helper.to_array(t)
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.array(arr, copy=True))


@dataclass
class Node:
    index: int
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


def _attr(a: onnx.AttributeProto) -> Any:
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        return to_torch(v)
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [x.decode() for x in v]
    return v


class Program:
    """A float ONNX graph as a list of nodes plus torch initializers."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.initializers: dict[str, torch.Tensor] = {t.name: to_torch(t) for t in g.initializer}
        init_names = set(self.initializers)
        self.inputs = [i.name for i in g.input if i.name not in init_names]
        self.outputs = [o.name for o in g.output]
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.nodes: list[Node] = []
        for n in g.node:
            if n.op_type == "Constant":
                (a,) = n.attribute
                v = _attr(a)
                if not isinstance(v, torch.Tensor):
                    v = torch.tensor(v)
                self.initializers[n.output[0]] = v
                continue
            if n.domain not in ("", "ai.onnx"):
                raise ExportError(f"ONNX node {n.name!r} uses op {n.domain}::{n.op_type}, which the simulator does not run")
            get_op(n.op_type, n.name)  # fails at load, naming the op and the node
            self.nodes.append(
                Node(
                    index=len(self.nodes),
                    name=n.name,
                    op=n.op_type,
                    inputs=list(n.input),
                    outputs=list(n.output),
                    attrs={a.name: _attr(a) for a in n.attribute},
                    meta={p.key: p.value for p in n.metadata_props},
                )
            )
        self.producer: dict[str, int] = {o: n.index for n in self.nodes for o in n.outputs}
        self.consumers: dict[str, list[int]] = {}
        for n in self.nodes:
            for t in n.inputs:
                if t:
                    self.consumers.setdefault(t, []).append(n.index)
        self._last_use: dict[str, int] = {}
        for n in self.nodes:
            for t in n.inputs:
                if t:
                    self._last_use[t] = n.index

    # ------------------------------------------------------------------ structure
    def descendants(self, start: Iterable[int]) -> set[int]:
        """Node indices reachable from ``start`` (included) along data edges."""
        todo, seen = list(start), set(start)
        while todo:
            i = todo.pop()
            for o in self.nodes[i].outputs:
                for c in self.consumers.get(o, ()):
                    if c not in seen:
                        seen.add(c)
                        todo.append(c)
        return seen

    # ------------------------------------------------------------------ execution
    def run(
        self,
        feeds: Mapping[str, torch.Tensor],
        *,
        env: Mapping[str, torch.Tensor] | None = None,
        nodes: Iterable[int] | None = None,
        edge: EdgeFn | None = None,
        edge_nodes: set[int] | None = None,
        weights: Mapping[str, torch.Tensor] | None = None,
        keep: bool | set[str] = False,
        ops: Mapping[int, Callable[[list, dict], Any]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run ``nodes`` (default all, always in graph order) and return the environment.

        ``env`` supplies already-computed tensors (a cached FP32 pass, say); ``weights``
        replaces initializers (fake-quantized weights); ``edge`` transforms the value a
        node reads on an input edge, for the nodes in ``edge_nodes`` (default all).
        With ``keep=False`` intermediate tensors are dropped after their last use, so only
        graph outputs are returned; ``keep=True`` keeps everything; a set keeps those.
        ``ops`` replaces the function of some nodes (by index), called as ``fn(args, attrs)``.
        """
        scope: dict[str, torch.Tensor] = dict(self.initializers)
        if weights:
            scope.update(weights)
        if env:
            scope.update(env)
        scope.update(feeds)
        order = range(len(self.nodes)) if nodes is None else sorted(set(nodes))
        outs = set(self.outputs)
        keep_set = keep if isinstance(keep, set) else set()
        for i in order:
            n = self.nodes[i]
            args = []
            for pos, t in enumerate(n.inputs):
                if not t:
                    args.append(None)
                    continue
                try:
                    v = scope[t]
                except KeyError:
                    raise ExportError(f"tensor {t!r} needed by node {n.name!r} was not computed") from None
                if edge is not None and (edge_nodes is None or i in edge_nodes):
                    v = edge(i, pos, v)
                args.append(v)
            try:
                res = (ops[i] if ops and i in ops else OPS[n.op])(args, n.attrs)
            except ExportError:
                raise
            except Exception as e:  # noqa: BLE001 - name the node that failed
                raise ExportError(f"simulating ONNX node {n.name!r} ({n.op}) failed: {type(e).__name__}: {e}") from None
            if not isinstance(res, (list, tuple)):
                res = (res,)
            for name, v in zip(n.outputs, res):
                if name:
                    scope[name] = v
            # free what no later node reads; in a partial run too: a tensor whose last reader is in
            # ``order`` is read by no later node of it, and ``env``'s own tensors stay in ``env``
            if keep is not True:
                for t in n.inputs:
                    if t and self._last_use.get(t) == i and t not in outs and t not in keep_set and t not in self.initializers:
                        scope.pop(t, None)
        if keep is True:  # computed tensors only: never hand initializers back as an env
            return {k: v for k, v in scope.items() if k not in self.initializers and not (weights and k in weights)}
        result = {o: scope[o] for o in self.outputs if o in scope}
        for k in keep_set:
            if k in scope:
                result[k] = scope[k]
        return result
