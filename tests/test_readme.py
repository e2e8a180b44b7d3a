"""The front door cannot rot: README.md's walk-through runs, its links lead somewhere, and the
reference pages in docs/ name only what exists.

The walk-through is the ``bash`` block between ``<!-- walk-through: begin`` and
``<!-- walk-through: end -->`` in README.md. Every command in it is run in-process through
:func:`enface.cli.main`, in a temporary folder (the block writes only under ``tour/``), and
must exit with status 0; a comment line ``# -> PATH [PATH ...]`` names files the command
above it writes, which must then exist.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from test_architecture import SRC, _graph

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_BYTES = 12_000
ENFACE = ".venv/bin/enface"
GROUND_FLOOR = {"errors", "targets", "fileio"}


# --------------------------------------------------------------------------- markdown parsing


def _fences(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, body)`` of every fenced code block, as character offsets into ``text``."""
    return [(m.start(), m.end(), m.group(1)) for m in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)]


def _without_fences(text: str) -> str:
    for start, end, _ in reversed(_fences(text)):
        text = text[:start] + text[end:]
    return text


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def _shell_lines(block: str) -> list[str]:
    """Logical lines of a shell block: continuations joined, blank lines dropped."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _commands(block: str) -> list[str]:
    """The commands of a shell block, without comments."""
    return [line.split(" #")[0].strip() for line in _shell_lines(block) if not line.startswith("#")]


def walkthrough() -> list[tuple[list[str], list[str]]]:
    """``(argv after 'enface', files it writes)`` of each command of the README's walk-through."""
    text = README.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- walk-through: begin.*?-->\n```bash\n(.*?)^```\n<!-- walk-through: end -->", text, re.M | re.S
    )
    assert found, "README.md: no ```bash block between <!-- walk-through: begin --> and <!-- walk-through: end -->"
    steps: list[tuple[list[str], list[str]]] = []
    for line in _shell_lines(found.group(1)):
        if line.startswith("# ->"):
            assert steps, f"README.md walk-through: {line!r} follows no command"
            steps[-1][1].extend(line.removeprefix("# ->").split())
        elif not line.startswith("#"):
            argv = shlex.split(line)
            assert argv[0] == ENFACE, f"README.md walk-through: {line!r} is not an {ENFACE} command"
            steps.append((argv[1:], []))
    return steps


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _markdown_files() -> list[Path]:
    return [README, ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md", *sorted(DOCS.rglob("*.md"))]


# --------------------------------------------------------------------------- the walk-through


@pytest.mark.slow
def test_walkthrough_runs_and_writes_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from enface.cli import main

    steps = walkthrough()
    assert [argv[0] for argv, _ in steps][:1] == ["synth"], "the walk-through starts with a phantom"
    monkeypatch.chdir(tmp_path)
    for argv, files in steps:
        assert main(argv) == 0, f"README.md walk-through: enface {shlex.join(argv)} failed"
        missing = [f for f in files if not (tmp_path / f).is_file()]
        assert not missing, f"enface {argv[0]} did not write {missing}"
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.iterdir()}
    assert written == {"tour"}, f"the walk-through wrote outside tour/: {sorted(written)}"


def test_walkthrough_covers_the_pipeline_and_names_outputs() -> None:
    steps = walkthrough()
    commands = [argv[0] for argv, _ in steps]
    for stage in ("synth", "pretrain", "train", "predict", "progression"):
        assert stage in commands, f"the README's walk-through has no 'enface {stage}'"
    assert all(files for _, files in steps), "every walk-through command names a file it writes (# -> ...)"
    assert (
        commands.index("pretrain") < commands.index("train") < commands.index("predict") < commands.index("progression")
    )


# --------------------------------------------------------------------------- the README itself


