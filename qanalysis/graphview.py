"""The model as a graph of its quantizable layers, grouped by module, laid out by networkx.

``graph_view(analysis)`` reads the ONNX graph the analysis simulated: one node per
quantizable layer (its module path, op type and per-layer measures), and an edge
``a → b`` when data flows from layer ``a`` to layer ``b`` through ops that are not
quantized themselves (ReLU, pooling, reshapes: they are folded into the edge).

``collapse(view, depth, expand)`` groups the layers by the first ``depth`` components of
their module path (``layer1.0.conv2`` at depth 1 → ``layer1``), so a 200-layer network is
drawn as a few dozen module boxes; modules in ``expand`` are shown layer by layer. A
group's measure is its worst layer's (highest drop, lowest SQNR).

``layout(nodes, edges)`` places the units left to right by topological generation
(networkx ``topological_generations`` + ``multipartite_layout``), on the condensation
when grouping made a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import networkx as nx
import pandas as pd

INPUT, OUTPUT = "(input)", "(output)"

# measure → (label, which direction is worse)
MEASURES: dict[str, tuple[str, Literal["high", "low"]]] = {
    "metric_drop": ("drop, only this layer quantized (points)", "high"),
    "metric_drop_all_but": ("recovered by keeping it in float (points)", "high"),
    "output_sqnr_db": ("layer-output SQNR (dB)", "low"),
    "e2e_sqnr_db": ("model-output SQNR (dB)", "low"),
    "depth_sqnr_db": ("SQNR in the fully quantized model (error growth, dB)", "low"),
}


@dataclass(frozen=True)
class GraphView:
    """``nodes``: one row per layer (``layer``, ``op_type``, ``module``, ``order``, ``params`` and
    the MEASURES columns); ``edges``: ``src``, ``dst`` layer names, with INPUT and OUTPUT ends."""

    nodes: pd.DataFrame
    edges: pd.DataFrame


def module_path(layer: str, module: str) -> str:
    """The module a layer belongs to: its leaf module, else the part before ``:op``."""
    return module or layer.partition(":")[0]


def graph_view(a) -> GraphView:
    """Layers and the data flow between them, from the analysis' ONNX graph (``a.qgraph``)."""
    qg = a.qgraph
    prog = qg.program
    layer_of = {l.node: l.name for l in qg.layers}
    graph_inputs = set(prog.inputs)
    # nearest quantizable layers upstream of each node's outputs (nodes are in topological order)
    upstream: dict[int, frozenset[str]] = {}
    edges: set[tuple[str, str]] = set()

    def sources(tensor: str) -> frozenset[str]:
        if tensor in graph_inputs:
            return frozenset({INPUT})
        p = prog.producer.get(tensor)
        if p is None:  # an initializer or a constant
            return frozenset()
        return frozenset({layer_of[p]}) if p in layer_of else upstream.get(p, frozenset())

    for node in prog.nodes:
        ups = frozenset().union(*(sources(t) for t in node.inputs if t)) if node.inputs else frozenset()
        if node.index in layer_of:
            edges.update((u, layer_of[node.index]) for u in ups)
        upstream[node.index] = ups
    for out in prog.outputs:
        edges.update((u, OUTPUT) for u in sources(out))
    frame = a.layers_frame().set_index("layer")
    rows = []
    for l in qg.layers:
        r = {"layer": l.name, "op_type": l.op_type, "module": module_path(l.name, l.module), "order": l.order,
             "params": l.params}  # fmt: skip
        for m in MEASURES:
            r[m] = float(frame.at[l.name, m]) if l.name in frame.index and m in frame.columns else float("nan")
        rows.append(r)
    nodes = pd.DataFrame(rows)
    e = pd.DataFrame(sorted(edges), columns=["src", "dst"])
    return GraphView(nodes=nodes, edges=e)


def group_of(module: str, depth: int, expand: frozenset[str] | set[str] = frozenset()) -> str:
    """The module group a layer of ``module`` is drawn in: its first ``depth`` path components,
    or "" (the layer is drawn by itself) at depth 0 or inside an expanded group."""
    parts = [p for p in module.split(".") if p]
    prefix = ".".join(parts[:depth]) if depth > 0 else ""
    return "" if not prefix or prefix in expand else prefix


