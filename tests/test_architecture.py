"""The package's shape: no import circle in bench/ (imports point down), and no module over MAX_LINES lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bench"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every import statement that can run: at module level or inside a function (a lazy import that
    closes a circle is a circle too), but not under ``if TYPE_CHECKING``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not (isinstance(node, ast.If) and _is_type_checking(node)):
            yield from _imports(node)


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The bench modules that ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            child = f"{base}.{alias.name}"
            if child in known:
                found.add(child)
            elif base in known:
                found.add(base)
    return found - {name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}


def test_the_import_graph_sees_absolute_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "bench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub/__init__.py").write_text("from . import leaf\n")
    (pkg / "sub/leaf.py").write_text("import bench.top\n")
    (pkg / "top.py").write_text("from bench.sub import leaf\nfrom bench import sub\n")
    (pkg / "lazy.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import bench.sub\n\n"
                                 "def f():\n    from bench.top import x\n")
    known = {"bench", "bench.sub", "bench.sub.leaf", "bench.top", "bench.lazy"}
    path = {"bench.sub": pkg / "sub/__init__.py", "bench.sub.leaf": pkg / "sub/leaf.py", "bench.top": pkg / "top.py",
            "bench.lazy": pkg / "lazy.py"}
    graph = {name: imported_modules(name, p, known) for name, p in path.items()}
    assert graph == {"bench.sub": {"bench.sub.leaf"}, "bench.sub.leaf": {"bench.top"},
                     "bench.top": {"bench.sub.leaf", "bench.sub"}, "bench.lazy": {"bench.top"}}
    assert import_cycles(graph) == [["bench.sub", "bench.sub.leaf", "bench.top"]]


def test_no_import_circle_in_bench():
    cycles = import_cycles(import_graph())
    assert not cycles, "import circles (imports should point down): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_module_over_the_line_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in modules().values()}
    over = {path: n for path, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by concept): {over}"


def test_the_readme_folder_map_names_every_part_of_the_package_and_nothing_else():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Architecture", 1)[1].split("```", 2)[1]
    mapped = set(re.findall(r"bench/(\w+)", block))
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} | {"cli"}
    assert mapped == parts, f"README's folder map lacks {sorted(parts - mapped)}, names missing {sorted(mapped - parts)}"
