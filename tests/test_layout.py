"""gtaseg's modules import each other without cycles.

Read from the source with ``ast``, nothing imported. An edge A → B for every ``import gtaseg.…`` and
``from gtaseg.… import …`` in A, at module level or inside a function (a lazy import still ties A to B),
except under ``if TYPE_CHECKING:``, which never runs. ``from P import y`` means module P.y when that is a
module, else P itself; a package is the module of its ``__init__.py``.

Importing P.sub also runs the ``__init__`` of every package above it, so A → P.sub adds A → P too, except for
the packages that hold A: they are already imported by the time A runs. That edge is added whether or not
P's ``__init__`` imports anything; one that imports nothing from gtaseg has no edges out, so it can never be
on a cycle, which keeps the rule simple without reporting cycles that cannot happen.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gtaseg"


def module_files(root: Path) -> dict[str, Path]:
    """Module name → source file for everything under ``root``/gtaseg/."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Collects the import statements of a tree, wherever they are, except in ``if TYPE_CHECKING:`` bodies."""

    def __init__(self) -> None:
        self.found: list[ast.Import | ast.ImportFrom] = []

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.found.append(node)

    visit_ImportFrom = visit_Import

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        for stmt in node.orelse:
            self.visit(stmt)


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The gtaseg modules that module ``name`` (at ``path``) names in its imports."""
    is_package = path.name == "__init__.py"
    out = set()
    imports = _Imports()
    imports.visit(ast.parse(path.read_text(), str(path)))
    for node in imports.found:
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
            continue
        base = node.module or ""
        if node.level:  # relative: counted from the package holding this module
            anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
            base = ".".join(anchor + ([base] if base else []))
        if base.split(".")[0] != PACKAGE:
            continue
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            out.add(candidate if candidate in modules else base)
    return {m for m in out if m in modules}


def _packages_above(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the modules importing it runs (see the module docstring), for the gtaseg/ under ``root``."""
    files = module_files(root)
    modules = set(files)
    graph = {}
    for name, path in files.items():
        own = set(_packages_above(name)) | ({name} if path.name == "__init__.py" else set())
        edges = set()
        for target in imported_modules(name, path, modules):
            edges.add(target)
            edges |= {p for p in _packages_above(target) if p not in own}
        edges.discard(name)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest import chain from ``start`` back to itself inside one component."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & within):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle")


def test_the_graph_sees_lazy_relative_and_package_imports_but_not_type_checking_ones(tmp_path):
    pkg = tmp_path / "gtaseg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from gtaseg.sub.b import g\n")
    (pkg / "sub" / "b.py").write_text("from . import c\nimport gtaseg.sub\n")
    (pkg / "sub" / "c.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gtaseg.d\nelse:\n    import gtaseg.e\n"
        "def f():\n    from gtaseg.sub import c, b as x\n")
    (pkg / "d.py").write_text("")
    (pkg / "e.py").write_text("import os\nfrom gtaseg import d\n")
    assert import_graph(tmp_path) == {
        "gtaseg": set(),
        "gtaseg.a": {"gtaseg.e", "gtaseg.sub", "gtaseg.sub.b", "gtaseg.sub.c"},  # gtaseg.sub: the package above
        "gtaseg.d": set(),
        "gtaseg.e": {"gtaseg.d"},
        "gtaseg.sub": {"gtaseg.sub.b"},
        "gtaseg.sub.b": {"gtaseg.sub", "gtaseg.sub.c"},  # named outright, so counted though b is inside it
        "gtaseg.sub.c": set(),
    }
    assert strongly_connected(import_graph(tmp_path)) == [["gtaseg.sub", "gtaseg.sub.b"]]


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    """A component's shortest cycle, then every import inside it: the edges one of them must go."""
    inside = set(component)
    edges = "; ".join(f"{v} -> {', '.join(sorted(graph[v] & inside))}" for v in component)
    return f"{' -> '.join(shortest_cycle(graph, component[0], inside))}\n    imports within: {edges}"


def test_no_import_cycles():
    graph = import_graph()
    cycles = [describe(graph, component) for component in strongly_connected(graph)]
    assert not cycles, "import cycles in gtaseg:\n" + "\n".join(cycles)


def test_readme_layout_names_every_module():
    """The README's layout table lists every module: by its path, or by its file name in the row of its folder."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout"):].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    missing = []
    for name, path in module_files(ROOT).items():
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py" or f"`{rel}`" in section:
            continue
        folder = rel.rsplit("/", 1)[0] + "/"
        if not any(row.startswith(f"| `{folder}") and f"`{path.name}`" in row for row in rows):
            missing.append(rel)
    assert not missing, f"README.md's layout table does not name: {', '.join(missing)}"
