"""The package's layout by role stays true: no import circle, no import of a higher layer, one folder per
task that no other task reaches into, and nothing at the top level besides the package face, api, cli and runs.
Imports inside functions count as well: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "gfnlm"
# Lowest first: a module may import its own layer and the layers below it, never one above.
LAYERS = ("infra", "model", "core", "targets", "inference", "baselines", "evaluation", "posterior", "tasks", "")
TOP_LEVEL = {"__init__", "api", "cli", "runs"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def imported_modules(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The gfnlm modules that module ``name`` imports (``from gfnlm.x import y`` counts gfnlm.x.y when that
    is a module)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in modules and m != name}


def layer(module: str) -> int:
    folder = module.split(".")[1] if "." in module else ""  # gfnlm.core.trainer -> core; gfnlm.cli -> top
    return LAYERS.index(folder if folder in LAYERS else "")


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p.read_text(encoding="utf-8"), module_name(p), p.name == "__init__.py",
                                             modules) for p in paths}


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps if layer(d) > layer(m)]
    assert upward == []


def test_no_task_reaches_into_another_task():
    def task_of(module):
        parts = module.split(".")
        return parts[2] if len(parts) > 3 and parts[1] == "tasks" else None

    crossing = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
                if task_of(m) and task_of(d) and task_of(m) != task_of(d)]
    assert crossing == []


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module, path):
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_top_level_holds_only_the_package_face_cli_and_runs():
    assert {p.stem for p in PACKAGE.glob("*.py")} == TOP_LEVEL
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {name for name in LAYERS if name} | {"data"}


def test_the_reader_sees_relative_lazy_and_aliased_imports():
    """Else the tests above could pass because they read nothing."""
    graph = import_graph()
    assert "gfnlm.core.objectives" in graph["gfnlm.core.trainer"]
    planted = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gfnlm.evaluation.harness\n"
               "def f():\n    from ..tasks.rng import task as t\n    import gfnlm.cli as c\n")
    deps = imported_modules(planted, "gfnlm.core.planted", False, set(graph))
    assert deps == {"gfnlm.tasks.rng", "gfnlm.tasks.rng.task", "gfnlm.cli"}
    assert max(map(layer, deps)) > layer("gfnlm.core.planted")
