"""Did a training run converge, or collapse? Checks a study applies to every segmentation run.

A run is flagged

* ``still rising`` when it used its whole budget of epochs (it was not stopped by its
  ``patience``) and its validation Dice was still climbing at the end: the mean of the last
  quarter of its epochs exceeds the mean of the quarter before by more than
  :data:`RISE_TOLERANCE` (a longer budget would have changed its result);
* ``stalled`` when its patience stopped it (``plateau``) although it never left its start:
  its validation Dice stayed within :data:`STALL_TOLERANCE` of its first value while its
  training loss fell by more than :data:`STALL_LOSS_DROP` (the network was still learning,
  but not yet anything that moves the thresholded Dice: an initialisation whose output sits
  on one side of the threshold everywhere, say). Such a run's result says more about the
  stopping rule than about its initialisation;
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

__all__ = [
    "FULL_FRACTION",
    "RISE_TOLERANCE",
    "STALL_LOSS_DROP",
    "STALL_TOLERANCE",
    "collapse_flag",
    "rising_flag",
    "stalled_flag",
]

RISE_TOLERANCE = 0.02
"""Validation-Dice gain between the last two quarters of a run above which it is still rising."""
FULL_FRACTION = 0.8
"""Share of a scan's pixels above which a prediction counts as full."""
STALL_TOLERANCE = 0.002
"""Largest move of the validation Dice from its first value in a run that counts as stalled."""
STALL_LOSS_DROP = 0.05
"""Relative fall of the training loss (first to last epoch) above which a run was still learning."""


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
    values = _finite(history, metric)
    k = len(values) // 4
    if k < 2:
        return None
    gain = float(np.mean(values[-k:]) - np.mean(values[-2 * k : -k]))
    return f"still rising (+{gain:.3f} in the last quarter)" if gain > RISE_TOLERANCE else None


def _finite(history: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(v) for row in history if (v := row.get(key)) not in (None, "") and math.isfinite(float(v))]


def stalled_flag(
    history: Sequence[Mapping[str, Any]], stopped: str = "plateau", metric: str = "val_dice"
) -> str | None:
    """``"stalled (validation Dice 0.400 throughout, training loss -20 %)"`` or None.

    Args:
        history: the run's epochs (``{"epoch", "train_loss", <metric>, ...}``).
        stopped: how the run ended; only a run its patience stopped can have stalled.
        metric: the validation metric.
    """
    if stopped != "plateau":
        return None
    values, losses = _finite(history, metric), _finite(history, "train_loss")
    if len(values) < 2 or len(losses) < 2 or losses[0] <= 0:
        return None
    moved = max(abs(v - values[0]) for v in values)
    drop = (losses[0] - losses[-1]) / losses[0]
    if moved > STALL_TOLERANCE or drop <= STALL_LOSS_DROP:
        return None
    return f"stalled (validation Dice {values[0]:.3f} throughout, training loss -{100 * drop:.0f} %)"


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
