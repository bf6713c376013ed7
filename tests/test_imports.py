"""Data flows one way: no import cycle inside qanalysis/, lazy (function-level) imports included,
and the core never imports Streamlit (issue 15)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parents[1] / "qanalysis"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> nx.DiGraph:
    """Module → every qanalysis module it imports anywhere in its source."""
    g = nx.DiGraph()
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    for name, path in modules.items():
        g.add_node(name)
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = pkg
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                mod = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in modules and t != name and not (path.name == "__init__.py" and t.startswith(name + ".")):
                    g.add_edge(name, t)
    return g


def test_no_import_cycle_inside_the_package():
    g = import_graph()
    cycles = list(nx.simple_cycles(g))
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c + [c[0]]) for c in cycles[:5])


def test_the_core_never_imports_streamlit():
    for p in PKG.rglob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []  # fmt: skip
            assert not any(n.split(".")[0] == "streamlit" for n in names), p


def _readme_layers() -> list[str]:
    """The modules of README's "Where things live", in the order listed (``fixes/`` is the package)."""
    import re

    text = (PKG.parent / "README.md").read_text()
    block = text[text.index("qanalysis/        (") :]
    block = block[: block.index("app.py, pages/")]
    order = []
    for line in block.splitlines()[1:]:
        m = re.match(r"\s+(\S.*?)\s{2,}", line)
        if m:
            order += [p.strip().removesuffix(".py").removesuffix("/") for p in m.group(1).split(",")]
    return order


def test_the_readme_lists_every_module_below_what_it_imports():
    def short(n: str) -> str:
        n = n.removeprefix("qanalysis").removeprefix(".")
        return "fixes" if n.startswith("fixes") else n

    g = import_graph()
    order = _readme_layers()
    pos = {n: i for i, n in enumerate(order)}
    listed = {short(n) for n in g.nodes} - {"", "__main__"}
    assert listed <= set(pos), f"modules missing from README's 'Where things live': {sorted(listed - set(pos))}"
    upward = [f"{short(a)} → {short(b)}" for a, b in g.edges
              if short(a) in pos and short(b) in pos and short(a) != short(b) and pos[short(b)] > pos[short(a)]]  # fmt: skip
    assert not upward, "imports pointing up README's module list: " + ", ".join(upward)
