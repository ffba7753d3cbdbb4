"""The house stays within its lines: module sizes, no import cycle, a module table that is true.

- No module of ``lisa`` or ``diagnostics`` is over 450 lines (one job per module).
- No two modules of ``lisa``, ``diagnostics`` and ``lisa_apps`` import each other, directly or
  through others. The rule, as :func:`import_graph` builds it: a node is a module (a package is
  its ``__init__.py``); every ``import`` and ``from ... import`` statement in a module is an
  edge, wherever it stands (top level, inside a function, under ``if TYPE_CHECKING:``), because
  each is a dependency a reader has to follow; ``from p import name`` points at the module
  ``p.name`` when there is one, else at ``p``. The parent package that Python runs before a
  submodule is not an edge, so a package ``__init__.py`` re-exporting its submodules is not a
  cycle by itself; a submodule that imports from its own package's ``__init__`` (``from lisa
  import X`` inside ``lisa/engine.py``) closes one and fails. A cycle is a strongly connected
  component of more than one module.
- docs/design.md's module table names every module of ``lisa`` and ``diagnostics`` and no
  module that does not exist.

The direction between the three packages (``lisa`` <- ``diagnostics`` <- ``lisa_apps``) is
checked in tests/test_docs.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lisa", "diagnostics", "lisa_apps")
SIZE_CHECKED = ("lisa", "diagnostics")
MAX_LINES = 450


def package_modules(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package) for every ``.py`` file under ``packages``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join(parts)] = (path, is_package)
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports anywhere in its code (see the docstring)."""
    modules = package_modules(root, packages)
    graph = {}
    for name, (path, is_package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:  # relative: from the package holding this module
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        targets.add(f"{source}.{alias.name}")
                    elif source in modules:
                        targets.add(source)
        targets.discard(name)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
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
                        cycles.append(sorted(component))
    return cycles


def test_no_module_of_lisa_or_diagnostics_is_over_450_lines():
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for path, _ in package_modules(ROOT, SIZE_CHECKED).values()
    }
    assert sizes, "no module found"
    offenders = {path: lines for path, lines in sizes.items() if lines > MAX_LINES}
    assert offenders == {}, f"over {MAX_LINES} lines: split them by job (docs/design.md section 2)"


def test_no_two_modules_import_each_other():
    graph = import_graph(ROOT, PACKAGES)
    # The graph must see the project's imports, or an empty result would prove nothing.
    assert "lisa_apps.training.results" in graph["lisa_apps.training.runner"]
    assert "lisa.engine" in graph["lisa"]
    edges = [
        f"{module} imports {target}"
        for cycle in import_cycles(graph)
        for module in cycle
        for target in sorted(graph[module] & set(cycle))
    ]
    assert edges == [], "import cycle: make the dependency one way"


def test_the_import_graph_counts_type_checking_and_function_imports_not_reexports(tmp_path):
    files = {
        # The package re-exports its submodules: not a cycle by itself.
        "pkg/__init__.py": "from pkg.a import A\nfrom pkg import b\n",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\nA = 1\n",
        "pkg/b.py": "def f():\n    from . import c\nB = 2\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d.py": "x = 1\n",
        "pkg/sub/__init__.py": "from .e import E\n",
        "pkg/sub/e.py": "from ..d import x\nE = x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {
        "pkg": {"pkg.a", "pkg.b"},
        "pkg.a": {"pkg.b"},  # under TYPE_CHECKING
        "pkg.b": {"pkg.c"},  # inside a function, relative
        "pkg.c": {"pkg.a"},
        "pkg.d": set(),
        "pkg.sub": {"pkg.sub.e"},
        "pkg.sub.e": {"pkg.d"},
    }
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (tmp_path / "pkg/c.py").write_text("import os\n")
    assert import_cycles(import_graph(tmp_path, ("pkg",))) == []
    # A submodule importing from its own package's __init__, which re-exports it, is a cycle.
    (tmp_path / "pkg/__init__.py").write_text("from pkg.a import A\nfrom pkg.d import x\n")
    (tmp_path / "pkg/d.py").write_text("from pkg import A\nx = A\n")
    assert import_cycles(import_graph(tmp_path, ("pkg",))) == [["pkg", "pkg.d"]]


def _module_table(page: Path) -> list[str]:
    text = page.read_text()
    start = text.index("| module | job |")
    rows = []
    for line in text[start:].splitlines():
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows[2:]


def test_design_module_table_lists_every_module_of_lisa_and_diagnostics():
    rows = _module_table(ROOT / "docs" / "design.md")
    modules = [
        path.relative_to(ROOT).as_posix()
        for path, _ in package_modules(ROOT, SIZE_CHECKED).values()
    ]
    first_cells = [row.split("|")[1] for row in rows]
    missing = []
    for module in modules:
        if any(f"`{module}`" in cell for cell in first_cells):
            continue
        # A subpackage row (`diagnostics/sources/`) covers its __init__.py and names the rest.
        folder, file = module.rsplit("/", 1)
        covered = [row for row, cell in zip(rows, first_cells, strict=True) if f"`{folder}/`" in cell]
        if covered and (file == "__init__.py" or any(f"`{file}`" in row for row in covered)):
            continue
        missing.append(module)
    assert missing == [], "add these modules to the table in docs/design.md section 2"
    listed = re.findall(r"`((?:lisa|diagnostics)/[\w/]+\.py)`", "\n".join(rows))
    assert listed, "the table lists no module"
    assert sorted(set(listed) - set(modules)) == [], "the table lists modules that do not exist"
