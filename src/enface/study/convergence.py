"""Did a training run converge, or collapse? Checks a study applies to every segmentation run.

A run is flagged

* ``still rising`` when it used its whole budget of epochs (it was not stopped by its
  ``patience``) and its validation Dice was still climbing at the end: the mean of the last
  quarter of its epochs exceeds the mean of the quarter before by more than
  :data:`RISE_TOLERANCE` (a longer budget would have changed its result);
* ``collapsed (empty)`` on a test set when it predicts nothing on at least half of the test
  cases whose reference holds a lesion;
* ``collapsed (full)`` on a test set when it marks most of the scan (over
  :data:`FULL_FRACTION` of the pixels) on at least half of the test cases.

The study table keeps such runs visible (which seed, which flag) and gives the mean over
the unflagged seeds beside the mean over all of them, instead of averaging them in silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enface.targets import binary

__all__ = ["FULL_FRACTION", "RISE_TOLERANCE", "collapse_flag", "rising_flag"]

RISE_TOLERANCE = 0.02
"""Validation-Dice gain between the last two quarters of a run above which it is still rising."""
FULL_FRACTION = 0.8
"""Share of a scan's pixels above which a prediction counts as full."""


def rising_flag(
    history: Sequence[Mapping[str, Any]], stopped: str = "max_epochs", metric: str = "val_dice"
) -> str | None:
    """``"still rising (+0.034 in the last quarter)"`` or None (converged, or too short to tell).

    Args:
        history: the run's epochs (``{"epoch", <metric>, ...}``, as a ledger record keeps them).
        stopped: how the run ended; a run its patience stopped (``plateau``) is not rising.
        metric: the validation metric.
    """
    if stopped == "plateau":
        return None
    values = [float(v) for row in history if (v := row.get(metric)) not in (None, "") and math.isfinite(float(v))]
    k = len(values) // 4
    if k < 2:
        return None
    gain = float(np.mean(values[-k:]) - np.mean(values[-2 * k : -k]))
    return f"still rising (+{gain:.3f} in the last quarter)" if gain > RISE_TOLERANCE else None


def collapse_flag(rows: Sequence[Mapping[str, Any]], predictions: Path | None = None) -> str | None:
    """``"collapsed (empty)"``, ``"collapsed (full)"`` or None, from one evaluation of a run.

    Args:
        rows: the primary grader's rows of the evaluation's ``cases.csv``.
        predictions: its ``predictions.npz`` (probabilities as uint8, one array per case),
            used for the full check; without it only emptiness is checked.
    """
    lesion = [r for r in rows if float(r["area_true_mm2"]) > 0]
    if lesion and np.mean([float(r["area_pred_mm2"]) == 0 for r in lesion]) >= 0.5:
        return "collapsed (empty)"
    if predictions is not None and predictions.is_file():
        with np.load(predictions) as data:
            fractions = [float(np.mean(binary(data[k] / 255))) for k in data.files]  # stored as round(p * 255)
        if fractions and np.mean([f > FULL_FRACTION for f in fractions]) >= 0.5:
            return "collapsed (full)"
    return None