def test_readme_is_short_and_gives_the_two_commands_first() -> None:
    data = README.read_bytes()
    assert len(data) <= MAX_README_BYTES, f"README.md is {len(data)} bytes; the front door stays <= {MAX_README_BYTES}"
    text = data.decode("utf-8")
    first_block = _fences(text)[0]
    assert _commands(first_block[2]) == ["make demo", "make test"]
    before = text[: first_block[0]]
    assert not re.search(r"`(\.venv/bin/)?enface [a-z]", before), "a command is given before make demo / make test"


def test_command_index_lists_every_subcommand() -> None:
    from enface.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[arg-type]
    text = README.read_text(encoding="utf-8")
    indexed = re.findall(r"^\| `enface ([a-z-]+)` \|", text, re.M)
    assert len(indexed) == len(set(indexed)), "a command is listed twice in README.md's index"
    assert set(indexed) == commands, (
        f"README.md's command index lacks {sorted(commands - set(indexed))}, "
        f"lists unknown {sorted(set(indexed) - commands)}"
    )


# --------------------------------------------------------------------------- links and names


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.relative_to(ROOT)}: link to {target} leads nowhere"
        if anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", _without_fences(dest.read_text(encoding="utf-8")), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.relative_to(ROOT)}: no heading #{anchor} in {path}"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_named_python_objects_and_files_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for dotted in sorted(set(re.findall(r"`(enface(?:\.\w+)+)", text))):
        assert _resolves(dotted), f"{page.relative_to(ROOT)} names {dotted}, which does not exist"
    for path in sorted(set(re.findall(r"`((?:src|tests|benchmarks|configs|docs|enface)/[\w./-]*\w)`", text))):
        real = SRC.parent / path if path.startswith("enface/") else ROOT / path
        assert real.exists(), f"{page.relative_to(ROOT)} names {path}, which does not exist"


# --------------------------------------------------------------------------- the layout page


def _layout_tree() -> tuple[set[str], dict[str, str]]:
    """Modules (paths under src/enface) the layout page lists, and each part's description."""
    text = (DOCS / "layout.md").read_text(encoding="utf-8")
    tree = next(body for _, _, body in _fences(text) if body.startswith("src/enface/"))
    modules: set[str] = set()
    described: dict[str, str] = {}
    package = part = ""
    for line in tree.splitlines()[1:]:
        top = re.match(r"^  (\S+)\s+(.*)$", line)
        child = re.match(r"^    ((?:[\w./]+\.py, )*[\w./]+\.py)\s", line)  # a sub-package's: "dicom/index.py"
        if top:
            name = top.group(1)
            package = name if name.endswith("/") else ""
            part = name.removesuffix("/").removesuffix(".py")
            described[part] = top.group(2)
            if not package:
                modules.add(name)
        elif child:
            modules.update(package + name for name in child.group(1).split(", "))
        elif line.startswith(" " * 5):
            described[part] += " " + line.strip()
        else:
            package = ""
    return modules, described


def test_layout_lists_every_module_and_nothing_else() -> None:
    listed, _ = _layout_tree()
    real = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py")}
    required = {m for m in real if not m.endswith("/__init__.py")}
    assert not required - listed, f"docs/layout.md does not list {sorted(required - listed)}"
    assert not listed - real, f"docs/layout.md lists modules that do not exist: {sorted(listed - real)}"


def test_layout_says_what_each_part_imports() -> None:
    _, described = _layout_tree()
    for part, deps in _graph().items():
        if part in ("cli", "__init__", "__main__"):
            continue  # cli imports anything; the package root and `python -m` only start it
        text = described.get(part, "")
        declared = re.search(r"imports (.*?)(?:;|$)", text)
        assert declared, f"docs/layout.md does not say what {part} imports"
        names = set(re.findall(r"\w+", declared.group(1).replace("the ground floor", " ".join(GROUND_FLOOR))))
        undeclared = deps - names - {"nothing", "of", "enface", "and"}
        assert not undeclared, f"{part} imports {sorted(undeclared)}, which docs/layout.md does not name"
