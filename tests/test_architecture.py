"""The package's shape: no import cycle between its top-level parts nor between its modules,
package faces that only re-export, small functions and modules.

Top-level parts are the modules and sub-packages directly under ``enface`` (``io``, ``data``,
``engine``, ``study``, ``errors``, ...). Imports inside functions count too: a lazy import
still ties two parts (or two modules) together.
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


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph(root: Path = SRC) -> dict[str, set[str]]:
    """``{module: modules of the package at root it imports}``; ``from a.x import y`` counts as
    importing ``a.x.y`` when that is a module, else ``a.x``."""
    modules = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_cycle_between_modules() -> None:
    cycle = _find_cycle(_module_graph())
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle or [])


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from pkg.sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg.sub import a\n")
    (pkg / "c.py").write_text("import pkg.sub.b\n")
    graph = _module_graph(pkg)
    assert graph["pkg.sub.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.sub.a"}
    assert graph["pkg.c"] == {"pkg.sub.b"}
    cycle = _find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"pkg.sub.a", "pkg.sub.b"}


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


UNTYPED_THIRD_PARTY_ERRORS = {("engine/predictor.py", "is_out_of_memory")}
"""Where an error's text may be read: torch's CPU-allocator and MPS failures have no type of their own."""


def _reads_error_text(node: ast.AST) -> bool:
    """``... in str(x)``, ``... in x.reason``, ``str(x).removeprefix(...)`` / ``.startswith(...)``."""

    def is_str_call(n: ast.AST) -> bool:
        return isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "str"

    if isinstance(node, ast.Compare) and any(isinstance(o, (ast.In, ast.NotIn)) for o in node.ops):
        return any(is_str_call(c) or (isinstance(c, ast.Attribute) and c.attr == "reason") for c in node.comparators)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("removeprefix", "startswith", "endswith") and is_str_call(node.func.value)
    return False


def test_no_failure_is_told_by_its_message() -> None:
    """Errors carry what callers branch on (``path``, ``reason``, ``kind``): no module finds a kind
    of failure, or the file it concerns, in an error's text."""
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if (str(path.relative_to(SRC)), func.name) in UNTYPED_THIRD_PARTY_ERRORS:
                continue
            found += [
                f"{path.relative_to(SRC)}:{n.lineno} {ast.unparse(n)}" for n in ast.walk(func) if _reads_error_text(n)
            ]
    assert not found, "failures told by their text:\n" + "\n".join(sorted(set(found)))


def test_the_error_text_finder_finds_what_it_looks_for() -> None:
    for code in ('"disk is full" in r.reason', 'str(e).removeprefix(f"{p}: ")', '"GLOBAL" not in str(e)'):
        assert _reads_error_text(ast.parse(code, mode="eval").body), code
    assert not _reads_error_text(ast.parse("e.kind == 'disk full'", mode="eval").body)


def _face_problems(path: Path, package: str) -> list[str]:
    """What an ``__init__.py`` holds besides its docstring, ``__all__`` and re-exports
    ``from enface.<module> import <names>`` (not from the package itself: that would import a
    module for its side effects)."""
    problems = []
    for i, node in enumerate(ast.parse(path.read_text(encoding="utf-8")).body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
        if isinstance(node, ast.ImportFrom) and node.level == 0 and module.startswith("enface.") and module != package:
            continue
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]:
            continue
        problems.append(f"line {node.lineno}: {ast.unparse(node).splitlines()[0]}")
    return problems


@pytest.mark.parametrize(
    "path", sorted(p for p in SRC.rglob("__init__.py") if p.parent != SRC), ids=lambda p: str(p.relative_to(SRC))
)
def test_a_package_face_only_says_what_it_holds_and_re_exports(path: Path) -> None:
    """One convention for every package's ``__init__.py`` (docs/layout.md): a docstring and
    re-exports of public names; no function, class, constant, lazy loader or logic."""
    package = ".".join(path.parent.relative_to(SRC.parent).parts)
    problems = _face_problems(path, package)
    assert not problems, f"{path.relative_to(SRC)}: " + "; ".join(problems)


def test_the_face_check_refuses_logic_and_side_imports(tmp_path: Path) -> None:
    face = tmp_path / "__init__.py"
    face.write_text(
        '"""Doc."""\nfrom __future__ import annotations\nfrom enface.select.queue import select_queue\n'
        "from enface.select import scoring\nimport numpy\n\ndef f():\n    pass\n__all__ = ['select_queue']\n"
    )
    problems = _face_problems(face, "enface.select")
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 4", "line 5", "line 7"]
