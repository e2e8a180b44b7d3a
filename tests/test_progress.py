"""Progress suited to where it is written (enface.progress): a bar on a terminal, one line per
step elsewhere (``enface prepare ... 2> prepare.log``)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest

import enface.progress as progress
from enface.data.prepare import PrepareOptions, prepare_dataset
from enface.data.preprocess import FlattenParams
from enface.progress import Progress, on_terminal
from formats_helpers import layered_volume


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_terminal_asks_the_stream() -> None:
    assert on_terminal(_Terminal()) and not on_terminal(io.StringIO()) and not on_terminal(object())  # type: ignore[arg-type]


def test_off_a_terminal_each_step_is_one_logged_line(caplog: pytest.LogCaptureFixture, capsys) -> None:
    with caplog.at_level(logging.INFO, logger="enface.progress"), Progress(3, "work", "item") as bar:
        for name in ("a", "b", "c"):
            bar.working_on(name)
            bar.step(f"{name}: done")
    assert [r.getMessage() for r in caplog.records] == [
        "work [1/3] a: done",
        "work [2/3] b: done",
        "work [3/3] c: done",
    ]
    assert "\r" not in capsys.readouterr().err


def test_on_a_terminal_the_bar_redraws_and_no_line_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    monkeypatch.setattr(progress, "on_terminal", lambda stream=None: True)
    with caplog.at_level(logging.INFO, logger="enface.progress"), Progress(2, "work", "item") as bar:
        bar.step("a: done", "0 failed")
        bar.step("b: done")
    assert not caplog.records and "work" in capsys.readouterr().err


def test_disabled_progress_shows_nothing(caplog: pytest.LogCaptureFixture, capsys) -> None:
    with caplog.at_level(logging.INFO), Progress(1, "work", "item", enabled=False) as bar:
        bar.step("a: done")
    assert not caplog.records and capsys.readouterr().err == ""


def test_prepare_off_a_terminal_logs_one_line_per_scan(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        np.save(src / f"s{i}.npy", layered_volume((4, 24, 64), seed=i)[0])
    np.save(src / "bad.npy", np.zeros((4, 24), np.float32))
    opts = PrepareOptions(fmt="numpy", flatten=FlattenParams(0.2, 0.1, 16), spacing=(0.1, 0.02, 0.005))
    with caplog.at_level(logging.INFO, logger="enface.data.prepare"):
        prepare_dataset(src, tmp_path / "ds", opts, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prepare [")]
    assert lines == [
        "prepare [1/3] bad: failed (error): expected a 3D volume, got shape (4, 24)",
        "prepare [2/3] s0: written",
        "prepare [3/3] s1: written",
    ]