def collapse(view: GraphView, depth: int, expand: frozenset[str] | set[str] = frozenset(),
             float_layers: frozenset[str] | set[str] = frozenset()) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Units and the edges between them. Each unit row: ``unit`` (id), ``label``, ``kind``
    ("layer" | "module" | "io"), ``layers`` (its layer names, ';'-joined), ``n_layers``,
    ``op_type``, ``n_float`` (layers kept in float), ``order`` (first layer's), the measures.
    A group of one layer is drawn as that layer."""
    n = view.nodes
    unit_of = {layer: group_of(module, depth, expand) or layer for layer, module in zip(n["layer"], n["module"])}
    sizes: dict[str, int] = {}
    for u in unit_of.values():
        sizes[u] = sizes.get(u, 0) + 1
    unit_of = {layer: (u if sizes[u] > 1 else layer) for layer, u in unit_of.items()}
    unit_of[INPUT], unit_of[OUTPUT] = INPUT, OUTPUT
    rows = []
    d = n.assign(unit=n["layer"].map(unit_of), is_float=n["layer"].isin(float_layers))
    for unit, g in d.groupby("unit", sort=False):
        single = len(g) == 1
        row = {
            "unit": unit,
            "label": unit,
            "kind": "layer" if single else "module",
            "layers": ";".join(g["layer"]),
            "n_layers": len(g),
            "op_type": g["op_type"].iloc[0] if single else f"{len(g)} layers",
            "n_float": int(g["is_float"].sum()),
            "order": int(g["order"].min()),
            "params": int(g["params"].sum()),
        }
        for m, (_, worse) in MEASURES.items():
            v = g[m].dropna()
            row[m] = float("nan") if v.empty else float(v.max() if worse == "high" else v.min())
        rows.append(row)
    nan = {m: float("nan") for m in MEASURES}
    io = [{"unit": INPUT, "label": "input", "kind": "io", "layers": "", "n_layers": 0, "op_type": "", "n_float": 0,
           "order": -1, "params": 0, **nan},
          {"unit": OUTPUT, "label": "output", "kind": "io", "layers": "", "n_layers": 0, "op_type": "", "n_float": 0,
           "order": 10**9, "params": 0, **nan}]  # fmt: skip
    units = pd.DataFrame(io[:1] + rows + io[1:])
    e = view.edges.assign(src=view.edges["src"].map(unit_of), dst=view.edges["dst"].map(unit_of))
    e = e[e["src"] != e["dst"]].drop_duplicates().reset_index(drop=True)
    return units, e


def auto_depth(view: GraphView, max_units: int = 60) -> int:
    """The deepest module grouping that draws at most ``max_units`` units (0: every layer)."""
    n = len(view.nodes)
    if n <= max_units:
        return 0
    deepest = int(view.nodes["module"].map(lambda m: len([p for p in m.split(".") if p])).max() or 1)
    for depth in range(deepest, 0, -1):
        units, _ = collapse(view, depth)
        if len(units) - 2 <= max_units:
            return depth
    return 1


def layout(units: pd.DataFrame, edges: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """(x, y) per unit: x = topological generation (data flows left to right), y spread within it."""
    g = nx.DiGraph()
    g.add_nodes_from(units["unit"])
    g.add_edges_from(zip(edges["src"], edges["dst"]))
    if nx.is_directed_acyclic_graph(g):
        dag, member = g, {u: u for u in g}
    else:  # grouping made a cycle (a module used twice): lay out its strongly connected parts
        dag = nx.condensation(g)
        member = {u: c for c, data in dag.nodes(data=True) for u in data["members"]}
    order = dict(zip(units["unit"], units["order"]))
    for gen, nodes in enumerate(nx.topological_generations(dag)):
        for node in nodes:
            dag.nodes[node]["gen"] = gen
    # within a generation keep execution order, so the main path stays on one line
    sorted_dag = nx.DiGraph()
    sorted_dag.add_nodes_from(sorted(dag.nodes(data=True), key=lambda nd: (nd[1]["gen"], _first(nd[0], dag, order))))
    pos = nx.multipartite_layout(sorted_dag, subset_key="gen", align="vertical", scale=1.0)
    out = {}
    for u in units["unit"]:
        x, y = pos[member[u]]
        out[u] = (float(x), float(y))
    # members of one condensed component share a position: fan them out vertically
    seen: dict[tuple[float, float], int] = {}
    for u in units["unit"]:
        k = seen.get(out[u], 0)
        seen[out[u]] = k + 1
        if k:
            out[u] = (out[u][0], out[u][1] - 0.08 * k)
    return out


def _first(node, dag: nx.DiGraph, order: dict[str, int]) -> int:
    members = dag.nodes[node].get("members")
    return min(order.get(m, 0) for m in members) if members else order.get(node, 0)
