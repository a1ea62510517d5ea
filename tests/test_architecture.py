"""The shape of ``workbench/`` (issue 14), read from the source with ``ast``:

- no import cycle, counting imports inside functions (those under ``if TYPE_CHECKING:`` do not run,
  so they do not count);
- imports follow the layers: the stages and the models never import the face (cli, magics, widgets),
  the models never import the stages, the widgets never import torch, and only the build module
  (``workbench.config.build``), the CLI and the magics import hydra;
- no module over 400 lines, no function over 60 lines (the denoise loop may stay whole: ALLOWED_LONG).

Each rule is about direct imports: a widget may call a library function that uses torch.
Every violation is listed in one assertion message, grouped by rule.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "workbench"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# "path:qualified name" -> its line limit. Only the denoise loop, which reads top to bottom as one loop.
ALLOWED_LONG = {"workbench/stages/denoise.py:denoise": 80}
FACE = ("workbench.cli", "workbench.magics", "workbench.widgets")
HYDRA_DOORS = ("workbench.config.build", "workbench.cli", "workbench.magics")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. workbench.stages.encode
    target: str  # imported module (ours: the module file; others: the top-level name, e.g. torch)
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``workbench/conf`` is YAML, not code)."""
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py")) if "conf" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Import statements anywhere (functions included), except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """What module ``name`` imports: our modules resolved to their files, other packages by top-level name."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the module pkg.sub when it is one, else a name of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            if target.split(".")[0] == PACKAGE:
                while target not in known and "." in target:  # `import workbench.x.func` style: the module
                    target = target.rpartition(".")[0]
            else:
                target = target.split(".")[0]
            if target != name:
                out.append(Import(name, target, node.lineno))
    return sorted(set(out), key=lambda i: (i.line, i.target))  # `from hydra import a, b`: one import


def import_graph() -> dict[str, list[Import]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, list[Import]]) -> list[tuple[list[Import], list[str]]]:
    """(one cycle, every module of its component) per strongly connected component of our modules
    (Tarjan); the cycle is the shortest import path from the component's first module back to it."""
    edges = {m: sorted({i.target for i in imps if i.target in graph}) for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return [(_cycle_in(c[0], set(c), graph), c) for c in components]


def _cycle_in(start: str, members: set[str], graph: dict[str, list[Import]]) -> list[Import]:
    """The shortest import path from ``start`` back to itself inside one component (breadth first)."""
    previous: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for imp in sorted(graph[v], key=lambda i: (i.target, i.line)):
                if imp.target == start:
                    path = [imp]
                    while path[0].source != start:
                        path.insert(0, previous[path[0].source])
                    return path
                if imp.target in members and imp.target not in previous:
                    previous[imp.target] = imp
                    nxt.append(imp.target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - Tarjan said there is one


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_violations(graph: dict[str, list[Import]]) -> list[str]:
    rules = [  # (who, may not import, why)
        (("workbench.stages", "workbench.models"), FACE, "the stages and the models never import the face"),
        (("workbench.models",), ("workbench.stages",), "the models never import the stages"),
        (("workbench.widgets",), ("torch",), "the widgets never import torch (they are views)"),
    ]
    out = []
    for imps in graph.values():
        for imp in imps:
            for who, forbidden, why in rules:
                if _under(imp.source, who) and _under(imp.target, forbidden):
                    out.append(f"{imp}: {why}")
            if imp.target == "hydra" and not _under(imp.source, HYDRA_DOORS):
                out.append(f"{imp}: only {', '.join(HYDRA_DOORS)} import hydra")
    return sorted(out)


def size_violations() -> list[str]:
    out = []
    for path in modules().values():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            out.append(f"{rel}: {lines} lines (limit {MAX_MODULE_LINES})")
        for qualname, node in _functions(ast.parse(text)):
            length = node.end_lineno - node.lineno + 1
            limit = ALLOWED_LONG.get(f"{rel}:{qualname}", MAX_FUNCTION_LINES)
            if length > limit:
                out.append(f"{rel}:{node.lineno} {qualname}: {length} lines (limit {limit})")
    return out


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included (Class.method, f.inner)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def test_allowlist_names_existing_functions():
    for key in ALLOWED_LONG:
        rel, qualname = key.split(":")
        names = {q for q, _ in _functions(ast.parse((ROOT / rel).read_text()))}
        assert qualname in names, f"ALLOWED_LONG names {key}, which does not exist: remove it"


def test_workbench_architecture():
    graph = import_graph()
    sections = {
        "import cycles (function-level imports count)": [
            " -> ".join([c[0].source] + [f"{i.target} (line {i.line} of {i.source})" for i in c])
            + (f"; its component holds {len(members)} modules: {', '.join(members)}" if len(members) > len(c) else "")
            for c, members in cycles(graph)],
        "imports crossing the layers the wrong way": layer_violations(graph),
        f"modules over {MAX_MODULE_LINES} lines / functions over {MAX_FUNCTION_LINES} lines": size_violations(),
    }
    total = sum(len(v) for v in sections.values())
    report = [f"{total} architecture violation(s) in {PACKAGE}/:"]
    for title, items in sections.items():
        if items:
            report += ["", f"{title} ({len(items)}):"] + [f"  - {item}" for item in items]
    assert total == 0, "\n".join(report)
