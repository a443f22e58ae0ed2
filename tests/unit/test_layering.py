"""The shape of the code, checked from its source (plain ``ast``): the floors
and their imports, no import cycles, no overlong function.

``cache/`` is the disk and ``fetch/`` the origins; ``service/`` is what
the routes ask for; ``api/`` translates HTTP to service calls; ``web/`` is
HTTP plumbing that knows none of them. Every import counts, also one inside
a function; only imports under ``if TYPE_CHECKING:`` are exempt (they never
run). And no two modules import each other, directly or around a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "proxy"

# floor -> floors it must not import
FORBIDDEN = {
    "cache": {"fetch", "service", "api", "web"},
    "web": {"cache", "fetch", "service", "api"},
    "api": {"fetch"},
    "fetch": {"service", "api", "web"},
    "service": {"api", "web"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (
        PACKAGE.parent / rel / "__init__.py"
    ).is_file()


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:``."""
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for inner in node.body:
                exempt |= {id(n) for n in ast.walk(inner)}
    return exempt


def imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in it)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        exempt = _type_checking_only(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in exempt:
                continue
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "proxy"}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] != "proxy":
                    continue
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if _is_module(full) else node.module)
        name = _module_name(path)
        graph[name] = {d for d in deps if d != name}
    return graph


def _floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def test_the_floors_import_only_downwards() -> None:
    wrong = sorted(
        f"{module} imports {dep}"
        for module, deps in imports().items()
        for dep in deps
        if _floor(dep) in FORBIDDEN.get(_floor(module) or "", set())
    )
    assert wrong == []


def test_no_import_cycles() -> None:
    graph = imports()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep in ("proxy",) or dep not in graph:
                continue
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []


def test_the_checker_sees_what_it_must() -> None:
    """The checker itself: imports inside functions count, TYPE_CHECKING ones do not,
    and the floors it checks exist."""
    graph = imports()
    assert {_floor(m) for m in graph} >= {"cache", "fetch", "service", "api", "web"}
    # proxy.cli imports its commands inside functions.
    assert "proxy.commands" in graph["proxy.cli"]
    assert "proxy.server" in graph["proxy.cli"]


MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_a_screen() -> None:
    """Long functions become named steps: none over MAX_FUNCTION_LINES lines."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{_module_name(path)}.{node.name}: {length} lines")
    assert long == []
