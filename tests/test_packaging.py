"""The version has one source, and the installed package and the CLI report it."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

import enface
from enface.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_is_written_once() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "enface.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", enface.__version__)
    assert importlib.metadata.version("enface") == enface.__version__  # `make install` re-installs on a bump


def test_enface_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"enface {enface.__version__}"
