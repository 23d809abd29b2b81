"""The package's import structure: no import cycle (imports inside functions included, ``if TYPE_CHECKING:``
blocks excluded) and no module importing or reading another module's private (``_``-prefixed) names."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "emtdamp"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path):
    """(imported emtdamp modules, [(module, name) of private names imported or read])."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps, private, aliases = set(), [], {}

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("emtdamp"):
                    deps.add(a.name)
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            if mod.startswith("emtdamp"):
                for a in node.names:
                    full = f"{mod}.{a.name}"
                    if full in MODULES:
                        deps.add(full)
                        aliases[a.asname or a.name] = full
                    else:
                        deps.add(mod)
                        if a.name.startswith("_"):
                            private.append((mod, a.name))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                private.append((aliases[node.value.id], node.attr))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {d for d in deps if d in MODULES and d != name}, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_the_import_graph_is_found():
    graph = {m: _imports(m, f)[0] for m, f in MODULES.items()}
    # a few edges we know exist: the walker sees both top-level and function-level imports
    assert "emtdamp.models.network" in graph["emtdamp.methods.sgmcmc_methods"]
    assert "emtdamp.loops.centralised" in graph["emtdamp.runs"]
    assert "emtdamp.methods.registry" in graph["emtdamp.cli"] or "emtdamp.methods" in graph["emtdamp.cli"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    graph = {m: _imports(m, f)[0] for m, f in MODULES.items()}
    assert _cycles(graph) == []


def test_no_module_uses_another_modules_private_names():
    found = {m: p for m, f in MODULES.items() if (p := [x for x in _imports(m, f)[1] if x[0] != m])}
    assert found == {}


def test_private_name_use_is_detected(tmp_path):
    f = tmp_path / "fake.py"
    f.write_text("from emtdamp.models import mlp\nfrom emtdamp.runs import _atomic_write\n"
                 "def g():\n    return mlp._hidden_helper\n")
    deps, private = _imports("emtdamp.fake", f)
    assert {"emtdamp.models.mlp", "emtdamp.runs"} <= deps
    assert sorted(private) == [("emtdamp.models.mlp", "_hidden_helper"), ("emtdamp.runs", "_atomic_write")]
