"""The package's layering, read from the source with ``ast`` (nothing is imported):

* ``omnibyte.apps`` never imports ``omnibyte.train`` or ``omnibyte.cli``;
* only ``omnibyte.cli`` imports argparse;
* the imports between omnibyte modules form no cycle.

Every import counts, at module level or inside a function: ``import x``, ``from x import y``
(relative ones resolved), and ``importlib.import_module`` of module names written as string
literals. ``import omnibyte.x`` is an edge to ``omnibyte.x`` (a package means its
``__init__``); ``from omnibyte.x import name`` is an edge to ``omnibyte.x.name`` when that is a
module, else to ``omnibyte.x``. Python's implicit import of parent packages is not an edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "omnibyte"
SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src"
DYNAMIC_IMPORTERS = {"import_module", "__import__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their own name)."""
    return {module_name(path): path for path in sorted((SOURCE_ROOT / PACKAGE).rglob("*.py"))}


MODULES = package_modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve_relative(importer: str, module: str | None, level: int) -> str:
    """The absolute name of ``from <level dots><module> import ...`` inside ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def nearest_module(name: str) -> str | None:
    """``name`` or its longest prefix that is a module of the package (``None`` outside it)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imported_names(importer: str, tree: ast.AST) -> list[tuple[str, int]]:
    """(absolute module name, line) of everything ``importer`` imports, before mapping to modules."""
    found: list[tuple[str, int]] = []
    dynamic = False
    literals: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve_relative(importer, node.module, node.level)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule if submodule in MODULES else source, node.lineno))
        elif isinstance(node, ast.Call):
            function = node.func
            called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            dynamic |= called in DYNAMIC_IMPORTERS
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES:
            literals.append((node.value, node.lineno))
    # a module that imports by name: the module names it spells out are what it imports
    return found + (literals if dynamic else [])


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """(omnibyte module -> {imported omnibyte module: line}, module -> {external top-level name: line})."""
    internal: dict[str, dict[str, int]] = {}
    external: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        internal[name], external[name] = {}, {}
        for target, line in imported_names(name, tree):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                resolved = nearest_module(target)
                if resolved is not None and resolved != name:
                    internal[name].setdefault(resolved, line)
            else:
                external[name].setdefault(target.split(".")[0], line)
    return internal, external


GRAPH, EXTERNAL = import_graph()


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def describe(edges: list[tuple[str, str, int]]) -> str:
    return "\n".join(f"  {source} -> {target} (line {line})" for source, target, line in edges)


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle through each group of modules that import each other."""
    return [cycle_in(graph, component) for component in strongly_connected(graph)]


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm,
    iterative so deep import chains cannot overflow the stack)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(set(component))
    return components


def cycle_in(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest cycle ``[a, b, ..., a]`` through the first module of a strongly connected
    ``component`` (breadth-first search until an edge leads back to it)."""
    start = min(component)
    parents: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node]):
                if successor == start:
                    path = [node]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if successor in component and successor not in parents:
                    parents[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"not strongly connected: {sorted(component)}")


# ---- the checker itself -------------------------------------------------------------------

def test_the_checker_sees_every_kind_of_import():
    tree = ast.parse(
        "import omnibyte.fileio\n"
        "from omnibyte.models import serialization\n"
        "from omnibyte.models import ByteModel\n"
        "from ..errors import OmnibyteError\n"
        "from . import container\n"
        "def later():\n"
        "    from omnibyte.train.checkpoint import TRAINER_STATE_FILE\n"
        "    import argparse\n")
    names = [name for name, _ in imported_names("omnibyte.apps.compress", tree)]
    assert names == ["omnibyte.fileio", "omnibyte.models.serialization", "omnibyte.models",
                     "omnibyte.errors", "omnibyte.apps.container", "omnibyte.train.checkpoint", "argparse"]
    dynamic = ast.parse("import importlib\nfor m in ('omnibyte.cli', 'x'):\n    importlib.import_module(m)\n")
    assert ("omnibyte.cli", 2) in imported_names("omnibyte.models", dynamic)


def test_cycles_are_found_and_spelled_out():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"f": 1}, "f": {"e": 1}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


# ---- the package ----------------------------------------------------------------------------

def test_the_package_is_found():
    for name in ("omnibyte", "omnibyte.cli", "omnibyte.apps.detect", "omnibyte.models.serialization",
                 "omnibyte.fileio"):
        assert name in MODULES, name


def test_apps_never_import_train_or_cli():
    bad = [(source, target, line) for source, targets in GRAPH.items() if within(source, "omnibyte.apps")
           for target, line in targets.items()
           if within(target, "omnibyte.train") or within(target, "omnibyte.cli")]
    assert not bad, "omnibyte.apps must not depend on training or the CLI:\n" + describe(bad)


def test_only_the_cli_imports_argparse():
    bad = [(source, "argparse", names["argparse"]) for source, names in EXTERNAL.items()
           if "argparse" in names and not within(source, "omnibyte.cli")]
    assert not bad, "argparse belongs in omnibyte.cli:\n" + describe(bad)


def describe_cycle(component: set[str]) -> str:
    """A cycle with the line of each import, and every module caught in the same knot."""
    cycle = cycle_in(GRAPH, component)
    text = "  " + " -> ".join(f"{a} (line {GRAPH[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
    if len(component) > len(cycle) - 1:
        text += f"\n    (modules that all reach each other: {', '.join(sorted(component))})"
    return text


def test_no_import_cycles():
    components = strongly_connected(GRAPH)
    assert not components, "import cycles (each import with the line that makes it):\n" + "\n".join(
        describe_cycle(component) for component in components)
