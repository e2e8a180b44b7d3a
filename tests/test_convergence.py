"""Convergence and collapse flags of study runs (enface.study.convergence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from enface.study.convergence import collapse_flag, rising_flag, stalled_flag


def _history(values: list[float]) -> list[dict]:
    return [{"epoch": i, "val_dice": v} for i, v in enumerate(values)]


def test_rising_flag() -> None:
    rising = _history([0.1 * i for i in range(10)])
    flat = _history([0.5, 0.7, 0.8, 0.82, 0.83, 0.83, 0.84, 0.83, 0.84, 0.84, 0.84, 0.85])
    short = _history([0.1, 0.5, 0.9])
    flag = rising_flag(rising)
    assert flag is not None and flag.startswith("still rising")
    assert rising_flag(rising, stopped="plateau") is None  # its patience stopped it: it was not rising
    assert rising_flag(flat) is None
    assert rising_flag(short) is None and rising_flag([]) is None
    assert rising_flag([*rising, {"epoch": 10, "val_dice": None}]) == flag  # an epoch without validation


# (validation Dice per epoch, training loss per epoch, how it stopped, flagged?)
STALLS = [
    # the FPN SSL-SLO runs at 5 %: Dice fixed at the empty-mask value, loss still falling
    ([0.4] * 11, [1.39, 1.29, 1.21, 1.20, 1.19, 1.18, 1.17, 1.16, 1.14, 1.13, 1.12], "plateau", True),
    ([0.4] * 11, [1.39] * 11, "plateau", False),  # nothing moved at all: a plateau indeed
    ([0.4, 0.6, 0.7] + [0.7] * 8, [1.3 - 0.1 * i for i in range(11)], "plateau", False),  # it learned
    ([0.4] * 11, [1.3 - 0.1 * i for i in range(11)], "max_epochs", False),  # not stopped by patience
    ([0.4], [1.3], "plateau", False),  # too short to tell
]


@pytest.mark.parametrize(("dice", "loss", "stopped", "flagged"), STALLS)
def test_stalled_flag(dice: list[float], loss: list[float], stopped: str, flagged: bool) -> None:
    history = [{"epoch": i, "train_loss": tl, "val_dice": d} for i, (d, tl) in enumerate(zip(dice, loss))]
    flag = stalled_flag(history, stopped)
    assert (flag is not None) == flagged, flag
    if flagged:
        assert flag == "stalled (validation Dice 0.400 throughout, training loss -19 %)"


def test_collapse_flag(tmp_path: Path) -> None:
    def rows(pred: list[float], true: list[float]) -> list[dict]:
        return [{"area_pred_mm2": p, "area_true_mm2": t} for p, t in zip(pred, true)]

    assert collapse_flag(rows([0, 0, 1.0], [2.0, 1.0, 1.0])) == "collapsed (empty)"
    assert collapse_flag(rows([0, 0, 1.0], [0.0, 0.0, 1.0])) is None, "empty where the reference is empty is right"
    assert collapse_flag(rows([1.0, 2.0], [1.0, 2.0])) is None
    npz = tmp_path / "predictions.npz"
    np.savez(npz, a=np.full((4, 4), 255, np.uint8), b=np.full((4, 4), 200, np.uint8), c=np.zeros((4, 4), np.uint8))
    assert collapse_flag(rows([30.0, 30.0, 0.0], [1.0, 1.0, 0.0]), npz) == "collapsed (full)"
