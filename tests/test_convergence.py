"""Convergence and collapse flags of study runs (enface.study.convergence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from enface.study.convergence import collapse_flag, rising_flag


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


def test_collapse_flag(tmp_path: Path) -> None:
    def rows(pred: list[float], true: list[float]) -> list[dict]:
        return [{"area_pred_mm2": p, "area_true_mm2": t} for p, t in zip(pred, true)]

    assert collapse_flag(rows([0, 0, 1.0], [2.0, 1.0, 1.0])) == "collapsed (empty)"
    assert collapse_flag(rows([0, 0, 1.0], [0.0, 0.0, 1.0])) is None, "empty where the reference is empty is right"
    assert collapse_flag(rows([1.0, 2.0], [1.0, 2.0])) is None
    npz = tmp_path / "predictions.npz"
    np.savez(npz, a=np.full((4, 4), 255, np.uint8), b=np.full((4, 4), 200, np.uint8), c=np.zeros((4, 4), np.uint8))
    assert collapse_flag(rows([30.0, 30.0, 0.0], [1.0, 1.0, 0.0]), npz) == "collapsed (full)"
