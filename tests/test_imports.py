"""The package's import structure, checked statically: no cycles, no orchestrator, short modules.

Every module of ``metarec/`` is parsed with :mod:`ast` (nothing is imported); each ``import`` and
``from ... import`` is collected wherever it stands (module level, inside functions, under
``if``), as is ``importlib.import_module("...")`` with a literal name. An import of a metarec
name resolves to the module that name lives in: ``from metarec import registry`` is the module
``metarec.registry``, ``from metarec.registry import promote`` is ``metarec.registry``. Importing
a submodule also runs its parent packages' ``__init__``; those implicit edges are left out, so
a package that re-exports its modules (``metarec/registry/__init__.py``) is not a cycle.

As a script, ``python -m tests.test_imports`` prints every edge (``importer -> imported``,
with the line), then the cycles and the modules over the line limit.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = "metarec"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 450
FORBIDDEN = ("dagster", "orchestration")  # metarec/ is the library; orchestration/ imports it

def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under ``root`` (packages as __init__)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every absolute dotted name ``tree`` imports, with its line: ``from a import b`` gives
    ``a.b`` (a module, or a name defined in ``a``: :func:`_resolve` tells which)."""
    package = module if is_package else module.rpartition(".")[0]
    names: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: level 1 is this package, each further level its parent
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names += [(base if alias.name == "*" else f"{base}.{alias.name}", node.lineno)
                      for alias in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names.append((node.args[0].value, node.lineno))
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The metarec module ``name`` is or lives in (its longest prefix that is a module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """``{importer: {imported metarec module: first line}}`` over every module of the package."""
    modules = module_files(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: dict[str, int] = {}
        for name, line in sorted(_imported_names(tree, module, path.name == "__init__.py"),
                                 key=lambda item: item[1]):
            target = _resolve(name, modules)
            if target is not None and target != module:
                edges.setdefault(target, line)
        graph[module] = dict(sorted(edges.items()))
    return graph


def external_imports(root: Path = ROOT) -> dict[str, list[tuple[str, int]]]:
    """``{module: [(imported top-level package, line), ...]}`` for imports outside metarec."""
    modules = module_files(root)
    out: dict[str, list[tuple[str, int]]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = {(name.split(".")[0], line)
                 for name, line in _imported_names(tree, module, path.name == "__init__.py")
                 if name and _resolve(name, modules) is None}
        out[module] = sorted(found)
    return out


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): each
    is a set of modules that all import one another, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the package's module count
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle (a closed path ``[a, b, ..., a]``) per strongly connected component,
    sorted for stable messages."""
    return sorted(_cycle_in(graph, c) for c in strongly_connected(graph))


def _cycle_in(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest closed path through the component's first module (breadth-first search)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in graph.get(node, {}):
                if nxt == start:  # back at the start: walk the parents from `node` to it
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return path[::-1] + [start]
                if nxt in component and nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in its component {sorted(component)}")


def _describe(cycles: list[list[str]], graph: dict[str, dict[str, int]]) -> str:
    """Each cycle with the line of each import, and every module of its component."""
    components = strongly_connected(graph)
    lines = []
    for cycle in cycles:
        hops = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
        (members,) = [c for c in components if cycle[0] in c]
        lines.append(" -> ".join(hops + [cycle[-1]])
                     + f"\n  (all modules of this cycle: {', '.join(sorted(members))})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- tests


def test_scan_resolves_imports(tmp_path):
    # A toy package: absolute, relative, function-level and re-exported imports.
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from metarec.sub.leaf import f\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from .. import top\n    import dagster\n")
    (pkg / "top.py").write_text("from metarec import sub\nfrom metarec.sub import f\n")
    graph = import_graph(pkg)
    assert graph == {"metarec": {}, "metarec.sub": {"metarec.sub.leaf": 1},
                     "metarec.sub.leaf": {"metarec.top": 2}, "metarec.top": {"metarec.sub": 1}}
    assert find_cycles(graph) == [["metarec.sub", "metarec.sub.leaf", "metarec.top",
                                   "metarec.sub"]]
    assert external_imports(pkg)["metarec.sub.leaf"] == [("dagster", 3)]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among metarec modules:\n" + _describe(cycles, graph)


def test_library_never_imports_the_orchestrator():
    bad = [f"{module} line {line}: imports {name}"
           for module, found in external_imports().items()
           for name, line in found if name in FORBIDDEN]
    assert not bad, "metarec must not import " + " or ".join(FORBIDDEN) + ":\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(module_files()))
def test_module_is_short(module):
    lines = len(module_files()[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines (limit {MAX_LINES}); split it by concern"


def main() -> int:
    """Print the edges, the cycles and the oversized modules; exit 1 when there is any."""
    graph = import_graph()
    for module, edges in graph.items():
        for target, line in edges.items():
            print(f"{module} -> {target}  (line {line})")
    cycles = find_cycles(graph)
    print(f"\n{sum(map(len, graph.values()))} edges among {len(graph)} modules; "
          f"{len(cycles)} cycle(s)")
    if cycles:
        print(_describe(cycles, graph))
    long = {m: n for m, p in module_files().items()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    for module, n in sorted(long.items()):
        print(f"over {MAX_LINES} lines: {module} ({n})")
    return 1 if cycles or long else 0


if __name__ == "__main__":
    sys.exit(main())
