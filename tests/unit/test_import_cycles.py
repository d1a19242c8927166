"""No import cycle among the project's modules: not at module level, not hidden inside a function (an import
inside a function is still a dependency, only a deferred one), and not for the type checker alone either (an
import under `if TYPE_CHECKING:` never runs, but it is a dependency all the same: two modules that name each
other's types are one module in two files). Read with `ast`, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

from modelserver.paths import REPO_ROOT

ROOT = REPO_ROOT
PACKAGES = ("contract", "gateway", "handlers", "modelserver", "bench", "client")


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted name → file, for every module of `packages` under `root` (a package as its __init__.py)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def is_type_checking(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST, type_only: bool) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth; with `type_only`, those under TYPE_CHECKING too."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif is_type_checking(node) and not type_only:
            assert isinstance(node, ast.If)
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return found


def imported(module: str, path: Path, known: dict[str, Path], type_only: bool) -> dict[str, int]:
    """The project modules `module` imports anywhere in its file (module level, functions, classes), each with
    the line of its first import: `from a import b` names a.b when that is a module, else a; a package's
    __init__ counts too, as Python runs it first."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: dict[str, int] = {}
    for node in sorted(import_nodes(ast.parse(path.read_text(), str(path)), type_only), key=lambda n: n.lineno):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                target = ".".join(parts[:depth])
                if target in known and target != module:
                    targets.setdefault(target, node.lineno)
    return targets


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
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
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph(root: Path, packages: tuple[str, ...], type_only: bool = False) -> dict[str, dict[str, int]]:
    """Module → the project modules it imports; with `type_only`, the imports for the type checker too."""
    known = modules(root, packages)
    return {name: imported(name, path, known, type_only) for name, path in known.items()}


def describe(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    members = set(component)
    edges = [f"{a} imports {b} (line {line})" for a in component for b, line in graph[a].items() if b in members]
    return "; ".join(edges)


def test_the_project_has_no_import_cycle() -> None:
    graph = import_graph(ROOT, PACKAGES, type_only=True)
    assert len(graph) > 50, "the modules were not found"
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(describe(graph, c) for c in found)


def test_an_import_inside_a_function_counts(tmp_path: Path) -> None:
    """The finder sees the deferred kind: a.py imports b at module level, b imports a inside a function."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def late():\n    from pkg.a import thing\n    return thing\n")
    (package / "c.py").write_text("from . import a\n")  # relative, and no cycle
    (package / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n")
    (package / "e.py").write_text("import pkg.d\n")  # a cycle for the type checker only
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.c"] == {"pkg": 1, "pkg.a": 1}
    assert graph["pkg.d"] == {}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    with_types = import_graph(tmp_path, ("pkg",), type_only=True)
    assert with_types["pkg.d"] == {"pkg": 3, "pkg.e": 3}
    assert cycles(with_types) == [["pkg.a", "pkg.b"], ["pkg.d", "pkg.e"]]


def test_the_gateway_routers_are_equals() -> None:
    """A router (a gateway module that makes an APIRouter) imports no other router, nor anything from one:
    what two routers share lives in the service layer, the dependencies or a module of its own."""
    graph = import_graph(ROOT, ("contract", "gateway", "handlers", "modelserver"), type_only=True)
    routers = {name for name in graph if name.startswith("gateway.") and "APIRouter(" in module_text(name)}
    assert {"gateway.predict", "gateway.health", "gateway.v2", "gateway.explain", "gateway.embed"} <= routers
    crossing = [f"{a} imports {b} (line {n})" for a in sorted(routers) for b, n in graph[a].items() if b in routers]
    assert not crossing, "routers importing routers: " + "; ".join(crossing)


def test_only_the_app_imports_a_router() -> None:
    """Below the routers (the service, the dependencies, the error shapes, the middleware, ...) no module imports
    a router, even for its types: gateway/main.py, which wires them into the app, is the one module that does."""
    graph = import_graph(ROOT, PACKAGES, type_only=True)
    routers = {name for name in graph if name.startswith("gateway.") and "APIRouter(" in module_text(name)}
    below = [
        f"{a} imports {b} (line {n})"
        for a in sorted(set(graph) - routers - {"gateway.main"})
        for b, n in graph[a].items()
        if b in routers
    ]
    assert not below, "modules below the routers importing one: " + "; ".join(below)


def module_text(name: str) -> str:
    return (ROOT / (name.replace(".", "/") + ".py")).read_text()
