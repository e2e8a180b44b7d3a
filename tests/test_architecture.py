"""The package's shape: no import cycle between its top-level parts, small functions and modules.

Top-level parts are the modules and sub-packages directly under ``enface`` (``io``, ``data``,
``engine``, ``study``, ``errors``, ...). Imports inside functions count too: a lazy import
still ties two parts together.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "enface"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 550


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _part(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0].removesuffix(".py")


def _imported_parts(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "enface":  # from enface import viz
                names = [f"enface.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "enface" and len(parts) > 1:
                found.add(parts[1])
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _modules():
        part = _part(path)
        deps = _imported_parts(ast.parse(path.read_text(encoding="utf-8")))
        graph.setdefault(part, set()).update(d for d in deps if (SRC / d).is_dir() or (SRC / f"{d}.py").is_file())
        graph[part].discard(part)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_between_top_level_parts() -> None:
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle between top-level parts: " + " -> ".join(cycle or [])


def test_ground_floor_imports_nothing_of_enface() -> None:
    graph = _graph()
    assert graph["errors"] == set()
    assert graph["targets"] <= {"errors"}
    assert graph["fileio"] <= {"errors"}
    assert graph["config"] <= {"errors", "targets"}


def test_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_and_functions_are_small(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    n_lines = len(text.splitlines())
    assert n_lines <= MAX_MODULE_LINES, f"{path.name}: {n_lines} lines (limit {MAX_MODULE_LINES})"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if length > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_the_streaming_executor_names_no_model() -> None:
    """Streamed inference is generic over the stages a model declares: the executor neither
    names a registered architecture nor imports one."""
    from enface.models import create_model, list_models

    text = (SRC / "engine" / "streaming.py").read_text(encoding="utf-8")
    classes = {type(create_model(name, width=0.125)).__name__ for name in list_models()}
    assert classes >= {"FeatureProjectionNetwork", "ImageProjectionNetwork", "IPNV2", "LachinovNet"}
    named = sorted(c for c in classes | set(list_models()) if re.search(rf"\b{re.escape(c)}\b", text, re.IGNORECASE))
    assert not named, f"engine/streaming.py names {named}"
    modules = {
        node.module
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("enface.models")
    }
    assert modules <= {"enface.models.stages"}, modules
